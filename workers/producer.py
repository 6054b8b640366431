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
import zlib
from typing import Any

from corral.workers.keys import Keys, queue_shards
from corral.workers.messages import encode_job

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


def _push(redis: Any, queue: str, raw: bytes, *, front: bool, due_s: float | None, key_prefix: str) -> Any:
    """The one command that enqueues: a push, or (delayed) an add to the queue's delayed set."""
    if due_s is None:
        return (redis.rpush if front else redis.lpush)(queue, raw)
    if front:
        raise ValueError("a delayed job is taken first when due: front does not apply")
    return redis.zadd(Keys(key_prefix).delayed(queue), {raw: due_s})


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
) -> str:
    """Push a job; ``shards``: the queue's ``shards`` setting (``key`` keeps a key's jobs on one).
    ``delay_s`` or ``at_s`` (unix seconds): held in Redis until due, then taken first by whichever
    consumer is alive (``key_prefix``: the pool's ``[redis] key_prefix``)."""
    raw = encode_job(data, job_id)
    _push(
        redis,
        queue_key(queue, shards, key),
        raw,
        front=front,
        due_s=due_time(delay_s, at_s),
        key_prefix=key_prefix,
    )
    return _id_of(raw)


async def aenqueue(
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
) -> str:
    raw = encode_job(data, job_id)
    due_s = due_time(delay_s, at_s)
    await _push(redis, queue_key(queue, shards, key), raw, front=front, due_s=due_s, key_prefix=key_prefix)
    return _id_of(raw)


def publish(
    redis: Any, stream: str, data: dict[str, Any], *, key: str | None = None, partitions: int = 0
) -> str:
    entry_id = redis.xadd(stream_key(stream, key, partitions), entry_fields(data))
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def apublish(
    redis: Any, stream: str, data: dict[str, Any], *, key: str | None = None, partitions: int = 0
) -> str:
    entry_id = await redis.xadd(stream_key(stream, key, partitions), entry_fields(data))
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def _id_of(raw: bytes) -> str:
    import json

    return str(json.loads(raw)["id"])
