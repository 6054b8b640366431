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
import base64
import fnmatch
import json
import time
import traceback
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from workers.keys import Keys
from workers.loader import HandlerUnit, call_handler, run_all
from workers.messages import Job, Malformed, Reject, Requeue, decode_job, encode_job
from workers.specs import QueueSpec
from workers.transient import REDIS_DOWN

TAKE = """
local jobs = redis.call('RPOP', KEYS[1], ARGV[1])
if jobs then redis.call('LPUSH', KEYS[2], unpack(jobs)) end
return jobs
"""
PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, job in ipairs(due) do
  redis.call('RPUSH', KEYS[2], job)
  redis.call('ZREM', KEYS[1], job)
end
return #due
"""
MOVE_ALL = """
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'RIGHT') do n = n + 1 end
return n
"""
ACK = """
local n = 0
for i = 1, #ARGV do n = n + redis.call('LREM', KEYS[1], -1, ARGV[i]) end
return n
"""
PROMOTE_INTERVAL_S = 0.5


@dataclass
class QueueStats:
    processed: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    requeued: int = 0
    in_flight: int = 0
    lag: int = 0  # jobs waiting in the queue (LLEN), sampled with the retry promotion


def error_summary(exc: BaseException, limit_chars: int = 2000) -> str:
    text = "".join(traceback.format_exception(exc, limit=-3))
    return text[-limit_chars:]


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
        self.held: set[str] = set()
        self.unacked: list[tuple[str, bytes]] = []  # handled, acknowledgement not yet confirmed
        self.interrupted = False  # the last round raised: our processing lists may hold strays
        self.queues: list[str] = list(spec.names)
        self._discovered_at = 0.0
        self._promoted_at = 0.0
        self._rr = 0
        self._take = redis.register_script(TAKE)
        self._promote = redis.register_script(PROMOTE)
        self._move_all = redis.register_script(MOVE_ALL)
        self._ack_jobs = redis.register_script(ACK)

    # -- one round ------------------------------------------------------------------------------

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
        try:
            await run_all(batch, self._handle, self.spec.concurrency)
        finally:
            for queue, _ in batch:
                self._stats(queue).in_flight = 0
        await self._ack()
        return len(batch)

    async def _take_batch(self) -> list[tuple[str, bytes]]:
        queues = self._rotated()
        per_queue = max(1, -(-self.spec.batch_size // len(queues)))
        for queue in queues:
            await self._hold(queue)
        async with self.redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                await self._take(keys=[queue, self._processing(queue)], args=[per_queue], client=pipe)
            results = await pipe.execute()
        batch = [(queue, raw) for queue, jobs in zip(queues, results, strict=True) for raw in (jobs or ())]
        if not batch:  # everything is empty: block on one queue (rotating) for up to block_s
            queue = queues[0]
            raw = await self.redis.blmove(queue, self._processing(queue), self.spec.block_s, "RIGHT", "LEFT")
            batch = [(queue, raw)] if raw is not None else []
        for queue, _ in batch:
            self._stats(queue).in_flight += 1
        return batch

    async def _pop_batch(self) -> list[tuple[str, bytes]]:
        """at_most_once: plain RPOP/BRPOP, nothing kept in flight."""
        queues = self._rotated()
        jobs = await self.redis.rpop(queues[0], self.spec.batch_size)
        if jobs:
            return [(queues[0], raw) for raw in jobs]
        popped = await self.redis.brpop(queues, timeout=self.spec.block_s)
        return [(popped[0].decode(), popped[1])] if popped else []

    # -- one job --------------------------------------------------------------------------------

    async def _handle(self, queue: str, raw: bytes) -> None:
        stats = self._stats(queue)
        try:
            job = decode_job(raw, queue)
        except Malformed as exc:
            self.log.warning("queue {}: undecodable job dead-lettered: {}", queue, exc)
            record = self._dead_record(raw, None, f"malformed: {exc}", queue)
            await self._settle(queue, raw, ("dead", record))
            stats.dead += 1
            return
        try:
            await call_handler(self.handler, self.takes_ctx, job, self.ctx)
        except Requeue as requeue:
            await self._settle(queue, raw, ("front" if requeue.front else "back", raw))
            stats.requeued += 1
            return
        except Reject as reject:  # can never succeed: dead-lettered at once, no retries
            self.log.bind(job=job.id).warning("queue {}: job {} rejected: {}", queue, job.id, reject.reason)
            await self._settle(
                queue, raw, ("dead", self._dead_record(raw, job, f"rejected: {reject.reason}", queue))
            )
            stats.dead += 1
            return
        except REDIS_DOWN:
            raise  # Redis is away: the round is interrupted and its jobs go back, not a failure
        except Exception as exc:
            stats.failed += 1
            await self._fail(job, exc)
            return
        stats.processed += 1
        if not self.spec.at_most_once:
            self.unacked.append((queue, raw))

    async def _fail(self, job: Job, exc: Exception) -> None:
        log = self.log.bind(job=job.id)
        if job.attempt >= self.spec.max_attempts:
            log.error(
                "queue {}: job {} failed {} times, dead-lettered: {!r}", job.queue, job.id, job.attempt, exc
            )
            record = self._dead_record(job.raw, job, error_summary(exc), job.queue)
            await self._settle(job.queue, job.raw, ("dead", record))
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
        retry = encode_job(job.data, job.id, job.attempt + 1, job.enqueued_at)
        await self._settle(job.queue, job.raw, ("retry", retry, time.time() + delay_s))
        self._stats(job.queue).retried += 1

    async def _settle(self, queue: str, raw: bytes, action: tuple[Any, ...]) -> None:
        """Move one job out of the processing list and somewhere else, atomically."""
        async with self.redis.pipeline(transaction=not self.spec.at_most_once) as pipe:
            kind = action[0]
            if kind == "dead":
                pipe.lpush(self.keys.dead(queue), action[1])
            elif kind == "retry":
                pipe.zadd(self.keys.retry(queue), {action[1]: action[2]})
            elif kind == "front":
                pipe.rpush(queue, action[1])
            else:
                pipe.lpush(queue, action[1])
            if not self.spec.at_most_once:
                pipe.lrem(self._processing(queue), -1, raw)
            await pipe.execute()

    def _dead_record(self, raw: bytes, job: Job | None, error: str, queue: str) -> bytes:
        record: dict[str, Any] = {
            "queue": queue,
            "id": job.id if job else None,
            "attempt": job.attempt if job else None,
            "error": error,
            "failed_at": time.time(),
            "worker": self.worker_id,
            "job": raw.decode("utf-8", "replace"),
        }
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:  # "job" above is lossy: keep the exact bytes too
            record["job_base64"] = base64.b64encode(raw).decode()
        return json.dumps(record).encode()

    # -- acknowledgement, recovery, housekeeping ---------------------------------------------------

    async def _ack(self) -> None:
        if not self.unacked or self.spec.at_most_once:
            self.unacked.clear()
            return
        # one LREM per job, but one command per queue: a pipeline of LREMs costs the client a command
        # packed and a reply parsed per job, about as much as the trivial job itself
        by_queue: dict[str, list[bytes]] = {}
        for queue, raw in self.unacked:
            by_queue.setdefault(queue, []).append(raw)
        if len(by_queue) == 1:
            [(queue, raws)] = by_queue.items()
            await self._ack_jobs(keys=[self._processing(queue)], args=raws)
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for queue, raws in by_queue.items():
                    await self._ack_jobs(keys=[self._processing(queue)], args=raws, client=pipe)
                await pipe.execute()
        self.unacked.clear()

    async def _hand_back(self) -> None:
        """Fast stop: acknowledge what was handled, put everything else back at the front."""
        try:
            await self._ack()
            for queue in self.held:
                await self._move_all(keys=[self._processing(queue), queue])
        except Exception:
            self.log.exception("handing jobs back failed; they stay in the processing list for recovery")

    async def recover(self, dead_worker_id: str) -> int:
        """Put a dead worker's in-flight jobs of every queue it held back at the front of them."""
        held_key = self.keys.held_queues(self.pool, dead_worker_id)
        moved = 0
        for raw_queue in await self.redis.smembers(held_key):
            queue = raw_queue.decode()
            moved += int(await self._move_all(keys=[self.keys.processing(queue, dead_worker_id), queue]))
        await self.redis.delete(held_key)
        return moved

    async def _promote_due(self) -> None:
        """Every PROMOTE_INTERVAL_S: due retries back onto their queues, and the queues' lengths."""
        now = time.monotonic()
        if now - self._promoted_at < PROMOTE_INTERVAL_S:
            return
        self._promoted_at = now
        async with self.redis.pipeline(transaction=False) as pipe:
            for queue in self.queues:
                await self._promote(
                    keys=[self.keys.retry(queue), queue], args=[time.time(), 100], client=pipe
                )
                pipe.llen(queue)
            replies = await pipe.execute()
        for queue, length in zip(self.queues, replies[1::2], strict=True):
            self._stats(queue).lag = int(length)

    async def _refresh_queues(self) -> None:
        now = time.monotonic()
        if (
            not self.spec.pattern and not self.spec.registry
        ) or now - self._discovered_at < self.spec.refresh_s:
            return
        self._discovered_at = now
        found = set(self.spec.names)
        if self.spec.pattern:
            own = f"{self.keys.prefix}:".encode()
            async for key in self.redis.scan_iter(match=self.spec.pattern, count=1000, _type="list"):
                if not key.startswith(own):
                    found.add(key.decode())
            # a queue whose list is empty (so gone from Redis) may still have jobs waiting to retry
            async for key in self.redis.scan_iter(match=self.keys.retry_pattern(), count=1000, _type="zset"):
                queue = self.keys.queue_of_retry(key.decode())
                if queue is not None and fnmatch.fnmatchcase(queue, self.spec.pattern):
                    found.add(queue)
        if self.spec.registry:
            found.update(member.decode() for member in await self.redis.smembers(self.spec.registry))
        if found != set(self.queues):
            self.log.info("queues {}: watching {}", self.spec.label, sorted(found))
            for gone in set(self.queues) - found:  # its list is empty (Redis deleted it)
                self._stats(gone).lag = 0
        self.queues = sorted(found)

    async def _hold(self, queue: str) -> None:
        if queue not in self.held:
            await self.redis.sadd(self.keys.held_queues(self.pool, self.worker_id), queue)
            self.held.add(queue)

    def _rotated(self) -> list[str]:
        self._rr = (self._rr + 1) % len(self.queues)
        return self.queues[self._rr :] + self.queues[: self._rr]

    def _processing(self, queue: str) -> str:
        return self.keys.processing(queue, self.worker_id)

    def _stats(self, queue: str) -> QueueStats:
        stats = self.stats.get(queue)
        if stats is None:
            stats = self.stats[queue] = QueueStats()
        return stats
