"""The supervisor speaks sd_notify to a real datagram socket standing in for systemd's."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Corral, wait_until


class FakeSystemd:
    """A NOTIFY_SOCKET: every datagram the supervisor sends, with when it arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def drain(self) -> list[tuple[float, dict[str, str]]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def first(self, key: str, after: float = 0.0) -> tuple[float, dict[str, str]] | None:
        return next(((t, m) for t, m in self.drain() if key in m and t >= after), None)


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.sock.close()


@pytest.mark.e2e
def test_ready_reloading_watchdog_and_stopping(corral: Callable[..., Corral], systemd: FakeSystemd) -> None:
    sup = corral(worker="tests.e2e.apps:GoodWorker", workers=2)
    sup.start(env={"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "400000"})  # ping every 0.2 s
    ready_at, ready = wait_until(lambda: systemd.first("READY"), timeout_s=20, what="READY=1")
    assert ready["READY"] == "1" and "2/2 ready" in ready.get("STATUS", "") + _status_after(systemd, ready_at)
    # READY=1 only once every slot is ready: both children were ready by then
    status = sup.status()
    assert all(slot["state"] == "ready" for slot in status["slots"])
    wait_until(
        lambda: sum("WATCHDOG" in m for _, m in systemd.drain()) >= 3, timeout_s=5, what="watchdog pings"
    )
    hup_at = time.monotonic()
    sup.send(signal.SIGHUP)
    _, reloading = wait_until(
        lambda: systemd.first("RELOADING", after=hup_at), timeout_s=10, what="RELOADING=1"
    )
    now_us = time.monotonic_ns() // 1000
    assert reloading["RELOADING"] == "1" and abs(int(reloading["MONOTONIC_USEC"]) - now_us) < 10_000_000
    wait_until(lambda: systemd.first("READY", after=hup_at), timeout_s=20, what="READY=1 after the reload")
    term_at = time.monotonic()
    sup.send(signal.SIGTERM)
    wait_until(lambda: systemd.first("STOPPING", after=term_at), timeout_s=10, what="STOPPING=1")
    assert sup.wait_exit(30) == 0


def _status_after(systemd: FakeSystemd, at: float) -> str:
    """The STATUS= sent with or right after READY=1 (the notifier may send it separately)."""
    return " ".join(m.get("STATUS", "") for t, m in systemd.drain() if t >= at)
