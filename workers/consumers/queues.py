"""Reliable job queues on Redis lists, with BRPOP semantics.

One round: take up to ``batch_size`` jobs with one Lua call per queue (RPOP count + LPUSH into this
worker's processing list, atomically), run the handler on each, then acknowledge the whole batch in
one round trip (one Lua call per queue: LREM of each job from the processing list). When every
queue is empty, block on one of them with BLMOVE. A job leaves the processing list only when
acknowledged, retried (sorted set, exponential backoff), requeued or dead-lettered, each atomically;
so a worker killed at any instant loses nothing: its processing lists are moved back by whoever
recovers it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from corral.contract import QueueSpec
from corral.workers.consumers.base import DeadLetter, HandlerUnit, error_summary
from corral.workers.consumers.discovery import QueueSet
from corral.workers.consumers.intake import Intake
from corral.workers.consumers.pauses import PAUSED_IDLE_S, PauseWatch
from corral.workers.consumers.promotion import Promoter
from corral.workers.consumers.queue_scripts import ACK, MOVE_ALL, TAKE
from corral.workers.consumers.settlement import Destination, Settlement
from corral.workers.keys import Keys
from corral.workers.messages import Job, Malformed, Reject, Requeue, decode_job, encode_job
from corral.workers.scripts import Script


@dataclass
class QueueStats:
    processed: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    requeued: int = 0
    in_flight: int = 0
    lag: int = 0  # jobs waiting in the queue (LLEN), sampled with the promotion of due jobs
    delayed: int = 0  # jobs enqueued with a delay, not due yet (sampled likewise)
    paused: bool = False  # an operator paused it (corral pause): not taken from
    throttled: int = 0  # takes its rate limit held back


class QueueConsumer(HandlerUnit):
    """A unit of work for the WorkerManager: one round takes, handles and acknowledges a batch."""

    def __init__(
        self, spec: QueueSpec, *, redis: Redis, keys: Keys, pool: str, worker_id: str, log: Any
    ) -> None:
        super().__init__(spec, redis=redis, keys=keys, worker_id=worker_id, log=log)
        self.spec: QueueSpec = spec
        self.name = f"queue:{spec.label}"
        self.idle_sleep_s = 0.0  # an empty round already blocked in BLMOVE
        self.pool = pool
        self.stats: dict[str, QueueStats] = {}
        self.succeeded = 0  # jobs handled without an error, over every queue
        self.held: set[str] = set()
        self.unacked: list[tuple[str, bytes]] = []  # handled, acknowledgement not yet confirmed
        self.interrupted = False  # the last round raised: our processing lists may hold strays
        self.discovery = QueueSet(spec, redis=redis, keys=keys, log=log)
        self.promoter = Promoter(redis, keys)
        self.intake = Intake(spec, self.discovery, PauseWatch(redis, keys))
        self._paused_shown: set[str] = set()
        self._take = Script(redis, TAKE)
        self._move_all = Script(redis, MOVE_ALL)
        self.deaths: dict[tuple[str, bytes], int] = {}  # taken jobs whose worker died before
        self._ack_jobs = Script(redis, ACK)
        self.settlement = Settlement(redis, keys, worker_id, spec.at_most_once)
        self.done_unique: list[Job] = []  # handled unique jobs: their locks go with the ack

    @property
    def queues(self) -> list[str]:
        return self.discovery.queues

    async def run(self) -> int:
        if self.interrupted:
            await self._put_back_held()
        try:
            return await self._round()
        except asyncio.CancelledError:  # a fast stop, wherever the round was (a take's reply may be
            await asyncio.shield(self._hand_back())  # lost): hand back what was not handled yet
            raise
        except Exception:
            self.interrupted = True
            raise

    async def put_back(self) -> None:
        """On the way out: what a cut-short round left behind goes back (see ``_put_back_held``)."""
        if self.interrupted or self.unacked:
            await self._put_back_held()

    async def _put_back_held(self) -> None:
        """After a round cut short (Redis went away mid-batch, a reply was lost): jobs it took and
        did not settle are still in our processing lists, and nobody recovers a live worker's lists.
        Acknowledge what was handled, put the rest back at the front of its queue."""
        await self._ack()
        for queue in self.held:
            moved = int(await self._move_all(keys=[self._processing(queue), queue]))
            if moved:
                self.log.warning("queue {}: {} jobs of an interrupted round put back", queue, moved)
        self.interrupted = False

    async def _round(self) -> int:
        if self.unacked:
            await self._ack()
        await self._refresh_queues()
        if not self.queues:
            await asyncio.sleep(min(self.spec.refresh_s, 1.0))
            return 0
        await self._promote_due()
        batch = await self._take_batch() if not self.spec.at_most_once else await self._pop_batch()
        if not batch:
            return 0
        before = self.succeeded
        suspects = any(item in self.deaths for item in batch)  # one at a time: a death is then attributable
        try:
            await self.run_round(
                batch, self._handle, 1 if suspects else self.spec.concurrency, collect=not suspects
            )
        finally:
            for queue, _ in batch:
                self._stats(queue).in_flight = 0
        await self._ack()
        return self.succeeded - before  # what the slot counts as processed, as the queue does

    async def _take_batch(self) -> list[tuple[str, bytes]]:
        queues = await self.intake.order()
        if self.intake.paused != self._paused_shown:  # status follows a pause at once
            self._paused_shown = set(self.intake.paused)
            for queue in self.queues:
                self._stats(queue).paused = queue in self._paused_shown
        if not queues:  # every queue paused: look again soon (the pause may be lifted)
            await asyncio.sleep(PAUSED_IDLE_S)
            return []
        if self.intake.ranked_order:  # by priority: the next queue only for what the batch lacks
            batch: list[tuple[str, bytes]] = []
            for queue in queues:
                batch += await self._take_from([queue], self.spec.batch_size - len(batch))
                if len(batch) >= self.spec.batch_size:
                    break
        else:
            batch = await self._take_from(queues, max(1, -(-self.spec.batch_size // len(queues))))
        if not batch and self.intake.limited:  # a blocking take would bypass the limit
            await asyncio.sleep(self.intake.idle_s(self.promoter.block_s(self.spec.block_s)))
        elif not batch:  # everything is empty: block on one queue (rotating) for up to block_s
            batch = await self._block(queues[0])
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

    async def _pop_batch(self) -> list[tuple[str, bytes]]:
        """at_most_once: plain RPOP/BRPOP, nothing kept in flight."""
        queues = await self.intake.order()
        if not queues:
            await asyncio.sleep(PAUSED_IDLE_S)
            return []
        jobs = await self.redis.rpop(queues[0], self.spec.batch_size)
        if jobs:
            return [(queues[0], raw) for raw in jobs]
        popped = await self.redis.brpop(queues, timeout=self.promoter.block_s(self.spec.block_s))
        return [(popped[0].decode(), popped[1])] if popped else []

    async def _handle(self, queue: str, raw: bytes) -> None:
        stats = self._stats(queue)
        try:
            job = decode_job(raw, queue)
        except Malformed as exc:
            self.log.warning("queue {}: undecodable job dead-lettered: {}", queue, exc)
            record = self._dead_letter(queue, None, f"malformed: {exc}").queue_record(raw)
            await self._settle(queue, raw, Destination.DEAD, record)
            stats.dead += 1
            return
        died = self.deaths.get((queue, raw), 0)
        if died:  # its workers died holding it (a kill, a crash, a hung loop): each was an attempt
            job = dataclasses.replace(job, attempt=job.attempt + died)
            if job.attempt > self.spec.max_attempts:
                await self._died_too_often(job, died)
                return
            # a suspect: marked while in hand, so that if we die now the death is counted against
            # it alone, not against the innocent jobs of our batch
            await self.redis.set(self.keys.in_hand(queue, self.worker_id), raw)
        try:
            await self.call(job)
        except Requeue as requeue:
            await self._settle(queue, raw, Destination.FRONT if requeue.front else Destination.BACK, raw)
            stats.requeued += 1
            return
        except Reject as reject:  # can never succeed: dead-lettered at once, no retries
            self.log.bind(job=job.id).warning("queue {}: job {} rejected: {}", queue, job.id, reject.reason)
            record = self._dead_letter(queue, job, f"rejected: {reject.reason}").queue_record(raw)
            await self._settle(queue, raw, Destination.DEAD, record, job=job)
            stats.dead += 1
            return
        except Exception as exc:  # the handler's failure, whatever it raised (its own Redis errors too)
            stats.failed += 1
            await self._fail(job, exc)
            return
        stats.processed += 1
        self.succeeded += 1
        if died:
            await self.redis.delete(self.keys.in_hand(queue, self.worker_id))
        if not self.spec.at_most_once:
            self.unacked.append((queue, raw))
        if job.unique is not None:
            self.done_unique.append(job)

    async def _fail(self, job: Job, exc: Exception) -> None:
        log = self.log.bind(job=job.id)
        if job.attempt >= self.spec.max_attempts:
            log.error(
                "queue {}: job {} failed {} times, dead-lettered: {!r}", job.queue, job.id, job.attempt, exc
            )
            record = self._dead_letter(job.queue, job, error_summary(exc)).queue_record(job.raw)
            await self._settle(job.queue, job.raw, Destination.DEAD, record, job=job)
            self._stats(job.queue).dead += 1
            return
        delay_s = min(self.spec.backoff_initial_s * 2 ** (job.attempt - 1), self.spec.backoff_max_s)
        log.warning(
            "queue {}: job {} attempt {} failed ({!r}); retry in {:.1f}s",
            job.queue,
            job.id,
            job.attempt,
            exc,
            delay_s,
        )
        retry = encode_job(
            job.data, job.id, job.attempt + 1, job.enqueued_at, unique=job.unique, trace=job.trace
        )
        await self._settle(job.queue, job.raw, Destination.RETRY, retry, due_s=time.time() + delay_s)
        self._stats(job.queue).retried += 1

    async def _settle(
        self,
        queue: str,
        raw: bytes,
        to: Destination,
        payload: bytes,
        *,
        due_s: float = 0.0,
        job: Job | None = None,
    ) -> None:
        self.deaths.pop((queue, raw), None)
        await self.settlement.move(queue, raw, to, payload, due_s=due_s, job=job)

    async def _died_too_often(self, job: Job, died: int) -> None:
        error = f"its worker died {died} times while handling it (killed, crashed or hung)"
        self.log.bind(job=job.id).error("queue {}: job {} dead-lettered: {}", job.queue, job.id, error)
        record = self._dead_letter(job.queue, job, error).queue_record(job.raw)
        await self._settle(job.queue, job.raw, Destination.DEAD, record, job=job)
        self._stats(job.queue).dead += 1

    def _dead_letter(self, queue: str, job: Job | None, error: str) -> DeadLetter:
        return DeadLetter(queue, job.id if job else None, job.attempt if job else None, error, self.worker_id)

    async def _ack(self) -> None:
        if not self.unacked or self.spec.at_most_once:
            self.unacked.clear()
            await self._release_unique(None)
            return
        # one LREM per job, but one command per queue: a pipeline of LREMs costs the client a command
        # packed and a reply parsed per job, about as much as the trivial job itself
        by_queue: dict[str, list[bytes]] = {}
        for queue, raw in self.unacked:
            by_queue.setdefault(queue, []).append(raw)
        if len(by_queue) == 1 and not self.durable.on:
            [(queue, raws)] = by_queue.items()
            removed = [
                await self._ack_jobs(keys=[self._processing(queue), self.keys.deaths(queue)], args=raws)
            ]
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for queue, raws in by_queue.items():
                    keys = [self._processing(queue), self.keys.deaths(queue)]
                    await self._ack_jobs(keys=keys, args=raws, client=pipe)
                removed = (await self.durable.execute(pipe, list(by_queue)))[: len(by_queue)]
        # after the ack, never a duplicate while it is held; not where a job was not ours to ack (a
        # peer recovered it from us while we stalled: it is queued again, its key must hold)
        whole = {
            queue for (queue, raws), n in zip(by_queue.items(), removed, strict=True) if int(n) == len(raws)
        }
        await self._release_unique(whole)
        for item in self.unacked:
            self.deaths.pop(item, None)
        self.unacked.clear()

    async def _release_unique(self, queues: set[str] | None) -> None:
        """The unique keys of the jobs just done (of ``queues`` only, when given)."""
        done = [job for job in self.done_unique if queues is None or job.queue in queues]
        self.done_unique.clear()
        if done:
            async with self.redis.pipeline(transaction=False) as pipe:
                for job in done:
                    await self.settlement.release(pipe, job.queue, job)
                await pipe.execute()

    async def _hand_back(self) -> None:
        """Fast stop: acknowledge what was handled, put everything else back at the front; unless a
        sync handler still runs (a thread cannot be cancelled): then what we hold stays ours, and is
        recovered once the process has exited (it waits for the thread)."""
        if self.runner.threads_busy:
            self.interrupted = True
            return
        try:
            await self._ack()
            for queue in self.held:
                await self._move_all(keys=[self._processing(queue), queue])
        except Exception:
            self.interrupted = True  # close() tries again, and keeps our lease if it cannot either
            self.log.exception("handing jobs back failed; they stay in the processing list for recovery")

    async def recover(self, dead_worker_id: str, died: bool = True) -> int:
        """Put a dead worker's in-flight jobs of every queue it held back at the front of them."""
        return await self.settlement.recover(self.pool, dead_worker_id, self.queues, self.durable, died)

    async def release(self) -> None:
        """A clean exit with nothing held: out of the holders of the queues we took from."""
        if self.held and not self.spec.at_most_once:
            async with self.redis.pipeline(transaction=False) as pipe:
                for queue in self.held:
                    pipe.srem(self.keys.holders(queue), self.worker_id)
                await pipe.execute()

    async def _promote_due(self) -> None:
        """Due retries and delayed jobs back onto their queues (see ``promotion.py``)."""
        if self.promoter.due(self.queues):
            for queue, sample in (await self.promoter.run(self.queues)).items():
                stats = self._stats(queue)
                stats.lag, stats.delayed = sample.lag, sample.delayed

    async def _refresh_queues(self) -> None:
        for gone in await self.discovery.refresh():  # its list is empty (Redis deleted it)
            self._stats(gone).lag = 0

    def _processing(self, queue: str) -> str:
        return self.keys.processing(queue, self.worker_id)

    def _stats(self, queue: str) -> QueueStats:
        stats = self.stats.get(queue)
        if stats is None:
            stats = self.stats[queue] = QueueStats()
        return stats
