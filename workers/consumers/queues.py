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
from corral.workers.consumers.checkpoints import InHand
from corral.workers.consumers.discovery import QueueSet
from corral.workers.consumers.intake import Intake
from corral.workers.consumers.pauses import PauseWatch
from corral.workers.consumers.promotion import Promoter
from corral.workers.consumers.queue_takes import QueueTakes
from corral.workers.consumers.settlement import Destination, Settlement
from corral.workers.jobs.keys import Keys
from corral.workers.jobs.scripts import MOVE_ALL, TAKE
from corral.workers.jobs.wire import Malformed, decode_job, encode_job
from corral.workers.messages import IN_HAND, Job, JobLost, Reject, Requeue
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
    refused: int = 0  # acks, settles and checkpoints of jobs no longer ours (recovered away meanwhile)


class QueueConsumer(QueueTakes, HandlerUnit):
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
        want = self.spec.batch_size if self.spec.batch else self.sizer.size(self.spec.concurrency)
        batch = await self._take_work(want, block=True)
        if not batch:
            return 0
        before = self.succeeded
        suspects = any(item in self.deaths for item in batch)  # one at a time: a death is then attributable
        refill = None if suspects or self.spec.batch else self._refill
        try:
            lanes = 1 if suspects else self.spec.concurrency
            await self.run_round(batch, self._handle, lanes, collect=not suspects, refill=refill)
        finally:
            for queue, _ in batch:
                self._stats(queue).in_flight = 0
        await self._ack()
        return self.succeeded - before  # what the slot counts as processed, as the queue does

    async def _take_work(self, want: int, *, block: bool) -> list[tuple[str, bytes]]:
        if self.spec.at_most_once:
            return await self._pop_batch(want, block=block)
        return await self._take_batch(want, block=block)

    async def _refill(self, free: int) -> list[tuple[str, bytes]]:
        """A lane freed mid-round: acknowledge what is done, take a free lane's worth (and the
        prefetch), without blocking; nothing once the worker stops or its lease is in doubt."""
        if not self.may_take():
            return []
        await self._ack()
        await self._refresh_queues()
        await self._promote_due()
        return await self._take_work(self.sizer.size(free), block=False)

    async def _handle(self, queue: str, raw: bytes) -> None:
        try:
            await self._handle_job(queue, raw)
        finally:
            stats = self._stats(queue)
            stats.in_flight = max(0, stats.in_flight - 1)

    async def _handle_job(self, queue: str, raw: bytes) -> None:
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
        held = InHand(queue, raw, job, self.settlement, asyncio.get_running_loop())
        try:
            await self.call_in_hand(job, held)
        except Exception as exc:  # the handler's failure, whatever it raised (its own Redis errors too)
            await self._settle_outcome(held.latest(job), exc)
            return
        finally:
            if held.raw is not raw:
                self.deaths.pop((queue, raw), None)
        stats.processed += 1
        self.succeeded += 1
        if died:
            await self.redis.delete(self.keys.in_hand(queue, self.worker_id))
        if not self.spec.at_most_once:
            self.unacked.append((queue, held.raw))
        if job.unique is not None:
            self.done_unique.append(job)

    async def call_in_hand(self, job: Job, held: InHand) -> None:
        """The handler on ``job``, able to save its place (``ctx.checkpoint``) unless it is a batch's."""
        if self.spec.batch or self.spec.at_most_once:
            await self.call(job)
            return
        token = IN_HAND.set(held)
        try:
            await self.call(job)
        finally:
            IN_HAND.reset(token)

    async def _settle_outcome(self, job: Job, exc: Exception) -> None:
        """A handler that raised: ``Requeue`` puts the job back, ``Reject`` dead-letters it, anything
        else is a failed attempt (retried, then dead-lettered)."""
        queue, stats = job.queue, self._stats(job.queue)
        if isinstance(exc, JobLost):  # recovered away from us: its next holder goes on with it
            self.log.bind(job=job.id).warning("queue {}: {}", queue, exc)
            stats.refused += 1
        elif isinstance(exc, Requeue):
            await self._settle(queue, job.raw, Destination.FRONT if exc.front else Destination.BACK, job.raw)
            stats.requeued += 1
        elif isinstance(exc, Reject):  # can never succeed: dead-lettered at once, no retries
            self.log.bind(job=job.id).warning("queue {}: job {} rejected: {}", queue, job.id, exc.reason)
            record = self._dead_letter(queue, job, f"rejected: {exc.reason}").queue_record(job.raw)
            await self._settle(queue, job.raw, Destination.DEAD, record, job=job)
            stats.dead += 1
        else:
            stats.failed += 1
            await self._fail(job, exc)

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
            job.data,
            job.id,
            job.attempt + 1,
            job.enqueued_at,
            unique=job.unique,
            trace=job.trace,
            checkpoint=job.checkpoint,
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
        if not await self.settlement.move(queue, raw, to, payload, due_s=due_s, job=job):
            self._stats(queue).refused += 1

    async def _died_too_often(self, job: Job, died: int) -> None:
        error = f"its worker died {died} times while handling it (killed, crashed or hung)"
        self.log.bind(job=job.id).error("queue {}: job {} dead-lettered: {}", job.queue, job.id, error)
        record = self._dead_letter(job.queue, job, error).queue_record(job.raw)
        await self._settle(job.queue, job.raw, Destination.DEAD, record, job=job)
        self._stats(job.queue).dead += 1

    def _dead_letter(self, queue: str, job: Job | None, error: str) -> DeadLetter:
        return DeadLetter(queue, job.id if job else None, job.attempt if job else None, error, self.worker_id)

    async def _ack(self) -> None:
        """Acknowledge what was handled so far (lanes may go on handling meanwhile: what they add
        waits for the next ack; if this one fails, what it held is tried again)."""
        unacked, self.unacked = self.unacked, []
        unique, self.done_unique = self.done_unique, []
        try:
            removed = await self.settlement.ack(unacked, self.durable)
        except BaseException:
            self.unacked[:0], self.done_unique[:0] = unacked, unique
            raise
        for item in unacked:
            self.deaths.pop(item, None)
        # after the ack, never a duplicate while it is held; not where a job was not ours to ack (a
        # peer recovered it from us while we stalled: it is queued again, its key must hold)
        refused = {queue: count for queue, count in removed.items() if count}
        for queue, count in refused.items():
            self._stats(queue).refused += count
        await self._release_unique([job for job in unique if job.queue not in refused])

    async def _release_unique(self, done: list[Job]) -> None:
        """The unique keys of the jobs just done."""
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
