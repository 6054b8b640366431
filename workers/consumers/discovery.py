"""Which queues a ``[[queues]]`` spec covers: its listed ``names``, the lists matching its
``pattern`` (SCAN, every ``refresh_s``; a queue whose list is empty but has jobs waiting to retry
counts too) and the members of its ``registry`` set; taken in turn, starting one further each
round, so that no queue starves the others."""

from __future__ import annotations

import fnmatch
import time
from typing import Any

from corral.contract import QueueSpec
from corral.workers.keys import Keys


class QueueSet:
    def __init__(self, spec: QueueSpec, *, redis: Any, keys: Keys, log: Any) -> None:
        self.spec = spec
        self.redis = redis
        self.keys = keys
        self.log = log
        self.queues: list[str] = list(spec.names)
        self._discovered_at = 0.0
        self._rr = 0

    async def refresh(self) -> set[str]:
        """Look again (at most every ``refresh_s``); returns the queues no longer found."""
        now = time.monotonic()
        if not (self.spec.pattern or self.spec.registry) or now - self._discovered_at < self.spec.refresh_s:
            return set()
        self._discovered_at = now
        found = set(self.spec.names)
        if self.spec.pattern:
            found |= await self._matching(self.spec.pattern)
        if self.spec.registry:
            found.update(member.decode() for member in await self.redis.smembers(self.spec.registry))
        gone = set(self.queues) - found
        if found != set(self.queues):
            self.log.info("queues {}: watching {}", self.spec.label, sorted(found))
        self.queues = sorted(found)
        return gone

    async def _matching(self, pattern: str) -> set[str]:
        found: set[str] = set()
        own = f"{self.keys.prefix}:".encode()
        async for key in self.redis.scan_iter(match=pattern, count=1000, _type="list"):
            if not key.startswith(own):
                found.add(key.decode())
        # a queue whose list is empty (so gone from Redis) may still have jobs waiting to retry
        async for key in self.redis.scan_iter(match=self.keys.retry_pattern(), count=1000, _type="zset"):
            queue = self.keys.queue_of_retry(key.decode())
            if queue is not None and fnmatch.fnmatchcase(queue, pattern):
                found.add(queue)
        return found

    def rotated(self) -> list[str]:
        """The queues, starting one further than last time."""
        self._rr = (self._rr + 1) % len(self.queues)
        return self.queues[self._rr :] + self.queues[: self._rr]
