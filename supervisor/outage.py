"""An unreachable Redis, said where the operator looks.

A child says in its stats how long its lease has not been renewed (``redis_down_s``); its
connection keeps since when, on the wall clock (``WorkerConnection.redis_down_since``). ``RedisWatch``
logs one WARNING when the first child of the pool says so (an outage begins: which Redis, since when)
and one when a child reaches it again while none is cut off; ``corral status`` and the dashboard show
such a ready slot as ``redis-down``, with ``unreachable()`` as its reason. The URL is always shown
with its password as ``***``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from loguru import logger

from corral.contract import Event
from corral.supervisor.config import redacted
from corral.supervisor.connection import WorkerConnection
from corral.supervisor.events import PoolEvent
from corral.supervisor.pool import WorkerPool

REDIS_DOWN = "redis-down"  # the state shown for a ready slot whose child cannot reach Redis


def redis_url(pool: WorkerPool) -> str | None:
    """The Redis the pool's children use (the embedded server's socket too), password as ``***``."""
    url = (pool.settings.work.get("redis") or {}).get("url")
    return redacted(str(url)) if url else None


def clock_time(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when))


def unreachable(since: float, url: str | None, now: float) -> str:
    """``Redis unreachable since 14:03:07, for 12s: redis://:***@db:6379/0``."""
    text = f"Redis unreachable since {clock_time(since)}, for {max(0.0, now - since):.0f}s"
    return f"{text}: {url}" if url else text


class RedisWatch:
    """Logs when the pool's children lose Redis and when they have it back: once per outage."""

    def __init__(self, pool: WorkerPool, wall: Callable[[], float] = time.time) -> None:
        self.pool = pool
        self.wall = wall
        self.since: float | None = None  # the outage under way: its start, as its children said
        pool.on(PoolEvent.SPAWNING, self._attach)

    def _attach(self, conn: WorkerConnection) -> None:
        conn.on(Event.STATS, lambda _data: self.update(conn))  # after the connection took them

    def update(self, conn: WorkerConnection) -> None:
        """``conn`` reported its stats: an outage begins with the first child cut off, and ends when
        a child reaches Redis while no live child is cut off."""
        url = redis_url(self.pool)
        if conn.redis_down_since is not None:
            if self.since is None:
                conn.log.warning(
                    "{} (slot {} pid {}: lease not renewed)",
                    unreachable(conn.redis_down_since, url, self.wall()),
                    conn.slot,
                    conn.pid,
                )
            self.since = min(self.since or conn.redis_down_since, conn.redis_down_since)
            return
        cut_off = any(c.redis_down_since is not None for c in self.pool.connections())
        if self.since is None or "redis_down_s" not in conn.stats or cut_off:
            return
        logger.warning(
            "Redis reachable again: {} (unreachable since {}, for {:.0f}s)",
            url,
            clock_time(self.since),
            self.wall() - self.since,
        )
        self.since = None
