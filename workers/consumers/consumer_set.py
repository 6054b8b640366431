"""The stream and queue consumers of one child: built from its WorkSpec, run by its WorkerManager.

Every worker gets them, the default ``BaseWorker`` and custom ``BaseWorker`` subclasses alike
(a subclass's ``start()`` runs first). The worker id ``<host>:<pool>:<slot>:<token>`` names this
process's consumer in each group and its processing lists; a slot's next child has a new token, and
whatever the old one left is recovered by id: at once when the supervisor sees the death, or by the
membership sweep.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Callable
from typing import Any

from corral.contract import WorkSpec
from corral.workers import schedules
from corral.workers.consumers.base import HandlerRunner
from corral.workers.consumers.membership import Membership
from corral.workers.consumers.outages import TRANSIENT
from corral.workers.consumers.partitioned import PartitionedStreamConsumer
from corral.workers.consumers.queues import QueueConsumer
from corral.workers.consumers.scheduler import Scheduler
from corral.workers.consumers.streams import StreamConsumer
from corral.workers.durability import Durability
from corral.workers.jobs.keys import Keys
from corral.workers.lease import Gated, Lease, exit_fenced

MIN_RECOVERY_LOCK_MS = 2_000


def new_worker_id(identity: str) -> str:
    return f"{identity}:{secrets.token_hex(3)}"


class Consumers:
    def __init__(
        self,
        work: WorkSpec,
        *,
        redis: Any,
        pool: str,
        worker_id: str,
        log: Any,
        runner: HandlerRunner | None = None,
        on_fence: Callable[[str], None] = exit_fenced,
    ) -> None:
        self.work = work
        self.runner = runner or HandlerRunner()
        self.redis = redis
        self.keys = Keys(work.redis.key_prefix)
        self.pool = pool
        self.worker_id = worker_id
        self.log = log
        common = {"redis": redis, "keys": self.keys, "worker_id": worker_id, "log": log}
        queues = schedules.queue_specs(work, self.keys)  # with the queues of handler schedules
        self.queues = [QueueConsumer(spec, pool=pool, **common) for spec in queues]
        self.scheduler = Scheduler(work, redis=redis, keys=self.keys, log=log) if work.schedules else None
        # a WorkSpec built in code (not from corral.toml) may leave the group out: the pool's name
        streams = [dataclasses.replace(spec, group=spec.group or pool) for spec in work.streams]
        self.streams = [StreamConsumer(spec, **common) for spec in streams if not spec.partitions]
        self.partitioned = {
            spec.stream: PartitionedStreamConsumer(spec, **common) for spec in streams if spec.partitions
        }
        self.lease = Lease(
            work.redis,
            members=self.keys.members(pool),
            worker_id=worker_id,
            holding=self.holding,
            on_fence=on_fence,
        )
        self.membership = Membership(
            redis=redis,
            keys=self.keys,
            pool=pool,
            worker_id=worker_id,
            lease=self.lease,
            recover=self.recover,
        )
        self.consumers: list[Any] = [*self.queues, *self.streams, *self.partitioned.values()]
        self.stopping = asyncio.Event()  # the worker's, once given (watch_stopping)
        for unit in self.consumers:
            unit.runner = self.runner
            unit.durable = Durability(redis, work.redis)
            unit.may_take = self.may_take
        self.gated = [Gated(unit, self.lease) for unit in self.consumers]

    def give_handlers(self, worker: Any) -> None:
        """Handlers see the worker they run in as ``ctx.worker``."""
        for unit in self.consumers:
            unit.ctx.worker = worker
        self.watch_stopping(worker.stopping)

    def watch_stopping(self, stopping: asyncio.Event) -> None:
        """The worker's stop request: no refill once it is set, and handlers see it (``ctx.stopping``)."""
        self.stopping = stopping
        for unit in self.consumers:
            unit.ctx.stop_event = stopping

    def may_take(self) -> bool:
        """A round may take more while its lanes run: under a valid lease, and not stopping."""
        return self.lease.valid() and not self.stopping.is_set()

    def units(self) -> list[Any]:
        """What the WorkerManager runs: the sweep of the member set, each consumer behind the lease,
        the scheduler."""
        units: list[Any] = [self.membership, *self.gated]
        if self.scheduler is not None:
            units.append(self.scheduler)
        for unit in units:
            unit.transient_errors = TRANSIENT
        return units

    def holding(self) -> bool:
        """Whether this worker may hold work: a round under way (a take may be in flight), jobs or
        entries handled and not yet acknowledged, or a round cut short (its jobs are still ours)."""
        return any(gate.busy for gate in self.gated) or any(
            getattr(unit, "unacked", None) or getattr(unit, "interrupted", False) for unit in self.consumers
        )

    async def recover(self, dead_worker_id: str, force: bool = False, died: bool = True) -> dict[str, int]:
        """Give back a dead worker's in-flight work: its queue jobs to their queues, its pending
        stream entries to this consumer. Safe to run from several places at once (a lock per id
        keeps the membership sweeps from doing it twice). ``force`` (the supervisor saw the death)
        takes the lock over: its holder may be a helper that was killed halfway through, and
        waiting for its lock to expire would leave the work stranded meanwhile. The lock lives 2 x
        ``member_ttl_s`` (at least 2 s): a recovery cut short (its helper killed, or Redis failing
        over between the lock and its release) holds the work back no longer than that. Two
        recoveries overlapping after that are safe: each move is atomic, the second finds nothing."""
        if dead_worker_id == self.worker_id:
            return {}
        lock = self.keys.recovery_lock(self.pool, dead_worker_id)
        lock_ms = max(MIN_RECOVERY_LOCK_MS, int(2000 * self.work.redis.member_ttl_s))
        if not await self.redis.set(lock, self.worker_id, nx=not force, px=lock_ms):
            return {}
        try:
            moved = {"jobs": 0, "entries": 0}
            if self.queues:
                moved["jobs"] += await self.queues[0].recover(dead_worker_id, died)
            for stream in self.streams:
                moved["entries"] += await stream.recover(dead_worker_id)
            await self.redis.zrem(self.keys.members(self.pool), dead_worker_id)
        finally:
            await self.redis.delete(lock)
        if moved["jobs"] or moved["entries"]:
            self.log.warning(
                "recovered worker {}: {} jobs back to their queues, {} stream entries claimed",
                dead_worker_id,
                moved["jobs"],
                moved["entries"],
            )
        return moved

    async def assign(self, data: dict[str, Any]) -> list[int]:
        """``corral.partitions.assign`` {stream, shards}: start consuming these shards."""
        return await self.partitioned[str(data["stream"])].assign([int(s) for s in data["shards"]])

    async def revoke(self, data: dict[str, Any]) -> list[int]:
        """``corral.partitions.revoke``: stop consuming these shards (after the round in progress)."""
        return await self.partitioned[str(data["stream"])].revoke([int(s) for s in data["shards"]])

    async def join(self) -> None:
        """Take our lease in the member set before any consumer takes work, and keep it renewed
        from its own thread until we exit (if Redis is away now, no take is sent until it is taken)."""
        await self.lease.join()

    async def close(self) -> None:
        """After a clean stop: jobs a cut-short round left in our processing lists go back to their
        queues, and then we leave the member set. If that cannot be done (Redis away), the member
        entry stays: its lease runs out and a sweep recovers what we hold. While a sync handler still
        runs in a thread nothing is handed back and the lease is kept: the process's exit waits for
        the thread, and the supervisor has what we hold recovered then."""
        if self.runner.threads_busy:
            self.log.warning(
                "{} sync handlers still running: what we hold stays ours until they end",
                self.runner.threads_busy,
            )
            await self.redis.aclose()
            return
        try:
            for queue in self.queues:
                await queue.put_back()
            for queue in self.queues:
                await queue.release()
            await asyncio.to_thread(self.lease.stop)
            await self.membership.leave()
        except TRANSIENT as exc:
            self.log.warning("stopping with Redis away ({!r}): a sweep will recover what we hold", exc)
        await self.redis.aclose()
        self.runner.close()

    def stats(self) -> dict[str, Any]:
        queues = {q: vars(s).copy() for c in self.queues for q, s in c.stats.items()}
        streams = {c.spec.stream: c.stats() for c in self.streams}
        streams.update({name: c.stats() for name, c in self.partitioned.items()})
        failed = sum(s["failed"] for s in queues.values()) + sum(s["failed"] for s in streams.values())
        fired = self.scheduler.stats() if self.scheduler is not None else {}
        down_s = self.lease.down_s()  # the supervisor shows it in the slot's row (corral status)
        return {
            "queues": queues,
            "streams": streams,
            "consumer_failed": failed,
            "schedules": fired,
            "redis_down_s": None if down_s is None else round(down_s, 1),
        }
