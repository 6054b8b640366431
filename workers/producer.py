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
import zlib
from typing import Any

from corral.workers.keys import queue_shards
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


def enqueue(
    redis: Any,
    queue: str,
    data: Any,
    *,
    front: bool = False,
    job_id: str | None = None,
    shards: int = 1,
    key: str | None = None,
) -> str:
    """Push a job; ``shards``: the queue's ``shards`` setting (``key`` keeps a key's jobs on one)."""
    raw = encode_job(data, job_id)
    (redis.rpush if front else redis.lpush)(queue_key(queue, shards, key), raw)
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
) -> str:
    raw = encode_job(data, job_id)
    await (redis.rpush if front else redis.lpush)(queue_key(queue, shards, key), raw)
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
