"""The control socket: ``corral status|reload|scale|stop|request|send`` reach a running supervisor.

A Unix stream socket (mode 0600) in the state dir; each connection is an ``corral.ipc.Channel``, so the CLI
simply sends requests (``status``, ``reload``, ``scale``, ``stop``) and gets replies or typed errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.ipc import Channel


class AlreadyRunning(Exception):
    """Another supervisor answers on this control socket."""


def _is_live(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


class ControlServer:
    def __init__(self, path: Path, handlers: dict[str, Callable[[Any], Any]]) -> None:
        self.path = path
        self.handlers = handlers
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._channels: set[Channel] = set()

    async def start(self) -> None:
        """Bind the socket (0600); a stale socket file is replaced, a live one is an error."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _is_live(self.path):
                raise AlreadyRunning(f"a supervisor is already running on {self.path}")
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # created 0600: no window in which others could connect
        try:
            listener.bind(str(self.path))
        finally:
            os.umask(old_umask)
        listener.listen(16)
        listener.setblocking(False)
        self._listener = listener
        self._accepting = asyncio.create_task(self._accept(listener), name="control:accept")

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(listener)
            channel = await Channel.open(conn, name="control")
            for event, handler in self.handlers.items():
                channel.on(event, handler)
            self._channels = {c for c in self._channels if not c.closed}
            self._channels.add(channel)

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        for channel in self._channels:
            channel.close("supervisor exiting")
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


class NotRunning(Exception):
    """No supervisor answers on the control socket."""


async def call(path: Path, event: str, data: Any = None, timeout_s: float = 10.0) -> Any:
    """One request to a running supervisor. Raises ``NotRunning`` or an ``ipc`` error."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)  # a blocking connect (a full backlog) would not let Ctrl-C through
    try:
        await asyncio.get_running_loop().sock_connect(sock, str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise NotRunning(f"no supervisor is running (nothing answers on {path})") from exc
    except PermissionError as exc:
        sock.close()
        raise NotRunning(f"not allowed to use the control socket {path}: {exc}") from exc
    except BaseException:
        sock.close()
        raise
    channel = await Channel.open(sock, name="control-client")
    try:
        return await channel.request(event, data, timeout_s)
    finally:
        channel.close("done")
