"""Who is alive: every worker process holds a lease in the pool's member set (a sorted set whose
score is the time its lease runs out, on the server's clock), renewed by its own thread
(``workers/lease.py``), and sweeps the set for members whose lease ran out — a dead host's workers,
or a dead process no supervisor reported — recovering their in-flight work.
Within one host the supervisor reports a death at once (``corral.recover``); the sweep is the
fallback that bounds recovery by ~2x ``member_ttl_s`` for other hosts sharing the Redis. A worker
whose own renewals failed lately (Redis away or stalled for it) does not sweep until they have
succeeded for a whole lease: its peers were likely cut off too, and get a full lease to renew.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from corral.workers.consumers.outages import REDIS_DOWN
from corral.workers.jobs.keys import Keys
from corral.workers.lease import Lease

Recover = Callable[..., Awaitable[dict[str, int]]]  # (member, died=...)


async def redis_now_ms(redis: Any) -> int:
    """The Redis server's clock, so that hosts with skewed clocks agree on lease expiry."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


class Membership:
    """A unit for the WorkerManager: recover members whose lease ran out."""

    name = "membership"

    def __init__(
        self, *, redis: Any, keys: Keys, pool: str, worker_id: str, lease: Lease, recover: Recover
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.pool = pool
        self.worker_id = worker_id
        self.lease = lease
        self.idle_sleep_s = lease.ttl_s / 3
        self.recover = recover
        self.members = keys.members(pool)
        self.failing: set[str] = set()  # members whose recovery failed (logged once)

    async def run(self) -> int:
        await self.lease.join()
        if self.lease.steady_s() < self.lease.ttl_s:
            return 0  # back from an outage (or new): our peers get a whole lease to renew first
        now_ms = await redis_now_ms(self.redis)
        expired = await self.redis.zrangebyscore(self.members, "-inf", now_ms, start=0, num=10)
        for member in expired:  # (our own is never expired: recover() would skip it anyway)
            await self._recover(member.decode())
        return 0

    async def _recover(self, member: str) -> None:
        """One expired member's recovery; its failure (other than Redis being away) is logged once
        and retried next round."""
        try:
            # no death counted: a lease that ran out proves none (a worker fenced after a stall, a
            # host cut off); the deaths that count are the kills and crashes a supervisor sees
            await self.recover(member, died=False)
        except REDIS_DOWN:
            raise
        except Exception as exc:
            if member not in self.failing:
                self.failing.add(member)
                logger.bind(member=member).exception("recovering {} failed: {!r}; will retry", member, exc)
            return
        self.failing.discard(member)

    async def leave(self) -> None:
        await self.redis.zrem(self.members, self.worker_id)
