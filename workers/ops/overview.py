"""Each declared queue and stream as an operator sees it, read from Redis in one pipeline: how many
wait, retry, are delayed, are dead, whether it is paused, its rate limit and shards."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from corral.workers.jobs.keys import Keys
from corral.workers.ops.catalog import Kind, Target


@dataclass(frozen=True)
class WorkRow:
    kind: str  # "queue" or "stream"
    name: str
    shards: int  # lists of a sharded queue, partitions of a stream (1: one key)
    depth: int  # jobs waiting (LLEN), or entries in the stream (XLEN)
    retrying: int  # queue jobs waiting for their retry
    delayed: int  # queue jobs enqueued with a delay, not due yet
    dead: int  # dead letters
    paused: bool
    rate_limit: str | None
    keys: tuple[str, ...] = field(default=(), repr=False)  # its lists or stream keys

    def to_json(self) -> dict[str, Any]:
        return {name: value for name, value in asdict(self).items() if name != "keys"}


def _queue(pipe: Any, keys: Keys, key: str) -> int:
    pipe.llen(key)
    pipe.zcard(keys.retry(key))
    pipe.zcard(keys.delayed(key))
    pipe.llen(keys.dead(key))
    pipe.exists(keys.paused(key))
    return 5


def _stream(pipe: Any, keys: Keys, key: str) -> int:
    pipe.xlen(key)
    pipe.xlen(keys.stream_dead(key))
    pipe.exists(keys.paused(key))
    return 3


async def overview(redis: Any, keys: Keys, targets: list[Target]) -> list[WorkRow]:
    async with redis.pipeline(transaction=False) as pipe:
        counts = [
            [(_queue if target.kind is Kind.QUEUE else _stream)(pipe, keys, key) for key in target.keys]
            for target in targets
        ]
        replies = iter(await pipe.execute())
    rows = []
    for target, sizes in zip(targets, counts, strict=True):
        per_key = [[int(next(replies)) for _ in range(size)] for size in sizes]
        totals = [sum(column) for column in zip(*per_key, strict=True)]
        if target.kind is Kind.QUEUE:
            depth, retrying, delayed, dead, paused = totals
        else:
            (depth, dead, paused), retrying, delayed = totals, 0, 0
        limit = target.queue.rate_limit if target.queue is not None else None
        rows.append(
            WorkRow(
                target.kind.value,
                target.name,
                len(target.keys),
                depth,
                retrying,
                delayed,
                dead,
                paused > 0,
                limit,
                target.keys,
            )
        )
    return rows
