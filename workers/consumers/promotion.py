"""Jobs whose time has come, back onto their queues: failed jobs waiting for their retry
(``<prefix>:{<queue>}:retry``) and delayed jobs (``<prefix>:{<queue>}:delayed``, pushed by
``enqueue(..., delay_s=...)`` or ``corral enqueue --delay/--at``), both sorted sets scored by the
unix time they are due. Whichever consumer of the queue is alive moves them, one Lua call per set
(``PROMOTE``: to the queue's taking end, so a due job is the next taken), at most 100 per call.

Every 0.1 s while a consumer has at most ``FAST_UP_TO`` queues (0.5 s for more, where the cost of
looking grows with the queues), and at the earliest due time seen: a consumer whose queues are empty
blocks (BLMOVE) no longer than until then, so a delayed job runs within tens of milliseconds of its
due time. The queue's length and delayed count are sampled for status in the same round trip. Due
times are the hosts' wall clocks: keep them synchronised (NTP).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from corral.workers.jobs.keys import Keys
from corral.workers.jobs.scripts import PROMOTE
from corral.workers.scripts import Script

FAST_UP_TO = 20
FAST_INTERVAL_S = 0.1
SLOW_INTERVAL_S = 0.5
PER_CALL = 100


@dataclass
class Sample:
    lag: int  # jobs waiting in the queue (LLEN)
    delayed: int  # jobs not due yet (ZCARD of the delayed set)


class Promoter:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.keys = keys
        self._promote = Script(redis, PROMOTE)
        self.redis = redis
        self._at = 0.0
        self.next_due_s: float | None = None  # the earliest retry or delayed job seen (unix s)

    def due(self, queues: list[str]) -> bool:
        if self.next_due_s is not None and self.next_due_s <= time.time():
            return True
        interval_s = FAST_INTERVAL_S if len(queues) <= FAST_UP_TO else SLOW_INTERVAL_S
        return time.monotonic() - self._at >= interval_s

    def block_s(self, block_s: float) -> float:
        """How long an idle consumer may block: ``block_s``, or less when a job falls due sooner."""
        if self.next_due_s is None:
            return block_s
        return min(block_s, max(0.01, self.next_due_s - time.time()))

    async def run(self, queues: list[str]) -> dict[str, Sample]:
        """Promote what is due on each queue; its length and delayed count after that."""
        self._at = time.monotonic()
        now_s = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                waiting = (self.keys.retry(queue), self.keys.delayed(queue))
                for key in waiting:
                    await self._promote(keys=[key, queue], args=[now_s, PER_CALL], client=pipe)
                pipe.llen(queue)
                pipe.zcard(self.keys.delayed(queue))
                for key in waiting:
                    pipe.zrange(key, 0, 0, withscores=True)
            replies = await pipe.execute()
        per = len(replies) // max(1, len(queues))
        firsts = [float(r[0][1]) for i in range(len(queues)) for r in replies[per * i + 4 : per * i + 6] if r]
        self.next_due_s = min(firsts, default=None)
        return {
            queue: Sample(int(replies[per * i + 2]), int(replies[per * i + 3]))
            for i, queue in enumerate(queues)
        }
