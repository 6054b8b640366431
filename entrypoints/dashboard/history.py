"""The dashboard's graphs, kept in Redis: every ``SAMPLE_EVERY_S`` the rates of each queue and
stream (and the pool's processed and failed per second) are pushed onto this host's history list
(``keys.history``), trimmed to ``history_s``; a restarted supervisor's page shows the minutes before
it. Redis being away skips a sample, nothing more."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from loguru import logger
from redis.exceptions import RedisError

from corral.workers.jobs.keys import Keys

SAMPLE_EVERY_S = 2.0


def sample_of(status: dict[str, Any]) -> dict[str, Any]:
    """``{"t", "processed", "failed", "work": {"queue:<name>": [processed/s, failed/s]}}``."""
    work: dict[str, list[float]] = {}
    for kind in ("queues", "streams"):
        for name, row in (status.get("work", {}).get(kind) or {}).items():
            work[f"{kind[:-1]}:{name}"] = [
                round(float(row.get("processed_per_s", 0.0)), 2),
                round(float(row.get("failed_per_s", 0.0)), 2),
            ]
    return {
        "t": round(time.time(), 3),
        "processed": round(sum(v[0] for v in work.values()), 2),
        "failed": round(sum(v[1] for v in work.values()), 2),
        "work": work,
    }


HOST_FRESH_S = 3 * SAMPLE_EVERY_S  # another host's slots older than this: its supervisor is gone
SLOT_FIELDS = (
    "slot",
    "state",
    "pid",
    "uptime_s",
    "rss_bytes",
    "cpu_percent",
    "processed",
    "failed",
    "restarts",
)


class History:
    def __init__(self, redis: Any, keys: Keys, pool: str, host: str, history_s: float) -> None:
        self.redis = redis
        self.host = host
        self.key = keys.history(pool, host)
        self.hosts_key = keys.host_status(pool)
        self.size = max(2, int(history_s / SAMPLE_EVERY_S))
        self.history_s = history_s

    async def push(self, sample: dict[str, Any], status: dict[str, Any]) -> None:
        """The sample, and this host's slots for the other hosts' dashboards (two slots' keys)."""
        slots = [{name: row.get(name) for name in SLOT_FIELDS} for row in status.get("slots", [])]
        mine = {"t": sample["t"], "state": status.get("state"), "slots": slots}
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpush(self.key, json.dumps(sample, separators=(",", ":")))
            pipe.ltrim(self.key, 0, self.size - 1)
            pipe.expire(self.key, int(self.history_s * 2))
            pipe.hset(self.hosts_key, self.host, json.dumps(mine, separators=(",", ":")))
            await pipe.execute()

    async def hosts(self) -> dict[str, Any]:
        """The other hosts whose supervisor wrote its slots lately: host -> {t, state, slots}."""
        now = time.time()
        found = {}
        for host, raw in (await self.redis.hgetall(self.hosts_key)).items():
            row = json.loads(raw)
            if host.decode() != self.host and now - float(row["t"]) <= HOST_FRESH_S:
                found[host.decode()] = row
        return found

    async def read(self) -> list[dict[str, Any]]:
        """Oldest first."""
        return [json.loads(raw) for raw in reversed(await self.redis.lrange(self.key, 0, -1))]

    async def run(self, status: Callable[[], dict[str, Any]]) -> None:
        """Sample until cancelled."""
        while True:
            await asyncio.sleep(SAMPLE_EVERY_S)
            with contextlib.suppress(RedisError, OSError):
                now = status()
                await self.push(sample_of(now), now)
                continue
            logger.debug("dashboard: a history sample skipped (Redis away)")
