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
import inspect
import itertools
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from ipc.errors import (
    NO_HANDLER,
    ChannelClosed,
    IPCError,
    NoHandler,
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


def exception_type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class _Protocol(asyncio.Protocol):
    """Forwards transport callbacks to the channel (kept apart so Channel's API stays small)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def data_received(self, data: bytes) -> None:
        self.channel._on_data(data)

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
        self._ids = itertools.count(1)
        self._ready: asyncio.Future[Any] = self._loop.create_future()
        self._closed: asyncio.Future[str] = self._loop.create_future()
        self._tasks: set[asyncio.Task[None]] = set()
        self._batch: list[bytes] | None = None
        self._batch_bytes = 0  # sum of len() over _batch, kept so buffered_bytes is O(1)
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
        if self._write_paused and self.buffered_bytes >= self.max_buffer_bytes:
            raise SendBufferFull(f"peer not reading: {self.buffered_bytes} bytes buffered")
        self._write(self._encoder.encode(Send(event, data)))

    async def request(self, event: str, data: Any = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
        """Send a request and return the peer handler's reply.

        Raises ``RequestTimeout``, ``RemoteError`` (``NoHandler`` when the peer has no handler for
        ``event``), ``ChannelClosed`` or ``EncodeError``.
        """
        self._check_open()
        if self._write_paused:
            await self.drain()
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
        # iteration's frames are joined into one write by _flush (throughput).
        if self._batch is None:
            assert self._transport is not None
            self._transport.write(frame)
            self._batch = []
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
        self._write_paused = paused
        if paused:
            self._writable.clear()
        else:
            self._writable.set()
        self._update_reading()

    def _update_reading(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        if self._write_paused or len(self._tasks) >= self.max_inflight_handlers:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()

    async def _roundtrip(self, rid: int, frame: bytes, timeout_s: float, what: str) -> Any:
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[rid] = future
        timer = self._loop.call_later(timeout_s, self._expire, rid, what, timeout_s)
        try:
            self._write(frame)
            return await future
        finally:
            timer.cancel()
            self._pending.pop(rid, None)

    def _expire(self, rid: int, what: str, timeout_s: float) -> None:
        future = self._pending.pop(rid, None)
        if future is not None and not future.done():
            future.set_exception(RequestTimeout(f"{what}: no answer within {timeout_s}s"))

    # -- internals: reading -----------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
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
            cls = NoHandler if message.type == NO_HANDLER else RemoteError
            future.set_exception(cls(message.type, message.message))

    def _on_ping(self, message: Ping) -> None:
        self._write(self._encoder.encode(Pong(message.nonce)))

    def _on_ready(self, message: Ready) -> None:
        if not self._ready.done():
            self._ready.set_result(message.info)

    def _on_send(self, message: Send) -> None:
        for handler, is_async in self._handlers.get(message.event, ()):
            try:
                result = handler(message.data)
                if is_async or (result is not None and inspect.isawaitable(result)):
                    self._spawn(self._await_send(message.event, result))
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

    def _reply_error(self, rid: int, type_name: str, text: str) -> None:
        if not self._closed.done():
            self._write(self._encoder.encode(Error(rid, type_name, text[:4096])))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        if len(self._tasks) >= self.max_inflight_handlers:
            self._update_reading()

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
