"""Which queues a ``[[queues]]`` spec covers: its listed ``names``, the lists matching its
``pattern`` (SCAN, every ``refresh_s``; a queue whose list is empty but has jobs waiting to retry
counts too) and the members of its ``registry`` set; taken in turn, starting one further each
round, so that no queue starves the others.

A drained list disappears from Redis, so a SCAN no longer finds it; a queue once found is kept (and
so taken from every round, its next job picked up within ``block_s``) until it has been absent for
``FORGET_AFTER_S``. Only changes are logged: new queues at INFO, forgotten ones at DEBUG."""

from __future__ import annotations

import fnmatch
import time
from typing import Any

from corral.contract import QueueSpec
from corral.workers.keys import Keys

FORGET_AFTER_S = 600.0  # a discovered queue absent from Redis this long is dropped from the rounds


class QueueSet:
    def __init__(self, spec: QueueSpec, *, redis: Any, keys: Keys, log: Any) -> None:
        self.spec = spec
        self.redis = redis
        self.keys = keys
        self.log = log
        self.queues: list[str] = list(spec.names)
        self._last_seen: dict[str, float] = {}  # discovered queue -> when a scan last found it
        self._discovered_at = 0.0
        self._rr = 0

    async def refresh(self) -> set[str]:
        """Look again (at most every ``refresh_s``); returns the queues dropped from the rounds."""
        now = time.monotonic()
        if not (self.spec.pattern or self.spec.registry) or now - self._discovered_at < self.spec.refresh_s:
            return set()
        self._discovered_at = now
        found: set[str] = set()
        if self.spec.pattern:
            found |= await self._matching(self.spec.pattern)
        if self.spec.registry:
            found.update(member.decode() for member in await self.redis.smembers(self.spec.registry))
        new = found - set(self._last_seen)
        self._last_seen.update(dict.fromkeys(found, now))
        gone = {q for q, seen in self._last_seen.items() if now - seen >= FORGET_AFTER_S}
        for queue in gone:
            del self._last_seen[queue]
        if new:
            self.log.info("queues {}: now watching {}", self.spec.label, sorted(new))
        if gone:
            self.log.debug(
                "queues {}: {} gone for {:g}s, no longer watched",
                self.spec.label,
                sorted(gone),
                FORGET_AFTER_S,
            )
        self.queues = sorted(set(self.spec.names) | set(self._last_seen))
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
