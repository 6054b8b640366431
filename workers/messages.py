"""What handlers receive (``Job``, ``Message``, ``HandlerContext``) and the queue wire format.

A queue job is a UTF-8 JSON value. corral's own envelope is
``{"_corral": 1, "id": str, "data": any, "attempt": int, "enqueued_at": float[, "unique": str]
[, "trace": {"traceparent": str}]}``;
anything else that is valid JSON (e.g. ``redis-cli LPUSH q '{"a": 1}'``) is a bare job: its value is
the data, its id is derived from its bytes, its attempt is 1. Invalid UTF-8 or JSON cannot be
decoded: ``Malformed``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True)
class Message:
    """A stream entry: ``fields`` decoded as UTF-8 text; ``raw_fields`` as bytes (binary-safe)."""

    id: str
    fields: dict[str, str]
    stream: str
    attempt: int
    raw_fields: dict[bytes, bytes] = field(repr=False)


@dataclass
class HandlerContext:
    """The optional second argument of a handler: the worker's Redis client, its identity, a logger,
    and the worker itself (``ctx.worker``: where an app keeps its clients and counters)."""

    redis: Any
    worker_id: str
    log: Any
    extra: dict[str, Any] = field(default_factory=dict)
    worker: Any = None  # the BaseWorker of this child: its own state, counters, clients


def encode_job(
    data: Any,
    job_id: str | None = None,
    attempt: int = 1,
    enqueued_at: float | None = None,
    *,
    unique: str | None = None,
    trace: dict[str, str] | None = None,
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
