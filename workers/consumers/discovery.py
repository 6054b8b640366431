"""Which queues a ``[[queues]]`` spec covers: its listed ``names``, the lists matching its
``pattern`` (SCAN, every ``refresh_s``; a queue whose list is empty but has jobs waiting to retry
counts too) and the members of its ``registry`` set; taken in turn, starting one further each
round, so that no queue starves the others.

A drained list disappears from Redis, so a SCAN no longer finds it; a queue once found is kept (and
so taken from every round, its next job picked up within ``block_s``) until it has been absent for
``FORGET_AFTER_REFRESHES`` refreshes (at least a minute). Retry sets are scanned for at the first
refresh and every ``RETRY_SCAN_EVERY``-th after it (a queue with retries pending is known already:
its retry set was made by a consumer that had it). Only changes are logged: new queues at INFO,
forgotten ones at DEBUG."""

from __future__ import annotations

import fnmatch
import time
from typing import Any

from corral.contract import QueueSpec
from corral.workers.jobs.keys import Keys, queue_shards

FORGET_AFTER_REFRESHES = 12  # a discovered queue absent this many refreshes (>= 60 s) is dropped
RETRY_SCAN_EVERY = 10


class QueueSet:
    def __init__(self, spec: QueueSpec, *, redis: Any, keys: Keys, log: Any) -> None:
        self.spec = spec
        self.redis = redis
        self.keys = keys
        self.log = log
        self.named = [shard for name in spec.names for shard in queue_shards(name, spec.shards)]
        self.queues: list[str] = list(self.named)
        self._last_seen: dict[str, float] = {}  # discovered queue -> when a scan last found it
        self._discovered_at = 0.0
        self._refreshes = 0
        self._rr = 0
        self.forget_after_s = max(60.0, FORGET_AFTER_REFRESHES * spec.refresh_s)

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
        gone = {q for q, seen in self._last_seen.items() if now - seen >= self.forget_after_s}
        for queue in gone:
            del self._last_seen[queue]
        if new:
            self.log.info("queues {}: now watching {}", self.spec.label, sorted(new))
        if gone:
            self.log.debug(
                "queues {}: {} gone for {:g}s, no longer watched",
                self.spec.label,
                sorted(gone),
                self.forget_after_s,
            )
        self.queues = sorted(set(self.named) | set(self._last_seen))
        return gone

    async def _matching(self, pattern: str) -> set[str]:
        found: set[str] = set()
        own = f"{self.keys.prefix}:".encode()
        async for key in self.redis.scan_iter(match=pattern, count=1000, _type="list"):
            if not key.startswith(own):
                found.add(key.decode())
        self._refreshes += 1
        if (self._refreshes - 1) % RETRY_SCAN_EVERY:
            return found
        # a queue whose list is empty (so gone from Redis) may still have jobs waiting: to retry, or
        # enqueued with a delay
        for kind in ("retry", "delayed"):
            async for key in self.redis.scan_iter(
                match=self.keys.retry_pattern(kind), count=1000, _type="zset"
            ):
                queue = self.keys.queue_of_retry(key.decode(), kind)
                if queue is not None and fnmatch.fnmatchcase(queue, pattern):
                    found.add(queue)
        return found

    def rotated(self) -> list[str]:
        """The queues, starting one further than last time."""
        self._rr = (self._rr + 1) % len(self.queues)
        return self.queues[self._rr :] + self.queues[: self._rr]
