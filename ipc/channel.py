"""An asyncio message channel over one end of a Unix stream socket (normally a socketpair).

The same class serves both sides. ``send`` is fire-and-forget; ``request`` awaits the reply of the
peer's handler, correlated by id, with many requests in flight at once. Handlers (sync or async) are
registered per event name; their return value is the reply, their exception reaches the requester
as ``RemoteError``. The child announces ``ready``; the parent awaits it. ``ping`` is answered by the
peer's event loop itself, so an unanswered ping means that loop is blocked or gone.

Writes made in one loop iteration are coalesced into one socket write. Backpressure: when the
transport's buffer passes the high-water mark the channel stops reading from the peer (so a flood of
requests cannot pile up replies), ``request`` and ``drain`` wait, and ``send`` raises
``SendBufferFull`` once the buffer reaches ``max_buffer_bytes``. Close (EOF, protocol error or
``close()``) fails every pending request, ping and ready-wait at once with ``ChannelClosed``.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from ipc.errors import (
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
from ipc.frames import (
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

Handler = Callable[[Any], Any]
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_HIGH_WATER_BYTES = 1024 * 1024
DEFAULT_MAX_BUFFER_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_INFLIGHT_HANDLERS = 1024
REMOTE_ERRORS: dict[str, type[RemoteError]] = {NO_HANDLER: NoHandler, OVERLOADED: Overloaded}
RECV_BUFFER_BYTES = 64 * 1024  # allocated once per channel, reused by every read


def exception_type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class _Protocol(asyncio.BufferedProtocol):
    """Forwards transport callbacks to the channel (kept apart so Channel's API stays small).

    Buffered: the transport reads into one reusable buffer (the decoder copies what it keeps)
    instead of allocating a fresh 256 KiB ``bytes`` per read, which glibc may serve with an
    mmap/munmap pair and page faults on every read: that doubled the round trip in some runs.
    """

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
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
        self.channel._set_write_paused(True)

    def resume_writing(self) -> None:
        self.channel._set_write_paused(False)


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
        self.high_water_bytes = high_water_bytes
        self.max_buffer_bytes = max_buffer_bytes
        self.max_inflight_handlers = max_inflight_handlers
        self._encoder = FrameEncoder(max_frame_bytes)
        self._decoder = FrameDecoder(max_frame_bytes)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._handlers: dict[str, list[tuple[Handler, bool]]] = {}
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._deadlines: list[tuple[float, int, str, float]] = []  # heap of (when, id, what, timeout_s)
        self._expiry: asyncio.TimerHandle | None = None  # due at or before the earliest deadline
        self._ids = itertools.count(1)
        self._ready: asyncio.Future[Any] = self._loop.create_future()
        self._closed: asyncio.Future[str] = self._loop.create_future()
        self._tasks: set[asyncio.Task[None]] = set()
        self._batch: list[bytes] | None = None
        self._batch_bytes = 0  # sum of len() over _batch, kept so buffered_bytes is O(1)
        self._dispatching = False  # inside _on_data, which flushes the batch itself when done
        self._unhandled: set[str] = set()  # sent events we had no handler for (logged once)
        self._write_paused = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._dispatch: dict[type, Callable[[Any], None]] = {
            Reply: self._on_reply,
            Send: self._on_send,
            Request: self._on_request,
            Error: self._on_error,
            Ping: self._on_ping,
            Pong: self._on_pong,
            Ready: self._on_ready,
        }
        self.log = logger.bind(channel=name)

    @classmethod
    async def open(cls, sock: socket.socket, **options: Any) -> Channel:
        """Wrap a connected stream socket (one end of ``ipc.socketpair()``) in a channel."""
        channel = cls(**options)
        transport, _ = await channel._loop.create_unix_connection(lambda: _Protocol(channel), sock=sock)
        transport.set_write_buffer_limits(high=channel.high_water_bytes)
        channel._transport = transport
        return channel

    # -- handlers ---------------------------------------------------------------------------

    def on(self, event: str, handler: Handler) -> None:
        """Call ``handler(data)`` for ``event``. Sends reach every handler; a request is answered
        by the first one registered (its return value, or awaited result, is the reply)."""
        is_async = inspect.iscoroutinefunction(handler)
        self._handlers.setdefault(event, []).append((handler, is_async))

    def off(self, event: str, handler: Handler) -> None:
        """Remove a handler registered with ``on``; removing an absent handler does nothing."""
        handlers = self._handlers.get(event, [])
        self._handlers[event] = [(h, a) for h, a in handlers if h != handler]
        if not self._handlers[event]:
            del self._handlers[event]

    # -- sending ----------------------------------------------------------------------------

    def send(self, event: str, data: Any = None) -> None:
        """Fire-and-forget. Raises ``ChannelClosed``, ``EncodeError`` or ``SendBufferFull``."""
        self._check_open()
        # Not only while paused: sends made in one loop iteration sit in _batch, unseen by the
        # transport (so never paused), and must not grow past the hard limit either.
        if self.buffered_bytes >= self.max_buffer_bytes:
            raise SendBufferFull(f"peer not reading: {self.buffered_bytes} bytes buffered")
        self._write(self._encoder.encode(Send(event, data)))

    async def request(self, event: str, data: Any = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
        """Send a request and return the peer handler's reply.

        Raises ``RequestTimeout``, ``RemoteError`` (``NoHandler`` when the peer has no handler for
        ``event``), ``ChannelClosed`` or ``EncodeError``.
        """
        self._check_open()
        if self._write_paused:  # the timeout covers waiting for a peer that is not reading
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
        if self._batch:
            # This iteration's frames are invisible to the transport's flow control until flushed:
            # without this, send()+drain() in a loop never pauses and the batch grows unbounded.
            self._flush()
        while self._write_paused and not self.closed:
            waiter: asyncio.Future[Any] = asyncio.ensure_future(self._writable.wait())
            await asyncio.wait([waiter, self._closed], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        self._check_open()

    # -- ready handshake --------------------------------------------------------------------

    def announce_ready(self, info: Any = None) -> None:
        """Child side: tell the parent that start-up finished."""
        self._check_open()
        self._write(self._encoder.encode(Ready(info)))

    async def wait_ready(self, timeout_s: float) -> Any:
        """Parent side: the ``info`` of the peer's ``ready``. Raises ``RequestTimeout``/``ChannelClosed``."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._ready), timeout_s)
        except TimeoutError:
            raise RequestTimeout(f"no ready within {timeout_s}s") from None

    @property
    def is_ready(self) -> bool:
        return self._ready.done() and self._ready.exception() is None

    # -- closing ----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.done()

    @property
    def close_reason(self) -> str | None:
        return self._closed.result() if self._closed.done() else None

    @property
    def buffered_bytes(self) -> int:
        return self._batch_bytes + (self._transport.get_write_buffer_size() if self._transport else 0)

    def close(self, reason: str = "closed locally") -> None:
        """Flush what is queued, close the socket, fail everything pending with ``ChannelClosed``."""
        self._flush()
        self._shutdown(reason)

    async def wait_closed(self) -> str:
        """Wait until the channel is closed; returns the reason."""
        return await asyncio.shield(self._closed)

    # -- internals: writing -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed.done():
            raise ChannelClosed(self._closed.result())

    def _write(self, frame: bytes) -> None:
        # The first frame of a loop iteration goes out at once (latency); the rest of that
        # iteration's frames are joined into one write by _flush (throughput). Frames written
        # while dispatching received data are flushed when that dispatch ends, which spares
        # the common reply path an extra loop iteration just to run _flush.
        if self._batch is None:
            assert self._transport is not None
            self._transport.write(frame)
            self._batch = []
            if not self._dispatching:
                self._loop.call_soon(self._flush)
        else:
            self._batch.append(frame)
            self._batch_bytes += len(frame)

    def _flush(self) -> None:
        batch, self._batch = self._batch, None
        self._batch_bytes = 0
        if batch and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(batch))

    def _set_write_paused(self, paused: bool) -> None:
        # Reading goes on while writes are paused: two peers that flood each other must both
        # keep draining (no deadlock). What bounds memory instead: request() and drain() wait,
        # send() raises SendBufferFull, and a peer that lets our replies pile up past
        # max_buffer_bytes is cut off (_check_overflow).
        self._write_paused = paused
        if paused:
            self._writable.clear()
        else:
            self._writable.set()

    def _check_overflow(self) -> None:
        """After writing an answer (reply, error, pong): the peer keeps asking but does not read."""
        if self.buffered_bytes > self.max_buffer_bytes and not self._closed.done():
            self.log.error("peer not reading: {} bytes buffered; closing the channel", self.buffered_bytes)
            if self._transport is not None:
                self._transport.abort()
            self._shutdown(f"peer not reading ({self.buffered_bytes} bytes buffered)")

    def _update_reading(self) -> None:
        """Async ``send`` handlers at the limit pause reading: the peer's sends then meet its own
        backpressure. (Requests at the limit are refused with ``Overloaded`` instead, so pings and
        replies keep flowing.)"""
        if self._transport is None or self._transport.is_closing():
            return
        if len(self._tasks) >= self.max_inflight_handlers:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()

    async def _roundtrip(self, rid: int, frame: bytes, timeout_s: float, what: str) -> Any:
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[rid] = future
        self._add_deadline(rid, what, timeout_s)
        try:
            self._write(frame)
            return await future
        finally:
            self._pending.pop(rid, None)

    def _add_deadline(self, rid: int, what: str, timeout_s: float) -> None:
        # One loop timer serves every pending request (a call_later + cancel per request is a
        # good part of a round trip's own cost). An answered request leaves its entry behind:
        # dropped when it comes due, or in bulk once stale entries outnumber the pending ones.
        deadlines = self._deadlines
        if len(deadlines) > 2 * len(self._pending) + 64:
            deadlines[:] = [entry for entry in deadlines if entry[1] in self._pending]
            heapq.heapify(deadlines)
        when = self._loop.time() + timeout_s
        heapq.heappush(deadlines, (when, rid, what, timeout_s))
        if self._expiry is None or when < self._expiry.when():
            if self._expiry is not None:
                self._expiry.cancel()
            self._expiry = self._loop.call_at(when, self._expire_due, when)

    def _expire_due(self, due: float) -> None:
        self._expiry = None
        deadlines, pending = self._deadlines, self._pending
        due = max(due, self._loop.time())
        while deadlines and (deadlines[0][0] <= due or deadlines[0][1] not in pending):
            _, rid, what, timeout_s = heapq.heappop(deadlines)
            self._expire(rid, what, timeout_s)  # does nothing for an answered request
        if deadlines:
            when = deadlines[0][0]
            self._expiry = self._loop.call_at(when, self._expire_due, when)

    def _expire(self, rid: int, what: str, timeout_s: float) -> None:
        future = self._pending.pop(rid, None)
        if future is not None and not future.done():
            future.set_exception(RequestTimeout(f"{what}: no answer within {timeout_s}s"))

    # -- internals: reading -----------------------------------------------------------------

    def _on_data(self, data: bytes | memoryview) -> None:
        if self._batch is not None:  # a _flush is already scheduled for this loop iteration
            self._decode_and_dispatch(data)
            return
        self._dispatching = True
        try:
            self._decode_and_dispatch(data)
        finally:
            self._dispatching = False
            self._flush()

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
        self._write(self._encoder.encode(Pong(message.nonce)))
        self._check_overflow()

    def _on_ready(self, message: Ready) -> None:
        if not self._ready.done():
            self._ready.set_result(message.info)

    def _on_send(self, message: Send) -> None:
        handlers = self._handlers.get(message.event)
        if not handlers:
            if message.event not in self._unhandled:  # once per name: a typo must not be silent
                self._unhandled.add(message.event)
                self.log.warning("no handler for sent event {!r}; dropped", message.event)
            return
        for handler, is_async in handlers:
            try:
                result = handler(message.data)
                if is_async or (result is not None and inspect.isawaitable(result)):
                    self._spawn(self._await_send(message.event, result))
                    if len(self._tasks) >= self.max_inflight_handlers:
                        self._update_reading()
            except Exception:
                self.log.exception("handler for event {!r} raised", message.event)

    async def _await_send(self, event: str, result: Awaitable[Any]) -> None:
        try:
            await result
        except Exception:
            self.log.exception("handler for event {!r} raised", event)

    def _on_request(self, message: Request) -> None:
        handlers = self._handlers.get(message.event)
        if not handlers:
            self._reply_error(message.id, NO_HANDLER, f"no handler for event {message.event!r}")
            return
        handler, is_async = handlers[0]
        if is_async and len(self._tasks) >= self.max_inflight_handlers:
            self._reply_error(message.id, OVERLOADED, f"{len(self._tasks)} handlers in flight already")
            return
        try:
            result = handler(message.data)
        except Exception as exc:
            self._reply_error(message.id, exception_type_name(exc), str(exc))
            return
        if is_async or inspect.isawaitable(result):
            self._spawn(self._await_reply(message.id, result))
        else:
            self._reply(message.id, result)

    async def _await_reply(self, rid: int, result: Awaitable[Any]) -> None:
        try:
            value = await result
        except Exception as exc:
            self._reply_error(rid, exception_type_name(exc), str(exc))
            return
        if self._write_paused:
            try:
                await self.drain()
            except ChannelClosed:
                return
        self._reply(rid, value)

    def _reply(self, rid: int, value: Any) -> None:
        if self._closed.done():
            return
        try:
            frame = self._encoder.encode(Reply(rid, value))
        except IPCError as exc:  # EncodeError, FrameTooLarge: the requester still gets an answer
            self._reply_error(rid, exception_type_name(exc), str(exc))
            return
        self._write(frame)
        self._check_overflow()

    def _reply_error(self, rid: int, type_name: str, text: str) -> None:
        if not self._closed.done():
            self._write(self._encoder.encode(Error(rid, type_name, text[:4096])))
            self._check_overflow()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if len(self._tasks) == self.max_inflight_handlers - 1:
            self._update_reading()

    # -- internals: shutdown ----------------------------------------------------------------

    def _shutdown(self, reason: str) -> None:
        if self._closed.done():
            return
        self._closed.set_result(reason)
        self._writable.set()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._deadlines.clear()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        error = ChannelClosed(reason)
        pending, self._pending = self._pending, {}
        for future in pending.values():
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
