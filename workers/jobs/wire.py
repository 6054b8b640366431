"""A queue job on the wire: a UTF-8 JSON value. corral's own envelope is
``{"_corral": 1, "id": str, "data": any, "attempt": int, "enqueued_at": float[, "unique": str]
[, "trace": {"traceparent": str}][, "checkpoint": any]}``;
anything else that is valid JSON (e.g. ``redis-cli LPUSH q '{"a": 1}'``) is a bare job: its value is
the data, its id is derived from its bytes, its attempt is 1. Invalid UTF-8 or JSON cannot be
decoded: ``Malformed``. A stream entry is its field map (``decode_fields``).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from typing import Any

from corral.workers.messages import Job

ENVELOPE_MARK = "_corral"


class Malformed(ValueError):
    """A queue job that is not a UTF-8 JSON value."""


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
