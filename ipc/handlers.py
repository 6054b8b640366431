"""The answering side of a channel: handlers registered per event name, run for the peer's messages.

A ``send`` reaches every handler of its event; a ``request`` is answered by the first one, with its
return value (or awaited result) as the reply and its exception as an error reply naming the
exception's type. Async handlers run as tasks, at most ``max_inflight`` at once: at the limit
requests are refused with ``Overloaded`` and reading pauses for sends.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from corral.ipc.errors import NO_HANDLER, OVERLOADED, ChannelClosed, IPCError
from corral.ipc.frames import Error, FrameEncoder, Reply, Request, Send
from corral.ipc.writer import Writer

if TYPE_CHECKING:
    from loguru import Logger

Handler = Callable[[Any], Any]


def exception_type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class Handlers:
    """A channel's handlers; ``on_send`` and ``on_request`` take the peer's messages."""

    __slots__ = (
        "_by_event",
        "_closed",
        "_drain",
        "_encoder",
        "_log",
        "_loop",
        "_tasks",
        "_unhandled",
        "_writer",
        "max_inflight",
    )

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        encoder: FrameEncoder,
        writer: Writer,
        closed: asyncio.Future[str],
        drain: Callable[[], Awaitable[None]],
        log: Logger,
        max_inflight: int,
    ) -> None:
        self.max_inflight = max_inflight
        self._by_event: dict[str, list[tuple[Handler, bool]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._unhandled: set[str] = set()  # sent events we had no handler for (logged once)
        self._loop = loop
        self._encoder = encoder
        self._writer = writer
        self._closed = closed
        self._drain = drain  # the channel's: waits while the peer is not reading
        self._log = log

    def on(self, event: str, handler: Handler) -> None:
        is_async = inspect.iscoroutinefunction(handler)
        self._by_event.setdefault(event, []).append((handler, is_async))

    def __contains__(self, event: object) -> bool:
        """Whether some handler answers ``event``."""
        return event in self._by_event

    def off(self, event: str, handler: Handler) -> None:
        handlers = self._by_event.get(event, [])
        self._by_event[event] = [(h, a) for h, a in handlers if h != handler]
        if not self._by_event[event]:
            del self._by_event[event]

    def on_send(self, message: Send) -> None:
        handlers = self._by_event.get(message.event)
        if not handlers:
            if message.event not in self._unhandled:  # once per name: a typo must not be silent
                self._unhandled.add(message.event)
                self._log.warning("no handler for sent event {!r}; dropped", message.event)
            return
        for handler, is_async in handlers:
            try:
                result = handler(message.data)
                if is_async or (result is not None and inspect.isawaitable(result)):
                    self._spawn(self._await_send(message.event, result))
                    if len(self._tasks) >= self.max_inflight:
                        # At the limit, async send handlers pause reading: the peer's sends then
                        # meet its own backpressure. (Requests at the limit are refused with
                        # ``Overloaded`` instead, so pings and replies keep flowing.)
                        self._writer.set_reading(False)
            except Exception:
                self._log.exception("handler for event {!r} raised", message.event)

    def on_request(self, message: Request) -> None:
        handlers = self._by_event.get(message.event)
        if not handlers:
            self._reply_error(message.id, NO_HANDLER, f"no handler for event {message.event!r}")
            return
        handler, is_async = handlers[0]
        if is_async and len(self._tasks) >= self.max_inflight:
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

    async def _await_send(self, event: str, result: Awaitable[Any]) -> None:
        try:
            await result
        except Exception:
            self._log.exception("handler for event {!r} raised", event)

    async def _await_reply(self, rid: int, result: Awaitable[Any]) -> None:
        try:
            value = await result
        except Exception as exc:
            self._reply_error(rid, exception_type_name(exc), str(exc))
            return
        if self._writer.paused:
            try:
                await self._drain()
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
        self._writer.write(frame)
        self._writer.check_overflow()

    def _reply_error(self, rid: int, type_name: str, text: str) -> None:
        if not self._closed.done():
            self._writer.write(self._encoder.encode(Error(rid, type_name, text[:4096])))
            self._writer.check_overflow()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if len(self._tasks) == self.max_inflight - 1:
            self._writer.set_reading(True)
