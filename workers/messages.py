"""What handlers receive (``Job``, ``Message``, ``HandlerContext``) and the queue wire format.

A queue job is a UTF-8 JSON value. corral's own envelope is
``{"_corral": 1, "id": str, "data": any, "attempt": int, "enqueued_at": float[, "unique": str]
[, "trace": {"traceparent": str}][, "checkpoint": any]}``;
anything else that is valid JSON (e.g. ``redis-cli LPUSH q '{"a": 1}'``) is a bare job: its value is
the data, its id is derived from its bytes, its attempt is 1. Invalid UTF-8 or JSON cannot be
decoded: ``Malformed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import math
import time
import uuid
from collections.abc import Awaitable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

ENVELOPE_MARK = "_corral"


class Malformed(ValueError):
    """A queue job that is not a UTF-8 JSON value."""


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


def encode_job(
    data: Any,
    job_id: str | None = None,
    attempt: int = 1,
    enqueued_at: float | None = None,
    *,
    unique: str | None = None,
    trace: dict[str, str] | None = None,
    checkpoint: Any = None,
) -> bytes:
    envelope = {
        ENVELOPE_MARK: 1,
        "id": job_id or uuid.uuid4().hex,
        "data": data,
        "attempt": attempt,
        "enqueued_at": time.time() if enqueued_at is None else enqueued_at,
    }
    if unique is not None:
        envelope["unique"] = unique
    if trace:
        envelope["trace"] = trace
    if checkpoint is not None:
        envelope["checkpoint"] = checkpoint
    return json.dumps(envelope, separators=(",", ":")).encode()


def decode_job(raw: bytes, queue: str) -> Job:
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise Malformed(f"not UTF-8: {exc}") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than Python allows
        raise Malformed(f"not JSON: {type(exc).__name__}: {exc}") from None
    if isinstance(value, dict) and value.get(ENVELOPE_MARK) == 1 and isinstance(value.get("id"), str):
        attempt = value.get("attempt", 1)
        enqueued_at = value.get("enqueued_at")
        unique, trace = value.get("unique"), value.get("trace")
        return Job(
            id=value["id"],
            data=value.get("data"),
            attempt=attempt if type(attempt) is int and attempt > 0 else 1,
            queue=queue,
            enqueued_at=_timestamp(enqueued_at),
            raw=raw,
            unique=unique if isinstance(unique, str) and unique else None,
            trace=trace if isinstance(trace, dict) else None,
            checkpoint=value.get("checkpoint"),
        )
    return Job(hashlib.sha1(raw).hexdigest()[:20], value, 1, queue, None, raw)


def _timestamp(value: Any) -> float | None:
    """A finite unix time, or None (a huge integer does not fit a float: OverflowError)."""
    try:
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    except OverflowError:
        return None
    return number if number is not None and math.isfinite(number) else None


def decode_fields(raw_fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in raw_fields.items()}
