"""A dependency-free sd_notify(3) client for the supervisor.

Under ``Type=notify`` systemd hands the service an AF_UNIX datagram socket in ``$NOTIFY_SOCKET`` (a
filesystem path, or a Linux abstract-namespace name when it starts with ``@``). Each datagram is a set
of newline-separated ``KEY=VALUE`` assignments:

- ``READY=1``: start-up (or a reload) is complete; ``STATUS=...`` is one line shown by ``systemctl status``;
- ``RELOADING=1`` with ``MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>``: a reload began (``READY=1`` ends it;
  ``Type=notify-reload`` needs the timestamp to tell this reload from an earlier one);
- ``STOPPING=1``: shutdown began;
- ``WATCHDOG=1``: keep-alive, due more often than ``$WATCHDOG_USEC`` when ``WatchdogSec=`` is set;
  ``$WATCHDOG_PID``, if present, names the process the watchdog is meant for.

Without ``$NOTIFY_SOCKET`` (not started by systemd) every method is a cheap no-op. Sending never raises:
the supervisor must not die because the service manager went away; the first failure is logged.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from loguru import logger

__all__ = ["Notifier"]


def _to_int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


class Notifier:
    """Sends state notifications to systemd; built by :meth:`from_env`."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        if address is not None and not address.startswith(("/", "@")):
            logger.warning("NOTIFY_SOCKET={!r} is not a path or an abstract name: not notifying", address)
            address = None
        self._address = address
        # Linux abstract namespace: '@name' on the command line is '\0name' on the wire.
        self._sockaddr = "\0" + address[1:] if address and address.startswith("@") else address
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self._failing = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from ``environ``."""
        usec = _to_int(environ.get("WATCHDOG_USEC"))
        pid = environ.get("WATCHDOG_PID")
        if pid is not None and _to_int(pid) != os.getpid():
            usec = None  # the watchdog belongs to another process (e.g. our parent)
        return cls(environ.get("NOTIFY_SOCKET") or None, usec)

    @property
    def enabled(self) -> bool:
        return self._sockaddr is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to call :meth:`watchdog` (half the timeout, as systemd advises), or None."""
        if self._watchdog_usec is None or not self.enabled:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *self._status_lines(status))

    def reloading(self, status: str | None = None) -> None:
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={now_usec}", *self._status_lines(status))

    def stopping(self, status: str | None = None) -> None:
        self.send("STOPPING=1", *self._status_lines(status))

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.send(*self._status_lines(text))

    def notify(self, **fields: object) -> None:
        """``notify(READY=1, STATUS="up")``: one datagram of ``KEY=VALUE`` lines."""
        self.send(*(f"{key}={value}" for key, value in fields.items()))

    def send(self, *lines: str) -> None:
        """Send ``lines`` (``KEY=VALUE`` each, no newline inside) as one datagram; never raises OSError."""
        if self._sockaddr is None or not lines:
            return
        if any("\n" in line for line in lines):
            raise ValueError(f"a notification line must not contain a newline: {lines!r}")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), self._sockaddr)
        except OSError as exc:
            if not self._failing:  # once per outage, not once per watchdog ping
                logger.warning("sd_notify to {} failed ({}); further failures not logged", self._address, exc)
            self._failing = True
        else:
            if self._failing:
                logger.info("sd_notify to {} works again", self._address)
            self._failing = False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @staticmethod
    def _status_lines(text: str | None) -> tuple[str, ...]:
        return () if text is None else ("STATUS=" + " ".join(text.split()),)
