"""The child side of the channel integration tests.

Run as ``python -m tests.integration.ipc.peer FD [MODE [OPTIONS_JSON]]`` with ``FD`` one end of
``ipc.socketpair()`` (passed with ``pass_fds``). It opens a ``Channel`` (``OPTIONS_JSON`` holds
keyword options for ``Channel.open``), registers the handlers below, announces ready and exits when
the channel closes (0), or when the parent goes away.

Modes:
    normal            announce ready with ``{"pid": ..., "mode": ...}``
    never-ready       everything but the announcement
    die-before-ready  exit with status 3 right after opening the channel
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from typing import Any

from corral.ipc import Channel


class PeerFailure(Exception):
    """A custom exception type, to check the remote type name."""


def install(channel: Channel, fd: int) -> None:
    loop = asyncio.get_running_loop()
    recorded: list[Any] = []
    toggled: dict[str, Any] = {}

    # -- plain request handlers ---------------------------------------------------------------

    def echo(data: Any) -> Any:
        return data

    async def echo_async(data: Any) -> Any:
        await asyncio.sleep(0)
        return data

    def fail(data: Any) -> Any:
        raise ValueError(f"bad value {data!r}")

    async def fail_async(data: Any) -> Any:
        await asyncio.sleep(0)
        raise PeerFailure(str(data))

    async def sleep(data: dict[str, Any]) -> Any:
        """Simulated work: reply ``value`` after ``seconds``."""
        await asyncio.sleep(data["seconds"])
        return data.get("value")

    def unencodable(_: Any) -> Any:
        return {1, 2, 3}

    def big(size: int) -> bytes:
        return b"x" * size

    def pid(_: Any) -> int:
        return os.getpid()

    # -- requesting the parent back -----------------------------------------------------------

    async def call_parent(data: dict[str, Any]) -> Any:
        return await channel.request(data["event"], data.get("data"), timeout_s=data.get("timeout_s", 10.0))

    async def call_parent_many(data: dict[str, Any]) -> list[Any]:
        """``n`` concurrent requests to the parent: returns the replies in request order."""
        coros = [channel.request(data["event"], i, timeout_s=20.0) for i in range(data["n"])]
        return list(await asyncio.gather(*coros))

    def send_parent(data: dict[str, Any]) -> None:
        for i in range(data["n"]):
            channel.send(data["event"], i)

    async def flood_parent(data: dict[str, Any]) -> int:
        """Send ``n`` blobs of ``size`` bytes to the parent, with backpressure (drain)."""
        blob = b"f" * data["size"]
        for _ in range(data["n"]):
            channel.send(data["event"], blob)
            await channel.drain()
        return int(data["n"])

    # -- sends, ordering, handlers on/off -----------------------------------------------------

    def record(data: Any) -> None:
        recorded.append(data)

    def get_recorded(_: Any) -> list[Any]:
        return list(recorded)

    def toggle(data: dict[str, Any]) -> None:
        """Register (``on`` true) or remove an echo handler for ``event``."""
        event = data["event"]
        if data["on"]:
            toggled[event] = lambda value: {"via": event, "value": value}
            channel.on(event, toggled[event])
        else:
            channel.off(event, toggled.pop(event))

    # -- misbehaviour -------------------------------------------------------------------------

    def write_raw(data: bytes) -> None:
        """Protocol errors: write ``data`` straight to the socket, bypassing the codec."""
        os.write(fd, data)

    def write_raw_and_exit(data: bytes) -> None:
        os.write(fd, data)
        os._exit(0)

    def block(seconds: float) -> None:
        """Block the event loop (a stuck child): no ping is answered meanwhile."""
        time.sleep(seconds)

    def stop_reading(_: Any) -> None:
        """Stop reading from the socket, until SIGUSR1 (the parent cannot ask: we do not read)."""
        transport = channel._transport
        assert transport is not None
        transport.pause_reading()
        loop.add_signal_handler(signal.SIGUSR1, transport.resume_reading)

    def stop_reading_and_ask(data: dict[str, Any]) -> None:
        """Stop reading, then ask the parent ``n`` requests whose replies pile up on its side."""
        stop_reading(None)
        for _ in range(data["n"]):
            asking = asyncio.ensure_future(channel.request(data["event"], data["size"], timeout_s=60.0))
            asking.add_done_callback(lambda f: f.exception())

    def exit_cleanly(reason: Any) -> None:
        channel.close(str(reason or "child exiting"))

    requests = {
        "echo": echo,
        "echo_async": echo_async,
        "fail": fail,
        "fail_async": fail_async,
        "sleep": sleep,
        "unencodable": unencodable,
        "big": big,
        "pid": pid,
        "call_parent": call_parent,
        "call_parent_many": call_parent_many,
        "send_parent": send_parent,
        "flood_parent": flood_parent,
        "recorded": get_recorded,
        "toggle": toggle,
        "stop_reading": stop_reading,
    }
    sends = {
        "record": record,
        "write_raw": write_raw,
        "write_raw_and_exit": write_raw_and_exit,
        "block": block,
        "exit": exit_cleanly,
        "stop_reading_and_ask": stop_reading_and_ask,
    }
    for event, handler in {**requests, **sends}.items():
        channel.on(event, handler)


async def main(fd: int, mode: str, options: dict[str, Any]) -> int:
    sock = socket.socket(fileno=fd)
    channel = await Channel.open(sock, name=f"child-{os.getpid()}", **options)
    if mode == "die-before-ready":
        return 3
    install(channel, fd)
    if mode == "normal":
        channel.announce_ready({"pid": os.getpid(), "mode": mode})
    elif mode != "never-ready":
        raise SystemExit(f"unknown mode {mode!r}")
    await channel.wait_closed()
    return 0


if __name__ == "__main__":
    fd_arg = int(sys.argv[1])
    mode_arg = sys.argv[2] if len(sys.argv) > 2 else "normal"
    options_arg = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    sys.exit(asyncio.run(main(fd_arg, mode_arg, options_arg)))
