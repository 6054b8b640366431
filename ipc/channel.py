"""An asyncio message channel over one end of a Unix stream socket (normally a socketpair).

The same class serves both sides. ``send`` is fire-and-forget; ``request`` awaits the reply of the
peer's handler, correlated by id, with many requests in flight at once. Handlers (sync or async) are
registered per event name; their return value is the reply, their exception reaches the requester
as ``RemoteError``. The child announces ``ready``; the parent awaits it. ``ping`` is answered by the
peer's event loop itself, so an unanswered ping means that loop is blocked or gone.

Writes made in one loop iteration are coalesced into one socket write. Backpressure: when the
transport's buffer passes the high-water mark, ``request`` and ``drain`` wait and ``send`` raises
``SendBufferFull`` once the buffer reaches ``max_buffer_bytes``; reading goes on (two peers flooding
each other must both keep draining), but a peer that lets our replies pile up past
``max_buffer_bytes`` is cut off, and at ``max_inflight_handlers`` async send handlers reading pauses
(requests get ``Overloaded``). Close (EOF, protocol error or
``close()``) fails every pending request, ping and ready-wait at once with ``ChannelClosed``.

This module holds the channel and its transport protocol; the channel's parts live beside it:
``writer`` (write batching, backpressure), ``deadlines`` (request timeouts) and ``handlers``
(registered handlers, answering the peer's sends and requests).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Callable, Mapping
from typing import Any

from loguru import logger

from corral.ipc.deadlines import Deadlines
from corral.ipc.errors import (
    NO_HANDLER,
    OVERLOADED,
    ChannelClosed,
    IPCError,
    NoHandler,
    Overloaded,
    ProtocolError,
    RemoteError,
    RequestTimeout,
    SendBufferFull,
)
from corral.ipc.frames import (
    DEFAULT_MAX_FRAME_BYTES,
    Error,
    FrameDecoder,
    FrameEncoder,
    Message,
    Ping,
    Pong,
    Ready,
    Reply,
    Request,
    Send,
)
from corral.ipc.handlers import Handler, Handlers
from corral.ipc.writer import Writer

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_HIGH_WATER_BYTES = 1024 * 1024
DEFAULT_MAX_BUFFER_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_INFLIGHT_HANDLERS = 1024
REMOTE_ERRORS: dict[str, type[RemoteError]] = {NO_HANDLER: NoHandler, OVERLOADED: Overloaded}
RECV_BUFFER_BYTES = 64 * 1024  # allocated once per channel, reused by every read


class _Protocol(asyncio.BufferedProtocol):
    """Forwards transport callbacks to the channel (kept apart so Channel's API stays small).

    Buffered: the transport reads into one reusable buffer (the decoder copies what it keeps)
    instead of allocating a fresh 256 KiB ``bytes`` per read, which glibc may serve with an
    mmap/munmap pair and page faults on every read: that doubled the round trip in some runs.
    """

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.writer = channel._writer
        self._view = memoryview(bytearray(RECV_BUFFER_BYTES))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.channel._on_data(self._view[:nbytes])

    def eof_received(self) -> bool:
        self.channel._on_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.channel._shutdown(f"connection lost: {exc}" if exc else "peer closed the channel")

    def pause_writing(self) -> None:
        self.writer.set_paused(True)

    def resume_writing(self) -> None:
        self.writer.set_paused(False)


class Channel:
    """One end of a message channel. Create with ``await Channel.open(sock)``."""

    def __init__(
        self,
        *,
        name: str = "",
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        high_water_bytes: int = DEFAULT_HIGH_WATER_BYTES,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        max_inflight_handlers: int = DEFAULT_MAX_INFLIGHT_HANDLERS,
    ) -> None:
        self.name = name
        self.log = logger.bind(channel=name)
        self.high_water_bytes = high_water_bytes
        self._encoder = FrameEncoder(max_frame_bytes)
        self._decoder = FrameDecoder(max_frame_bytes)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}  # shared with _deadlines
        self._deadlines = Deadlines(self._loop, self._pending)
        self._ids = itertools.count(1)
        self._ready: asyncio.Future[Any] = self._loop.create_future()
        self._closed: asyncio.Future[str] = self._loop.create_future()
        self._writer = Writer(self._loop, self._closed, self._shutdown, self.log, max_buffer_bytes)
        self._handlers = Handlers(
            loop=self._loop,
            encoder=self._encoder,
            writer=self._writer,
            closed=self._closed,
            drain=self.drain,
            log=self.log,
            max_inflight=max_inflight_handlers,
        )
        self._dispatch: dict[type, Callable[[Any], None]] = {
            Reply: self._on_reply,
            Send: self._handlers.on_send,
            Request: self._handlers.on_request,
            Error: self._on_error,
            Ping: self._on_ping,
            Pong: self._on_pong,
            Ready: self._on_ready,
        }

    @classmethod
    async def open(
        cls, sock: socket.socket, handlers: Mapping[str, Handler] | None = None, **options: Any
    ) -> Channel:
        """Wrap a connected stream socket (one end of ``ipc.socketpair()``) in a channel. ``handlers``
        are registered before the first read: a message the peer sent already finds them (one
        registered after ``open`` may miss what arrived while it connected)."""
        channel = cls(**options)
        for event, handler in (handlers or {}).items():
            channel.on(event, handler)
        transport, _ = await channel._loop.create_unix_connection(lambda: _Protocol(channel), sock=sock)
        transport.set_write_buffer_limits(high=channel.high_water_bytes)
        channel._transport = channel._writer.transport = transport
        return channel

    def on(self, event: str, handler: Handler) -> None:
        """Call ``handler(data)`` for ``event``. Sends reach every handler; a request is answered
        by the first one registered (its return value, or awaited result, is the reply)."""
        self._handlers.on(event, handler)

    def off(self, event: str, handler: Handler) -> None:
        """Remove a handler registered with ``on``; removing an absent handler does nothing."""
        self._handlers.off(event, handler)

    def send(self, event: str, data: Any = None) -> None:
        """Fire-and-forget. Raises ``ChannelClosed``, ``EncodeError`` or ``SendBufferFull``."""
        self._check_open()
        # Not only while paused: sends made in one loop iteration sit in the writer's batch,
        # unseen by the transport (so never paused), and must not grow past the hard limit either.
        writer = self._writer
        if writer.buffered_bytes >= writer.max_buffer_bytes:
            raise SendBufferFull(f"peer not reading: {writer.buffered_bytes} bytes buffered")
        writer.write(self._encoder.encode(Send(event, data)))

    async def request(self, event: str, data: Any = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
        """Send a request and return the peer handler's reply.

        Raises ``RequestTimeout``, ``RemoteError`` (``NoHandler`` when the peer has no handler for
        ``event``), ``ChannelClosed`` or ``EncodeError``.
        """
        self._check_open()
        if self._writer.paused:  # the timeout covers waiting for a peer that is not reading
            started = self._loop.time()
            try:
                await asyncio.wait_for(self.drain(), timeout_s)
            except TimeoutError:
                raise RequestTimeout(f"request {event!r}: peer not reading for {timeout_s}s") from None
            timeout_s = max(0.0, timeout_s - (self._loop.time() - started))
        rid = next(self._ids)
        frame = self._encoder.encode(Request(rid, event, data))
        return await self._roundtrip(rid, frame, timeout_s, f"request {event!r}")

    async def ping(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> float:
        """Heartbeat: seconds until the peer's event loop answered. Raises ``RequestTimeout``."""
        self._check_open()
        rid = next(self._ids)
        started = self._loop.time()
        await self._roundtrip(rid, self._encoder.encode(Ping(rid)), timeout_s, "ping")
        return self._loop.time() - started

    async def drain(self) -> None:
        """Wait until the outgoing buffer is below the high-water mark (or the channel closes)."""
        writer = self._writer
        if writer.batch:
            # This iteration's frames are invisible to the transport's flow control until flushed:
            # without this, send()+drain() in a loop never pauses and the batch grows unbounded.
            writer.flush()
        while writer.paused and not self.closed:
            waiter: asyncio.Future[Any] = asyncio.ensure_future(writer.writable.wait())
            await asyncio.wait([waiter, self._closed], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        self._check_open()

    def announce_ready(self, info: Any = None) -> None:
        """Child side: tell the parent that start-up finished."""
        self._check_open()
        self._writer.write(self._encoder.encode(Ready(info)))

    async def wait_ready(self, timeout_s: float) -> Any:
        """Parent side: the ``info`` of the peer's ``ready``. Raises ``RequestTimeout``/``ChannelClosed``."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._ready), timeout_s)
        except TimeoutError:
            raise RequestTimeout(f"no ready within {timeout_s}s") from None

    @property
    def is_ready(self) -> bool:
        return self._ready.done() and self._ready.exception() is None

    @property
    def closed(self) -> bool:
        return self._closed.done()

    @property
    def close_reason(self) -> str | None:
        return self._closed.result() if self._closed.done() else None

    @property
    def buffered_bytes(self) -> int:
        return self._writer.buffered_bytes

    @property
    def max_buffer_bytes(self) -> int:
        return self._writer.max_buffer_bytes

    @max_buffer_bytes.setter
    def max_buffer_bytes(self, value: int) -> None:
        self._writer.max_buffer_bytes = value

    @property
    def max_inflight_handlers(self) -> int:
        return self._handlers.max_inflight

    @max_inflight_handlers.setter
    def max_inflight_handlers(self, value: int) -> None:
        self._handlers.max_inflight = value

    def close(self, reason: str = "closed locally") -> None:
        """Flush what is queued, close the socket, fail everything pending with ``ChannelClosed``."""
        self._writer.flush()
        self._shutdown(reason)

    async def wait_closed(self) -> str:
        """Wait until the channel is closed; returns the reason."""
        return await asyncio.shield(self._closed)

    def _check_open(self) -> None:
        if self._closed.done():
            raise ChannelClosed(self._closed.result())

    async def _roundtrip(self, rid: int, frame: bytes, timeout_s: float, what: str) -> Any:
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[rid] = future
        self._deadlines.add(rid, what, timeout_s)
        try:
            self._writer.write(frame)
            return await future
        finally:
            self._pending.pop(rid, None)

    def _on_data(self, data: bytes | memoryview) -> None:
        writer = self._writer
        if writer.batch is not None:  # a flush is already scheduled for this loop iteration
            self._decode_and_dispatch(data)
            return
        writer.dispatching = True
        try:
            self._decode_and_dispatch(data)
        finally:
            writer.dispatching = False
            writer.flush()

    def _decode_and_dispatch(self, data: bytes | memoryview) -> None:
        try:
            messages = self._decoder.feed(data)
        except ProtocolError as exc:
            self._dispatch_all(exc.decoded)
            self._protocol_error(exc)
            return
        self._dispatch_all(messages)

    def _dispatch_all(self, messages: list[Message]) -> None:
        dispatch = self._dispatch
        for message in messages:
            if self._closed.done():
                return
            dispatch[type(message)](message)

    def _on_eof(self) -> None:
        try:
            self._decoder.eof()
        except ProtocolError as exc:
            self._protocol_error(exc)
        except IPCError:
            pass  # EndOfStream: a clean close, connection_lost follows

    def _protocol_error(self, exc: ProtocolError) -> None:
        self.log.error("ipc protocol error, closing channel: {}", exc)
        if self._transport is not None:
            self._transport.abort()
        self._shutdown(f"protocol error: {exc}")

    def _on_reply(self, message: Reply) -> None:
        future = self._pending.pop(message.id, None)
        if future is not None and not future.done():
            future.set_result(message.data)

    def _on_pong(self, message: Pong) -> None:
        future = self._pending.pop(message.nonce, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _on_error(self, message: Error) -> None:
        future = self._pending.pop(message.id, None)
        if future is not None and not future.done():
            cls = REMOTE_ERRORS.get(message.type, RemoteError)
            future.set_exception(cls(message.type, message.message))

    def _on_ping(self, message: Ping) -> None:
        self._writer.write(self._encoder.encode(Pong(message.nonce)))
        self._writer.check_overflow()

    def _on_ready(self, message: Ready) -> None:
        if not self._ready.done():
            self._ready.set_result(message.info)

    def _shutdown(self, reason: str) -> None:
        if self._closed.done():
            return
        self._closed.set_result(reason)
        self._writer.writable.set()  # wakes drain()
        self._deadlines.clear()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        error = ChannelClosed(reason)
        pending = list(self._pending.values())  # the dict itself is shared with _deadlines
        self._pending.clear()
        for future in pending:
            if not future.done():
                future.set_exception(error)
        if not self._ready.done():
            self._ready.set_exception(ChannelClosed(reason))
            self._ready.exception()  # mark retrieved: nobody may be waiting for ready
        self.log.debug("channel closed: {}", reason)


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected pair: keep the first end, hand the second (inheritable) to the child process."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent.set_inheritable(False)
    child.set_inheritable(True)
    return parent, child
