"""Where a queue job goes when it leaves a worker's processing list, each move one script: to the
dead letters, the retry set, or back onto its queue (``SETTLE``); a dead worker's lists back onto
their queues (``RECOVER``); the unique lock of a job that is done (acknowledged or given up on)
released (``RELEASE``); and a job in hand replaced in place by itself with a checkpoint
(``CHECKPOINT``, see ``checkpoints.py``)."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

from corral.workers.durability import Durability
from corral.workers.jobs.keys import Keys
from corral.workers.jobs.scripts import ACK, CHECKPOINT, RECOVER, RELEASE, SETTLE
from corral.workers.messages import Job
from corral.workers.scripts import Script


class Destination(Enum):
    """Where a settled job goes when it leaves the processing list (with one atomic move)."""

    DEAD = "dead"  # the queue's dead-letter list: a record (``DeadLetter``) beside the job
    RETRY = "retry"  # the retry set, scored by when it is due
    FRONT = "front"  # back on the queue, the next to be taken
    BACK = "back"  # back on the queue, the last to be taken


# destination -> (its key, how the job goes in: the SETTLE script's ARGV[3])
WHERE: dict[Destination, Callable[[Keys, str], tuple[str, str]]] = {
    Destination.DEAD: lambda keys, queue: (keys.dead(queue), "lpush"),
    Destination.RETRY: lambda keys, queue: (keys.retry(queue), "zadd"),
    Destination.FRONT: lambda _keys, queue: (queue, "rpush"),
    Destination.BACK: lambda _keys, queue: (queue, "lpush"),
}


class Settlement:
    def __init__(self, redis: Any, keys: Keys, worker_id: str, at_most_once: bool) -> None:
        self.redis = redis
        self.keys = keys
        self.worker_id = worker_id
        self.at_most_once = at_most_once
        self._settle = Script(redis, SETTLE)
        self._release = Script(redis, RELEASE)
        self._recover = Script(redis, RECOVER)
        self._ack = Script(redis, ACK)
        self._checkpoint = Script(redis, CHECKPOINT)

    async def checkpoint(
        self, queue: str, held: bytes, saved: bytes, publish: tuple[str, str | bytes] | None = None
    ) -> bool:
        """The job ``held`` in our processing list replaced by ``saved`` where it sits (and
        ``publish`` announced), atomically; False: it was not ours any more (refused)."""
        keys = [
            self.keys.processing(queue, self.worker_id),
            self.keys.deaths(queue),
            self.keys.in_hand(queue, self.worker_id),
        ]
        return bool(await self._checkpoint(keys=keys, args=[held, saved, *(publish or ())]))

    async def ack(self, handled: list[tuple[str, bytes]], durable: Durability) -> dict[str, int]:
        """``handled`` (queue, job) out of our processing lists: one LREM per job, but one command
        per queue (a pipeline of LREMs costs the client a command packed and a reply parsed per job,
        about as much as a trivial job); by queue, how many were not ours any more (refused)."""
        if not handled or self.at_most_once:
            return {}
        by_queue: dict[str, list[bytes]] = {}
        for queue, raw in handled:
            by_queue.setdefault(queue, []).append(raw)
        if len(by_queue) == 1 and not durable.on:
            [(queue, raws)] = by_queue.items()
            keys = [self.keys.processing(queue, self.worker_id), self.keys.deaths(queue)]
            removed = [await self._ack(keys=keys, args=raws)]
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for queue, raws in by_queue.items():
                    keys = [self.keys.processing(queue, self.worker_id), self.keys.deaths(queue)]
                    await self._ack(keys=keys, args=raws, client=pipe)
                removed = (await durable.execute(pipe, list(by_queue)))[: len(by_queue)]
        return {queue: len(raws) - int(n) for (queue, raws), n in zip(by_queue.items(), removed, strict=True)}

    async def move(
        self,
        queue: str,
        raw: bytes,
        to: Destination,
        payload: bytes,
        *,
        due_s: float = 0.0,
        job: Job | None = None,
    ) -> bool:
        """One job out of our processing list and to ``to``, atomically; given up on (``DEAD``), its
        unique lock goes in the same step. False: it was not ours any more (refused)."""
        key, how = WHERE[to](self.keys, queue)
        if self.at_most_once:  # no processing list: just where it goes (and a dead one's lock goes)
            await (
                self.redis.zadd(key, {payload: due_s})
                if how == "zadd"
                else getattr(self.redis, how)(key, payload)
            )
            if job is not None and job.unique is not None and to is Destination.DEAD:
                await self._release(keys=[self.keys.unique(queue, job.unique)], args=[job.id])
            return True
        unique = job.unique if job is not None and to is Destination.DEAD else None
        keys = [
            self.keys.processing(queue, self.worker_id),
            key,
            self.keys.deaths(queue),
            self.keys.in_hand(queue, self.worker_id),
            self.keys.unique(queue, unique or ""),
        ]
        args = [raw, payload, how, due_s, job.id if job and unique else ""]
        return bool(await self._settle(keys=keys, args=args))

    async def release(self, pipe: Any, queue: str, job: Job) -> None:
        """Into ``pipe`` (after the job's ack): its unique lock goes, if it still holds it."""
        if job.unique is not None:
            await self._release(keys=[self.keys.unique(queue, job.unique)], args=[job.id], client=pipe)

    async def recover(
        self, pool: str, dead_worker_id: str, known: list[str], durable: Durability, died: bool = True
    ) -> int:
        """A dead worker's in-flight jobs of every queue it held back at the front of them; ``died``:
        its death is counted against them (see ``RECOVER``)."""
        moved = 0
        for queue in await self._queues_held_by(pool, dead_worker_id, known):
            keys = [
                self.keys.processing(queue, dead_worker_id),
                queue,
                self.keys.deaths(queue),
                self.keys.in_hand(queue, dead_worker_id),
                self.keys.holders(queue),
            ]
            # with wait_replicas: on a replica before the member and its held-queues set go (they
            # live in another slot: a failover must not keep their removal and lose this move)
            async with self.redis.pipeline(transaction=False) as pipe:
                await self._recover(keys=keys, args=[dead_worker_id, int(died)], client=pipe)
                [count] = await durable.execute(pipe, [queue])
            moved += int(count)
        await self.redis.delete(self.keys.held_queues(pool, dead_worker_id))
        return moved

    async def _queues_held_by(self, pool: str, worker_id: str, known: list[str]) -> set[str]:
        """Its held-queues set, and the queues we know whose holders name it (the take registers
        there atomically: a held-queues set deleted by a peer's recovery does not lose it)."""
        queues = {q.decode() for q in await self.redis.smembers(self.keys.held_queues(pool, worker_id))}
        others = [q for q in known if q not in queues]
        if others:
            async with self.redis.pipeline(transaction=False) as pipe:
                for queue in others:
                    pipe.sismember(self.keys.holders(queue), worker_id)
                queues.update(q for q, member in zip(others, await pipe.execute(), strict=True) if member)
        return queues
