"""Channel tests across a real child process (``tests/ipc_peer.py``) on a socketpair."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from corral.ipc import (
    Channel,
    ChannelClosed,
    EncodeError,
    FrameTooLarge,
    NoHandler,
    Overloaded,
    RemoteError,
    RequestTimeout,
    SendBufferFull,
)
from corral.ipc.frames import HEADER
from tests.conftest import LogCapture, Peer

Spawn = Callable[..., Peer]
Run = Callable[..., Any]

READY_TIMEOUT_S = 20.0  # generous: a loaded CI machine may take a while to start an interpreter
LONG_S = 30.0  # a timeout that must never be what ends a test
FAST_S = 5.0  # "at once": how long a failure that should be immediate may take at most


@asynccontextmanager
async def connected(
    spawn: Spawn, mode: str = "normal", *, ready: bool = True, **options: Any
) -> AsyncIterator[tuple[Channel, Peer]]:
    """A child and the parent's open channel to it (after its ready, unless ``ready=False``)."""
    peer = spawn(mode)
    channel = await peer.open(**options)
    try:
        if ready:
            info = await channel.wait_ready(READY_TIMEOUT_S)
            assert info == {"pid": peer.pid, "mode": mode}
        yield channel, peer
    finally:
        channel.close("test finished")


async def elapsed(awaitable: Any) -> tuple[float, Any]:
    """``(seconds, result or exception)`` of awaiting ``awaitable``."""
    started = time.monotonic()
    try:
        result = await awaitable
    except Exception as exc:
        result = exc
    return time.monotonic() - started, result


# -- ready handshake ---------------------------------------------------------------------------


