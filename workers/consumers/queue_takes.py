"""How a queue consumer takes jobs (a mixin of ``QueueConsumer``): one ``TAKE`` script per queue in
one round trip (in turn, by strict priority or by weights, under the queues' rate limits), a
blocking ``BLMOVE`` on one queue when every queue is empty, or plain ``RPOP`` for ``at_most_once``.
A take registers this worker among the queue's holders in the same step, so a recovery always finds
what it took; a job whose earlier holders died is noted (``deaths``) for its attempt count."""

from __future__ import annotations

import asyncio
from typing import Any

from corral.contract import QueueSpec
from corral.workers.consumers.intake import Intake
from corral.workers.consumers.pauses import PAUSED_IDLE_S
from corral.workers.consumers.promotion import Promoter
from corral.workers.durability import Durability
from corral.workers.jobs.keys import Keys
from corral.workers.scripts import Script


class QueueTakes:
    """The takes of ``QueueConsumer`` (its attributes, declared here for the type checker)."""

    spec: QueueSpec
    redis: Any
    keys: Keys
    pool: str
    worker_id: str
    intake: Intake
    promoter: Promoter
    durable: Durability
    held: set[str]
    deaths: dict[tuple[str, bytes], int]
    _paused_shown: set[str]
    _take: Script

    @property
    def queues(self) -> list[str]:
        raise NotImplementedError

    def _stats(self, queue: str) -> Any:
        raise NotImplementedError

    def _processing(self, queue: str) -> str:
        raise NotImplementedError

    async def _take_batch(self, want: int, *, block: bool) -> list[tuple[str, bytes]]:
        queues = await self.intake.order()
        if self.intake.paused != self._paused_shown:  # status follows a pause at once
            self._paused_shown = set(self.intake.paused)
            for queue in self.queues:
                self._stats(queue).paused = queue in self._paused_shown
        if not queues:  # every queue paused: look again soon (the pause may be lifted)
            await asyncio.sleep(PAUSED_IDLE_S if block else 0)
            return []
        if self.intake.ranked_order:  # by priority: the next queue only for what the batch lacks
            batch: list[tuple[str, bytes]] = []
            for queue in queues:
                batch += await self._take_from([queue], want - len(batch))
                if len(batch) >= want:
                    break
        else:
            batch = await self._take_from(queues, max(1, -(-want // len(queues))))
        if not batch and block:
            batch = await self._wait_for_work(queues[0])
        for queue, _ in batch:
            self._stats(queue).in_flight += 1
        return batch

    async def _take_from(self, queues: list[str], per_queue: int) -> list[tuple[str, bytes]]:
        """One round trip: up to ``per_queue`` jobs of each queue into our processing lists."""
        async with self.redis.pipeline(transaction=False) as pipe:
            # every round, first: a peer that recovered us while our loop stalled deleted the set,
            # and a processing list nobody knows of is never recovered
            pipe.sadd(self.keys.held_queues(self.pool, self.worker_id), *queues)
            self.held.update(queues)
            args = self.intake.take_args(per_queue, self.worker_id)
            for queue in queues:
                keys = [
                    queue,
                    self._processing(queue),
                    self.keys.deaths(queue),
                    self.keys.holders(queue),
                    self.keys.rate(queue),
                ]
                await self._take(keys=keys, args=args, client=pipe)
            results = await self.durable.execute(pipe, queues)
        return [
            (queue, raw)
            for queue, reply in zip(queues, results[1:], strict=True)
            for raw in self._taken(queue, reply)
        ]

    async def _wait_for_work(self, queue: str) -> list[tuple[str, bytes]]:
        """Every queue empty: block on one (rotating) for up to ``block_s``; under a rate limit,
        sleep instead (a blocking take would bypass the limit)."""
        if self.intake.limited:
            await asyncio.sleep(self.intake.idle_s(self.promoter.block_s(self.spec.block_s)))
            return []
        return await self._block(queue)

    async def _block(self, queue: str) -> list[tuple[str, bytes]]:
        args = (queue, self._processing(queue), self.promoter.block_s(self.spec.block_s), "RIGHT", "LEFT")
        raw = await self.durable.run(lambda client: client.blmove(*args), [queue])
        if raw is None:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:  # one round trip for both
            pipe.sadd(self.keys.holders(queue), self.worker_id)  # (the round's held-queues
            pipe.hget(self.keys.deaths(queue), raw)  # entry covers the moment in between)
            _, died = await pipe.execute()
        if died:
            self.deaths[queue, raw] = int(died)
        return [(queue, raw)]

    def _taken(self, queue: str, reply: Any) -> list[bytes]:
        """The jobs of one take; notes those whose worker died before (the reply's second part),
        and a take the rate limit held back (a negative number: microseconds to wait)."""
        if not reply:
            return []
        if isinstance(reply, int):
            self.intake.held_back(queue, -reply)
            self._stats(queue).throttled += 1
            return []
        if not isinstance(reply[0], list):
            return list(reply)
        jobs, deaths = reply
        for raw, died in zip(jobs, deaths, strict=True):
            if int(died):
                self.deaths[queue, raw] = int(died)
        return list(jobs)

    async def _pop_batch(self, want: int, *, block: bool) -> list[tuple[str, bytes]]:
        """at_most_once: plain RPOP/BRPOP, nothing kept in flight."""
        queues = await self.intake.order()
        if not queues:
            await asyncio.sleep(PAUSED_IDLE_S if block else 0)
            return []
        jobs = await self.redis.rpop(queues[0], want)
        if jobs or not block:
            return [(queues[0], raw) for raw in jobs or ()]
        popped = await self.redis.brpop(queues, timeout=self.promoter.block_s(self.spec.block_s))
        return [(popped[0].decode(), popped[1])] if popped else []
