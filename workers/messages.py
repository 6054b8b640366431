"""What handlers receive: a queue ``Job`` or a stream ``Message``, the optional ``HandlerContext``
(with ``stopping`` and ``checkpoint``), and what they may raise (``Requeue``, ``Reject``, ``JobLost``).
How a job is written on its list: ``corral.workers.jobs.wire``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol


class Requeue(Exception):
    """Raise from a queue handler to put the job back: at the front (next to be taken) by default,
    not counted as a failure."""

    def __init__(self, front: bool = True) -> None:
        super().__init__("requeue")
        self.front = front


class Reject(Exception):
    """Raise from a handler when the job or entry can never succeed (malformed, unknown type): it is
    dead-lettered at once with ``reason``, without retries — and without blocking a partition."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JobLost(Exception):
    """The job in hand is no longer this worker's (it was recovered away while the worker was cut
    off from Redis): its checkpoint was refused. Stop working on it; its next holder goes on."""


@dataclass(frozen=True)
class Job:
    id: str
    data: Any
    attempt: int
    queue: str
    enqueued_at: float | None
    raw: bytes = field(repr=False)
    unique: str | None = None  # the unique key it was enqueued with: its lock goes when it is done
    trace: dict[str, str] | None = field(default=None, repr=False)  # the producer's trace context
    checkpoint: Any = None  # what an earlier attempt saved with ctx.checkpoint(state) (None: nothing)


@dataclass(frozen=True)
class Message:
    """A stream entry: ``fields`` decoded as UTF-8 text; ``raw_fields`` as bytes (binary-safe)."""

    id: str
    fields: dict[str, str]
    stream: str
    attempt: int
    raw_fields: dict[bytes, bytes] = field(repr=False)


class SavesPlace(Protocol):
    """The job in hand of the handler running now (set by the queue consumer around its call)."""

    loop: asyncio.AbstractEventLoop

    def save(
        self, state: Any, publish: tuple[str, str | bytes] | None = None
    ) -> Coroutine[Any, Any, None]: ...


class _Stored:
    """What a sync handler's checkpoint returns: stored already, nothing to wait for."""

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()


_STORED = _Stored()

IN_HAND: contextvars.ContextVar[SavesPlace | None] = contextvars.ContextVar("corral_in_hand", default=None)


@dataclass
class HandlerContext:
    """The optional second argument of a handler: the worker's Redis client, its identity, a logger,
    and the worker itself (``ctx.worker``: where an app keeps its clients and counters)."""

    redis: Any
    worker_id: str
    log: Any
    extra: dict[str, Any] = field(default_factory=dict)
    worker: Any = None  # the BaseWorker of this child: its own state, counters, clients
    stop_event: asyncio.Event | None = field(default=None, repr=False)  # the child's stopping event

    @property
    def stopping(self) -> bool:
        """The child was asked to stop (a graceful stop, a reload, a recycle, a scale down): a long
        handler may save its place (``checkpoint``) and ``raise Requeue()`` to go on elsewhere."""
        return self.stop_event is not None and self.stop_event.is_set()

    async def wait_stopping(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s`` (an async handler), waking early when the child is asked to
        stop; True if it is stopping."""
        if self.stop_event is None:
            await asyncio.sleep(timeout_s)
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), timeout_s)
        return self.stop_event.is_set()

    def checkpoint(self, state: Any, publish: tuple[str, str | bytes] | None = None) -> Awaitable[None]:
        """Save ``state`` (a JSON value) with the queue job in hand; its next attempt (a retry, a
        ``Requeue``, a recovery after this worker died) reads it back as ``job.checkpoint``. With
        ``publish=(channel, message)``, the message is published in the same atomic step. An async
        handler awaits it (``await ctx.checkpoint(state)``); a sync one calls it (it returns once
        stored, with nothing left to await). Raises ``JobLost`` when the job is no longer this
        worker's."""
        held = IN_HAND.get()
        if held is None:
            raise RuntimeError(
                "ctx.checkpoint() saves a queue job's place: call it from a queue handler while it "
                "handles its job (not a stream's, a batch handler's or an at_most_once queue's)"
            )
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # a sync handler's thread: wait until stored
            asyncio.run_coroutine_threadsafe(held.save(state, publish), held.loop).result()
            return _STORED
        if running is not held.loop:
            raise RuntimeError("ctx.checkpoint() called from another event loop than the worker's")
        return running.create_task(held.save(state, publish))