def test_ready_handshake(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        peer = spawn_peer()
        channel = await peer.open()
        assert not channel.is_ready
        info = await channel.wait_ready(READY_TIMEOUT_S)
        assert info == {"pid": peer.pid, "mode": "normal"}
        assert channel.is_ready
        assert await channel.wait_ready(1.0) == info  # a second wait returns at once
        assert await channel.request("pid") == peer.pid
        channel.close()

    run(main())


def test_wait_ready_fails_with_channel_closed_when_the_child_dies_first(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        peer = spawn_peer("die-before-ready")
        channel = await peer.open()
        took, result = await elapsed(channel.wait_ready(LONG_S))
        assert isinstance(result, ChannelClosed), result
        assert took < LONG_S / 2
        assert not channel.is_ready
        assert channel.closed
        assert await peer.wait_exit() == 3

    run(main())


def test_wait_ready_times_out_when_the_child_never_announces(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        async with connected(spawn_peer, "never-ready", ready=False) as (channel, _):
            # the child works (it answers requests), it just never says ready
            assert await channel.request("echo", "alive", timeout_s=READY_TIMEOUT_S) == "alive"
            took, result = await elapsed(channel.wait_ready(0.3))
            assert isinstance(result, RequestTimeout), result
            assert isinstance(result, TimeoutError)
            assert took < FAST_S
            assert not channel.is_ready
            assert not channel.closed  # a late ready is still possible; the caller decides

    run(main())


def test_unready_child_that_dies_while_awaited(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        async with connected(spawn_peer, "never-ready", ready=False) as (channel, peer):
            waiter = asyncio.ensure_future(channel.wait_ready(LONG_S))
            assert await channel.request("echo", 1, timeout_s=READY_TIMEOUT_S) == 1
            peer.kill()
            took, result = await elapsed(waiter)
            assert isinstance(result, ChannelClosed), result
            assert took < FAST_S

    run(main())


# -- requests ----------------------------------------------------------------------------------

PAYLOADS = [
    None,
    True,
    0,
    -(2**63),
    2**64 - 1,
    1.5,
    "",
    "ünïcødé",
    b"\x00\xff",
    [],
    {},
    {"nested": [1, {"deep": [b"x", None, 2.0]}], 7: "int key", b"b": "bytes key"},
    b"x" * 200_000,
]


def test_request_echo_sync_and_async(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        async with connected(spawn_peer) as (channel, _):
            for event in ("echo", "echo_async"):
                for payload in PAYLOADS:
                    assert await channel.request(event, payload, timeout_s=LONG_S) == payload
            assert await channel.request("echo", timeout_s=LONG_S) is None  # data defaults to nil
            assert await channel.request("echo", (1, 2), timeout_s=LONG_S) == [
                1,
                2,
            ]  # arrays come back as lists

    run(main())


def test_child_requests_the_parent(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        async with connected(spawn_peer) as (channel, _):

            def add(data: list[int]) -> int:
                return sum(data)

            async def mul(data: list[int]) -> int:
                await asyncio.sleep(0.01)
                return data[0] * data[1]

            def broken(_: Any) -> None:
                raise KeyError("missing")

            channel.on("add", add)
            channel.on("mul", mul)
            channel.on("broken", broken)
            assert await channel.request("call_parent", {"event": "add", "data": [1, 2, 3]}) == 6
            assert await channel.request("call_parent", {"event": "mul", "data": [6, 7]}) == 42

            # the parent's handler raised: the child's request failed with RemoteError, which made
            # the child's own handler fail, which reaches us as a RemoteError naming that type
            with pytest.raises(RemoteError) as info:
                await channel.request("call_parent", {"event": "broken"})
            assert info.value.remote_type == "corral.ipc.errors.RemoteError"
            assert "KeyError" in info.value.remote_message
            assert "missing" in info.value.remote_message

            with pytest.raises(RemoteError) as info:
                await channel.request("call_parent", {"event": "nobody-home"})
            assert info.value.remote_type == "corral.ipc.errors.NoHandler"

    run(main())


def test_nested_requests_both_ways(spawn_peer: Spawn, run: Run) -> None:
    """parent -> child -> parent -> child: a handler may await a request to the other side."""

    async def main() -> None:
        async with connected(spawn_peer) as (channel, _):

            async def ask_child(data: Any) -> Any:
                return {"child said": await channel.request("echo_async", data, timeout_s=LONG_S)}

            channel.on("ask_child", ask_child)
            reply = await channel.request(
                "call_parent", {"event": "ask_child", "data": "hi"}, timeout_s=LONG_S
            )
            assert reply == {"child said": "hi"}

    run(main())


def test_many_concurrent_requests_are_correlated(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        async with connected(spawn_peer) as (channel, _):
            n = 300
            # replies come back out of order: later requests sleep less
            coros = [
                channel.request("sleep", {"seconds": (n - i) % 17 / 100, "value": {"i": i, "pad": "x" * i}})
                for i in range(n)
            ]
            coros += [channel.request("echo", i) for i in range(n, 2 * n)]
            results = await asyncio.gather(*coros)
            assert results[:n] == [{"i": i, "pad": "x" * i} for i in range(n)]
            assert results[n:] == list(range(n, 2 * n))

    run(main())


def test_many_concurrent_requests_from_the_child(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        async with connected(spawn_peer) as (channel, _):
            seen: list[int] = []

            async def square(i: int) -> int:
                seen.append(i)
                await asyncio.sleep((i * 7) % 13 / 1000)
                return i * i

            channel.on("square", square)
            n = 250
            replies = await channel.request("call_parent_many", {"event": "square", "n": n}, timeout_s=LONG_S)
            assert replies == [i * i for i in range(n)]
            assert sorted(seen) == list(range(n))

    run(main())


def test_request_timeout_and_late_reply_ignored(
    spawn_peer: Spawn, run: Run, loguru_records: LogCapture
) -> None:
    async def main() -> None:
        async with connected(spawn_peer) as (channel, _):
            took, result = await elapsed(
                channel.request("sleep", {"seconds": 1.0, "value": "late"}, timeout_s=0.2)
            )
            assert isinstance(result, RequestTimeout), result
            assert isinstance(result, TimeoutError)
            assert 0.15 < took < FAST_S
            # this reply is written after the late one (same stream, later): once it is here, the
            # late reply has been received and dropped without resolving anything
            assert (
                await channel.request("sleep", {"seconds": 1.5, "value": "second"}, timeout_s=LONG_S)
                == "second"
            )
            assert await channel.request("echo", "third") == "third"
            assert not channel.closed

    run(main())
    assert loguru_records.errors() == []


def test_remote_error_carries_type_and_message(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        async with connected(spawn_peer) as (channel, _):
            with pytest.raises(RemoteError) as info:
                await channel.request("fail", 42)
            assert not isinstance(info.value, NoHandler)
            assert info.value.remote_type == "ValueError"
            assert info.value.remote_message == "bad value 42"
            assert "ValueError" in str(info.value)

            with pytest.raises(RemoteError) as info:
                await channel.request("fail_async", "custom")
            assert info.value.remote_type.endswith("PeerFailure")
            assert info.value.remote_message == "custom"

            # a reply the child cannot encode still gets an answer
            with pytest.raises(RemoteError) as info:
                await channel.request("unencodable", timeout_s=LONG_S)
            assert info.value.remote_type == "corral.ipc.errors.EncodeError"

            # the channel is fine afterwards
            assert await channel.request("echo", "still here") == "still here"

    run(main())


def test_reply_larger_than_the_childs_max_frame(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        async with connected(spawn_peer) as (channel, _):
            assert await channel.request("big", 1000) == b"x" * 1000
            with pytest.raises(RemoteError) as info:
                await channel.request("big", 17 * 1024 * 1024, timeout_s=LONG_S)
            assert info.value.remote_type == "corral.ipc.errors.FrameTooLarge"
            assert await channel.request("echo", 1) == 1

    run(main())


def test_no_handler_fails_fast(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        async with connected(spawn_peer) as (channel, _):
            took, result = await elapsed(channel.request("no-such-event", 1, timeout_s=LONG_S))
            assert isinstance(result, NoHandler), result
            assert isinstance(result, RemoteError)
            assert result.remote_type == "NoHandler"
            assert "no-such-event" in result.remote_message
            assert took < FAST_S

    run(main())


def test_local_encoding_errors_send_nothing(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        async with connected(spawn_peer, max_frame_bytes=64 * 1024) as (channel, _):
            with pytest.raises(EncodeError):
                await channel.request("echo", {1, 2})
            with pytest.raises(EncodeError):
                channel.send("record", object())
            with pytest.raises(EncodeError):
                await channel.request("echo", 2**64)
            with pytest.raises(FrameTooLarge):
                await channel.request("echo", b"x" * 65 * 1024)
            with pytest.raises(FrameTooLarge):
                channel.send("record", b"x" * 65 * 1024)
            assert await channel.request("recorded") == []  # none of those sends went out
            assert await channel.request("echo", "ok") == "ok"

    run(main())


# -- send --------------------------------------------------------------------------------------


def test_send_is_delivered_in_order(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        async with connected(spawn_peer) as (channel, _):
            n = 2000
            for i in range(n):
                channel.send("record", i)
                if i % 500 == 0:
                    await asyncio.sleep(0)  # spread over several loop iterations too
            channel.send("no-handler-for-this-send", "dropped quietly")
            # the stream is ordered: the request is handled after every send before it
            assert await channel.request("recorded", timeout_s=LONG_S) == list(range(n))

    run(main())


def test_child_sends_reach_every_parent_handler_in_order(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        async with connected(spawn_peer) as (channel, _):
            n = 500
            first: list[int] = []
            second: list[int] = []
            done = asyncio.Event()

            def on_tick(i: int) -> None:
                first.append(i)

            async def on_tick_async(i: int) -> None:
                second.append(i)
                if len(second) == n:
                    done.set()

            def raising(i: int) -> None:
                if i == 0:
                    raise RuntimeError("a failing send handler does not stop the others")

            channel.on("tick", raising)
            channel.on("tick", on_tick)
            channel.on("tick", on_tick_async)
            await channel.request("send_parent", {"event": "tick", "n": n})
            await asyncio.wait_for(done.wait(), LONG_S)
            assert first == list(range(n))
            assert second == list(range(n))

    run(main())


def test_handlers_on_and_off(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        async with connected(spawn_peer) as (channel, _):
            # child side
            with pytest.raises(NoHandler):
                await channel.request("dyn", 1)
            await channel.request("toggle", {"event": "dyn", "on": True})
            assert await channel.request("dyn", 1) == {"via": "dyn", "value": 1}
            await channel.request("toggle", {"event": "dyn", "on": False})
            with pytest.raises(NoHandler):
                await channel.request("dyn", 1)

            # parent side: the first handler registered answers; off() falls back to the next
            def one(_: Any) -> str:
                return "one"

            def two(_: Any) -> str:
                return "two"

            ask = {"event": "who"}
            with pytest.raises(RemoteError) as info:
                await channel.request("call_parent", ask)
            assert info.value.remote_type == "corral.ipc.errors.NoHandler"
            channel.on("who", one)
            channel.on("who", two)
            assert await channel.request("call_parent", ask) == "one"
            channel.off("who", one)
            assert await channel.request("call_parent", ask) == "two"
            channel.off("who", one)  # absent: nothing happens
            channel.off("who", two)
            with pytest.raises(RemoteError) as info:
                await channel.request("call_parent", ask)
            assert info.value.remote_type == "corral.ipc.errors.NoHandler"

    run(main())


# -- the child dies, the channel closes --------------------------------------------------------


def test_sigkill_mid_request_fails_every_pending_request_at_once(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        async with connected(spawn_peer) as (channel, peer):
            pending = [
                asyncio.ensure_future(channel.request("sleep", {"seconds": 120}, timeout_s=LONG_S))
                for _ in range(50)
            ]
            pings = [asyncio.ensure_future(channel.ping(timeout_s=LONG_S)) for _ in range(3)]
            # ordered stream: once this answer is back, the child is working on all 50 requests
            assert await channel.request("echo", "sync") == "sync"
            os.kill(peer.pid, signal.SIGKILL)
            took, results = await elapsed(asyncio.gather(*pending, return_exceptions=True))
            assert took < FAST_S  # far less than the 30 s request timeout
            assert all(isinstance(r, ChannelClosed) for r in results), results
            for ping in pings:
                assert ping.done()  # the pongs came back before the kill
            assert (await asyncio.wait_for(channel.wait_closed(), FAST_S)) == channel.close_reason
            assert channel.closed
            with pytest.raises(ChannelClosed):
                await channel.request("echo", 1)
            with pytest.raises(ChannelClosed):
                channel.send("record", 1)
            assert await peer.wait_exit() == -signal.SIGKILL

    run(main())


def test_clean_child_exit_logs_no_error(
    spawn_peer: Spawn, run: Run, loguru_records: LogCapture, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with connected(spawn_peer) as (channel, peer):
            waiter = asyncio.ensure_future(channel.request("sleep", {"seconds": 60}, timeout_s=LONG_S))
            assert await channel.request("echo", 1) == 1
            channel.send("exit", "done for today")
            reason = await asyncio.wait_for(channel.wait_closed(), FAST_S)
            assert reason == "peer closed the channel"
            assert isinstance((await elapsed(waiter))[1], ChannelClosed)
            assert await peer.wait_exit() == 0

    caplog.set_level(logging.DEBUG)
    run(main())
    assert loguru_records.errors() == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []


# -- protocol errors from the peer -------------------------------------------------------------

# (event the child handles, bytes it writes raw to the socket, what the parent's close reason says)
GARBAGE: dict[str, tuple[str, bytes, str]] = {
    "not msgpack": ("write_raw", HEADER.pack(3) + b"\xc1\xc1\xc1", "undecodable frame body"),
    "not an array": ("write_raw", HEADER.pack(1) + b"\x05", "not a non-empty array"),
    "unknown kind": ("write_raw", HEADER.pack(3) + b"\x92\x63\xc0", "unknown message kind 99"),
    "negative id": ("write_raw", HEADER.pack(4) + b"\x93\x03\xff\xc0", "Reply: bad field -1"),
    "invalid utf-8": ("write_raw", HEADER.pack(5) + b"\x93\x01\xa1\xff\xc0", "undecodable frame body"),
    "oversized header": ("write_raw", HEADER.pack(0xFFFFFFF0) + b"xx", "exceeds the maximum"),
    "truncated frame then exit": ("write_raw_and_exit", HEADER.pack(100) + b"\x93\x01", "inside a frame"),
}


@pytest.mark.parametrize("case", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_from_the_peer_closes_the_channel_not_the_parent(
    case: tuple[str, bytes, str], spawn_peer: Spawn, run: Run, loguru_records: LogCapture
) -> None:
    event, raw, expected = case

    async def main() -> None:
        async with connected(spawn_peer) as (channel, peer):
            waiter = asyncio.ensure_future(channel.request("sleep", {"seconds": 60}, timeout_s=LONG_S))
            assert await channel.request("echo", 1) == 1
            channel.send(event, raw)
            reason = await asyncio.wait_for(channel.wait_closed(), FAST_S)
            assert reason.startswith("protocol error"), reason
            assert expected in reason, reason
            _, result = await elapsed(waiter)
            assert isinstance(result, ChannelClosed), result
            assert result.reason == reason
            with pytest.raises(ChannelClosed):
                await channel.request("echo", 1)
            # the parent dropped the connection: the child sees it and exits by itself
            assert await peer.wait_exit() == 0

        # this process is fine, and a fresh child on a fresh channel works
        async with connected(spawn_peer) as (channel, _):
            assert await channel.request("echo", "fresh") == "fresh"

    run(main())
    errors = loguru_records.errors()
    assert len(errors) == 1, errors
    assert "protocol error" in errors[0][1]


def test_frame_over_the_parents_limit_is_a_protocol_error(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        async with connected(spawn_peer, max_frame_bytes=4096) as (channel, peer):
            assert await channel.request("big", 1000) == b"x" * 1000
            took, result = await elapsed(channel.request("big", 8192, timeout_s=LONG_S))
            assert isinstance(result, ChannelClosed), result
            assert "exceeds the maximum of 4096 bytes" in result.reason
            assert took < FAST_S
            assert await peer.wait_exit() == 0

    run(main())


# -- heartbeat ---------------------------------------------------------------------------------


def test_ping_is_answered_quickly(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        async with connected(spawn_peer) as (channel, _):
            for _ in range(5):
                rtt = await channel.ping(timeout_s=LONG_S)
                assert 0 <= rtt < FAST_S
            # a ping is answered by the loop itself, even while handlers are busy
            busy = asyncio.ensure_future(channel.request("sleep", {"seconds": 60}, timeout_s=LONG_S))
            assert await channel.ping(timeout_s=LONG_S) < FAST_S
            assert not busy.done()
            busy.cancel()
            await asyncio.gather(busy, return_exceptions=True)

    run(main())


def test_ping_to_a_blocked_child_times_out(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        async with connected(spawn_peer) as (channel, _):
            channel.send("block", 2.0)  # time.sleep in the child's event loop
            took, result = await elapsed(channel.ping(timeout_s=0.3))
            assert isinstance(result, RequestTimeout), result
            assert took < FAST_S
            # when the loop is free again, pings are answered (the late pong was dropped)
            assert await channel.ping(timeout_s=LONG_S) < LONG_S
            assert not channel.closed

    run(main())


def test_ping_answered_while_the_child_is_busy_at_its_handler_limit(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        peer = spawn_peer(max_inflight_handlers=2)
        channel = await peer.open()
        arrived = asyncio.Semaphore(0)
        release = asyncio.Event()
        busy: list[asyncio.Future[Any]] = []

        async def hold(_: Any) -> None:
            arrived.release()
            await release.wait()

        channel.on("hold", hold)
        try:
            await channel.wait_ready(READY_TIMEOUT_S)
            busy += [
                asyncio.ensure_future(channel.request("call_parent", {"event": "hold"})) for _ in range(2)
            ]
            for _ in busy:  # both handler slots of the child are taken
                await asyncio.wait_for(arrived.acquire(), LONG_S)
            # a healthy but busy child: its loop is free, only its handler slots are taken
            await channel.ping(timeout_s=1.0)
            # one request more is refused at once, not queued and not timed out
            started = time.monotonic()
            with pytest.raises(Overloaded):
                await channel.request("call_parent", {"event": "hold"}, timeout_s=LONG_S)
            assert time.monotonic() - started < 2.0
            release.set()
            assert await asyncio.wait_for(asyncio.gather(*busy), LONG_S) == [None, None]
        finally:
            release.set()
            channel.close()
            await asyncio.gather(*busy, return_exceptions=True)

    run(main())


# -- backpressure ------------------------------------------------------------------------------

HIGH_WATER = 64 * 1024
MAX_BUFFER = 512 * 1024
BLOB = b"b" * 32 * 1024
# the kernel buffers some of the socket's traffic too; past this many sends something is wrong
SEND_LIMIT = (MAX_BUFFER + 16 * 1024 * 1024) // len(BLOB)


def test_send_buffer_full_when_the_child_stops_reading(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        options = {"high_water_bytes": HIGH_WATER, "max_buffer_bytes": MAX_BUFFER}
        async with connected(spawn_peer, **options) as (channel, _):
            await channel.request("stop_reading")
            most = 0
            with pytest.raises(SendBufferFull):
                for _ in range(SEND_LIMIT):
                    channel.send("record", BLOB)
                    most = max(most, channel.buffered_bytes)
                    await asyncio.sleep(0)  # let each batch reach the transport
            frame = len(BLOB) + 64
            assert most <= MAX_BUFFER + frame
            assert channel.buffered_bytes <= MAX_BUFFER + frame
            with pytest.raises(SendBufferFull):
                channel.send("record", BLOB)
            # a request cannot be queued either; it fails with its timeout instead of hanging
            took, result = await elapsed(channel.request("echo", 1, timeout_s=0.5))
            assert isinstance(result, RequestTimeout), result
            assert took < FAST_S
            # close() fails pending requests at once
            waiter = asyncio.ensure_future(channel.request("echo", 2, timeout_s=LONG_S))
            channel.close("giving up")
            took, result = await elapsed(waiter)
            assert isinstance(result, ChannelClosed), result
            assert result.reason == "giving up"
            assert took < FAST_S

    run(main(), timeout_s=40)


def test_send_buffer_full_without_yielding(spawn_peer: Spawn, run: Run) -> None:
    """Sends in one loop iteration (no await) are bounded by max_buffer_bytes too."""

    async def main() -> None:
        options = {"high_water_bytes": HIGH_WATER, "max_buffer_bytes": MAX_BUFFER}
        async with connected(spawn_peer, **options) as (channel, _):
            await channel.request("stop_reading")
            most = 0
            with pytest.raises(SendBufferFull):
                for _ in range(SEND_LIMIT):
                    channel.send("record", BLOB)
                    most = max(most, channel.buffered_bytes)
            assert most <= MAX_BUFFER + len(BLOB) + 64

    run(main(), timeout_s=40)


def test_drain_waits_for_a_child_that_stops_reading(spawn_peer: Spawn, run: Run) -> None:
    """``send`` + ``await drain()`` keeps the buffer near the high-water mark, even with no other yield."""

    async def main() -> None:
        options = {"high_water_bytes": HIGH_WATER, "max_buffer_bytes": MAX_BUFFER}
        async with connected(spawn_peer, **options) as (channel, _):
            await channel.request("stop_reading")
            most = 0

            async def writer() -> None:
                nonlocal most
                for _ in range(SEND_LIMIT):
                    channel.send("record", BLOB)
                    most = max(most, channel.buffered_bytes)
                    await channel.drain()  # awaited directly: no other yield to the loop

            # the writer must end up blocked in drain() (the child never reads again)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(writer(), 2.0)
            assert most <= HIGH_WATER + len(BLOB) + 64

    run(main(), timeout_s=40)


def test_both_sides_flooding_each_other(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        options = {"high_water_bytes": HIGH_WATER, "max_buffer_bytes": MAX_BUFFER}
        async with connected(spawn_peer, **options) as (channel, _):
            received: list[int] = []
            channel.on("blob", lambda blob: received.append(len(blob)))
            n = 100  # 100 x 32 KiB each way: far more than the kernel buffers
            ask = {"event": "blob", "n": n, "size": len(BLOB)}
            child = asyncio.ensure_future(channel.request("flood_parent", ask, timeout_s=LONG_S))

            async def flood() -> None:
                for _ in range(n):
                    channel.send("no-handler", BLOB)
                    await channel.drain()

            await asyncio.wait_for(asyncio.gather(flood(), child), 3)
            assert len(received) == n

    run(main(), timeout_s=40)


def test_a_peer_that_lets_replies_pile_up_is_cut_off(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        options = {"high_water_bytes": HIGH_WATER, "max_buffer_bytes": MAX_BUFFER}
        async with connected(spawn_peer, **options) as (channel, _):
            most = 0

            def blob_of(size: int) -> bytes:
                nonlocal most
                most = max(most, channel.buffered_bytes)
                return b"r" * size

            channel.on("blob_of", blob_of)
            channel.send("stop_reading_and_ask", {"event": "blob_of", "n": 2000, "size": len(BLOB)})
            reason = await asyncio.wait_for(channel.wait_closed(), LONG_S)
            assert "peer not reading" in reason
            assert most <= MAX_BUFFER + len(BLOB) + 64  # memory stayed bounded up to the cut-off

    run(main(), timeout_s=40)


def test_backpressure_recovers_when_the_child_reads_again(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        options = {"high_water_bytes": HIGH_WATER, "max_buffer_bytes": MAX_BUFFER}
        async with connected(spawn_peer, **options) as (channel, peer):
            await channel.request("stop_reading")
            sent = 0
            with pytest.raises(SendBufferFull):
                for _ in range(SEND_LIMIT):
                    channel.send("record", sent)
                    channel.send("pad", BLOB)  # no handler: dropped by the child
                    sent += 1
                    await asyncio.sleep(0)
            os.kill(peer.pid, signal.SIGUSR1)  # the child reads again
            await asyncio.wait_for(channel.drain(), LONG_S)  # below the high-water mark
            assert channel.buffered_bytes <= HIGH_WATER
            channel.send("record", sent)
            recorded = await channel.request("recorded", timeout_s=LONG_S)
            # every send that did not raise arrived, in order; the send that raised was not queued
            # (if it was the "pad" after "record" <sent>, that record went out and is there twice)
            assert recorded in (list(range(sent + 1)), [*range(sent + 1), sent])

    run(main(), timeout_s=40)


# -- closing -----------------------------------------------------------------------------------


def test_close_fails_pending_requests_and_later_calls(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        async with connected(spawn_peer) as (channel, peer):
            pending = [
                asyncio.ensure_future(channel.request("sleep", {"seconds": 60}, timeout_s=LONG_S))
                for _ in range(20)
            ]
            assert await channel.request("echo", "sync") == "sync"
            channel.close("shutting down")
            took, results = await elapsed(asyncio.gather(*pending, return_exceptions=True))
            assert took < FAST_S
            assert all(isinstance(r, ChannelClosed) and r.reason == "shutting down" for r in results), results
            assert channel.closed
            assert channel.close_reason == "shutting down"
            assert await asyncio.wait_for(channel.wait_closed(), FAST_S) == "shutting down"
            with pytest.raises(ChannelClosed):
                channel.send("record", 1)
            with pytest.raises(ChannelClosed):
                await channel.request("echo", 1)
            with pytest.raises(ChannelClosed):
                await channel.ping()
            with pytest.raises(ChannelClosed):
                channel.announce_ready()
            with pytest.raises(ChannelClosed):
                await channel.drain()
            channel.close("twice")  # idempotent: the first reason stays
            assert channel.close_reason == "shutting down"
            # the child sees EOF and exits on its own
            assert await peer.wait_exit() == 0

    run(main())


def test_close_flushes_what_was_sent(spawn_peer: Spawn, run: Run) -> None:
    async def main() -> None:
        peer = spawn_peer()
        channel = await peer.open()
        await channel.wait_ready(READY_TIMEOUT_S)
        for i in range(100):
            channel.send("record", i)
        channel.send("exit", "bye")
        channel.close()
        assert await peer.wait_exit() == 0

        # and nothing was lost on the way: a child that records then echoes before closing
        peer = spawn_peer()
        channel = await peer.open()
        await channel.wait_ready(READY_TIMEOUT_S)
        for i in range(100):
            channel.send("record", i)
        assert await channel.request("recorded") == list(range(100))
        channel.close()
        assert await peer.wait_exit() == 0

    run(main())


def test_handlers_given_to_open_see_what_arrived_before_it(run: Run) -> None:
    """A child's stop may be in the socket before its channel is open: handlers handed to ``open``
    are in place for the first read (one registered after ``open`` may have missed it)."""
    from corral.ipc import socketpair

    async def body() -> None:
        ours, theirs = socketpair()
        sender = await Channel.open(ours)
        sender.send("stop", {"mode": "graceful"})
        await sender.drain()
        got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        receiver = await Channel.open(theirs, {"stop": got.set_result})
        try:
            assert await asyncio.wait_for(got, FAST_S) == {"mode": "graceful"}
        finally:
            sender.close("test finished")
            receiver.close("test finished")

    run(body())
