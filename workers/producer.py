"""Producing work: ``enqueue`` a job onto a (sharded) queue, ``publish`` an entry to a (partitioned)
stream.

Sync (redis-py ``Redis`` or ``RedisCluster``) and async (``aenqueue``/``apublish``) variants.
Foreign producers need none of this: a bare JSON value LPUSHed onto a queue is a valid job; a sharded
queue's lists are named by ``keys.queue_shards`` (``corral shards QUEUE`` prints them) and any of
them will do, or ``crc32(utf-8 key) % shards`` to keep a key's jobs on one list; a partitioned
stream's shard for a key is ``crc32(utf-8 key) % partitions``, named ``<stream>:<shard>``.
"""

from __future__ import annotations

import itertools
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

from corral.workers import tracing
from corral.workers.jobs.keys import Keys, queue_shards
from corral.workers.jobs.scripts import ENQUEUE_UNIQUE
from corral.workers.jobs.wire import encode_job

_turns = itertools.count()  # round-robin over a sharded queue's lists, when no key is given


def shard_of(key: str, partitions: int) -> int:
    """The shard of ``key``: CRC-32 (IEEE, as zlib/Java/Go compute it) of its UTF-8 bytes, mod P."""
    return zlib.crc32(key.encode("utf-8")) % partitions


def shard_name(stream: str, shard: int) -> str:
    return f"{stream}:{shard}"


def stream_key(stream: str, key: str | None, partitions: int) -> str:
    if partitions <= 0:
        return stream
    if key is None:
        raise ValueError(f"stream {stream!r} has {partitions} partitions: publish needs a key")
    return shard_name(stream, shard_of(key, partitions))


def entry_fields(data: dict[str, Any]) -> dict[str, str | bytes]:
    """A stream entry is a flat map of strings: nested values are JSON-encoded by the caller."""
    if not isinstance(data, dict) or not data:
        raise ValueError("a stream entry must be a non-empty object of field -> value")
    fields: dict[str, str | bytes] = {}
    for name, value in data.items():
        if isinstance(value, str | bytes):
            fields[str(name)] = value
        elif isinstance(value, bool | int | float):
            fields[str(name)] = str(value).lower() if isinstance(value, bool) else str(value)
        else:
            raise ValueError(f"field {name!r}: only strings and numbers (encode nested data as JSON)")
    return fields


def queue_key(queue: str, shards: int = 1, key: str | None = None) -> str:
    """The list a job goes to: the queue itself, or one of its shards (by ``key``, else in turn)."""
    if shards <= 1:
        return queue
    shard = shard_of(key, shards) if key is not None else next(_turns) % shards
    return queue_shards(queue, shards)[shard]


def due_time(delay_s: float | None = None, at_s: float | None = None) -> float | None:
    """When a delayed job is due (unix seconds), or None for a job to take now."""
    if delay_s is not None and at_s is not None:
        raise ValueError("give a delay or a time, not both")
    if delay_s is not None:
        if delay_s <= 0:
            raise ValueError(f"the delay must be > 0 s, got {delay_s:g}")
        return time.time() + delay_s
    if at_s is not None and at_s <= time.time():
        raise ValueError(f"the time to run at is in the past ({time.time() - at_s:.0f} s ago)")
    return at_s


class DuplicateJob(Exception):
    """``enqueue(..., unique_key=K)`` while a job with ``K`` is still queued, waiting or running."""

    def __init__(self, queue: str, unique_key: str, job_id: str, ttl_s: float) -> None:
        super().__init__(
            f"a job with unique key {unique_key!r} is already on {queue}: job {job_id} "
            f"(its key is released when it is done, or in {ttl_s:.0f} s at most)"
        )
        self.queue, self.unique_key, self.job_id, self.ttl_s = queue, unique_key, job_id, ttl_s


