"""Which queue or stream keys an operator paused (``corral pause NAME``): a key per list or stream
key, in its own slot (``keys.paused``), read by every consumer of every host at most every
``CHECK_S``, so a pause takes effect everywhere within a second. A paused key is not taken from
(nor read) at all; what a consumer holds already is finished and acknowledged as usual."""

from __future__ import annotations

import time
from typing import Any

from corral.workers.jobs.keys import Keys

CHECK_S = 0.5  # how stale a consumer's view of the pauses may be
PAUSED_IDLE_S = 0.5  # a consumer whose every key is paused looks again this often


class PauseWatch:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.paused: set[str] = set()
        self._known: frozenset[str] = frozenset()
        self._at = 0.0

    async def of(self, names: list[str]) -> set[str]:
        """The paused ones among ``names`` (asking Redis when the last look is older than CHECK_S)."""
        wanted = frozenset(names)
        if time.monotonic() - self._at >= CHECK_S or not wanted <= self._known:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.exists(self.keys.paused(name))
                replies = await pipe.execute()
            self.paused = {name for name, exists in zip(names, replies, strict=True) if exists}
            self._known, self._at = wanted, time.monotonic()
        return self.paused & wanted