@dataclass(frozen=True)
class Push:
    """One job's way into Redis: onto its list (or delayed set), with its unique lock if it has one."""

    queue: str  # the list (a sharded queue's shard)
    raw: bytes
    job_id: str
    front: bool = False
    due_s: float | None = None
    unique_key: str | None = None
    unique_for_s: float = 3600.0
    key_prefix: str = "corral"

    def send(self, redis: Any) -> Any:
        """The command (a coroutine on an asyncio client); its reply goes to ``check``."""
        keys = Keys(self.key_prefix)
        if self.due_s is not None and self.front:
            raise ValueError("a delayed job is taken first when due: front does not apply")
        how = "zadd" if self.due_s is not None else "rpush" if self.front else "lpush"
        target = keys.delayed(self.queue) if self.due_s is not None else self.queue
        if self.unique_key is None:
            return (
                redis.zadd(target, {self.raw: self.due_s})
                if how == "zadd"
                else getattr(redis, how)(target, self.raw)
            )
        lock = keys.unique(self.queue, self.unique_key)
        ttl_ms = max(1, int(self.unique_for_s * 1000))
        return redis.eval(
            ENQUEUE_UNIQUE, 2, target, lock, self.raw, self.job_id, ttl_ms, how, self.due_s or 0
        )

    def check(self, reply: Any) -> str:
        """The job id, or ``DuplicateJob`` when its unique key is held."""
        if self.unique_key is not None and isinstance(reply, list | tuple) and reply:
            holder, ttl_ms = reply  # (a pipeline's reply comes with its execute(): None or this)
            raise DuplicateJob(self.queue, self.unique_key, holder.decode(), max(0, int(ttl_ms)) / 1000)
        return self.job_id


def plan(
    queue: str,
    data: Any,
    *,
    front: bool = False,
    job_id: str | None = None,
    shards: int = 1,
    key: str | None = None,
    delay_s: float | None = None,
    at_s: float | None = None,
    key_prefix: str = "corral",
    unique_key: str | None = None,
    unique_for_s: float = 3600.0,
) -> Push:
    """How a job goes in (``enqueue``'s options); ValueError for a bad delay, time or unique key."""
    if unique_key is not None and not unique_key:
        raise ValueError("the unique key must not be empty")
    if not unique_for_s > 0:
        raise ValueError(f"unique_for_s must be > 0, got {unique_for_s:g}")
    if unique_key is not None and key is not None and shards > 1:
        raise ValueError("a unique job on a sharded queue goes to its unique key's shard: leave key out")
    job_id = job_id or uuid.uuid4().hex
    list_key = queue_key(queue, shards, key if key is not None else unique_key)
    return Push(
        list_key,
        encode_job(data, job_id, unique=unique_key, trace=tracing.carrier()),
        job_id,
        front,
        due_time(delay_s, at_s),
        unique_key,
        unique_for_s,
        key_prefix,
    )


def enqueue(
    redis: Any,
    queue: str,
    data: Any,
    *,
    front: bool = False,
    job_id: str | None = None,
    shards: int = 1,
    key: str | None = None,
    delay_s: float | None = None,
    at_s: float | None = None,
    key_prefix: str = "corral",
    unique_key: str | None = None,
    unique_for_s: float = 3600.0,
) -> str:
    """Push a job; ``shards``: the queue's ``shards`` setting (``key`` keeps a key's jobs on one).
    ``delay_s`` or ``at_s`` (unix seconds): held in Redis until due, then taken first by whichever
    consumer is alive (``key_prefix``: the pool's ``[redis] key_prefix``). ``unique_key``: refused
    with ``DuplicateJob`` while a job with that key is queued, waiting or running (at most
    ``unique_for_s``); checked and taken in the same step as the push."""
    push = plan(
        queue,
        data,
        front=front,
        job_id=job_id,
        shards=shards,
        key=key,
        delay_s=delay_s,
        at_s=at_s,
        key_prefix=key_prefix,
        unique_key=unique_key,
        unique_for_s=unique_for_s,
    )
    return push.check(push.send(redis))


async def aenqueue(redis: Any, queue: str, data: Any, **options: Any) -> str:
    """``enqueue`` on an asyncio client (the same keyword options)."""
    push = plan(queue, data, **options)
    return push.check(await push.send(redis))


def publish(
    redis: Any, stream: str, data: dict[str, Any], *, key: str | None = None, partitions: int = 0
) -> str:
    entry_id = redis.xadd(
        stream_key(stream, key, partitions), {**entry_fields(data), **tracing.entry_carrier()}
    )
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def apublish(
    redis: Any, stream: str, data: dict[str, Any], *, key: str | None = None, partitions: int = 0
) -> str:
    fields = {**entry_fields(data), **tracing.entry_carrier()}
    entry_id = await redis.xadd(stream_key(stream, key, partitions), fields)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
