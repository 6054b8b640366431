"""What the dashboard knows: the supervisor's console (its status and control requests), one
asyncio Redis client for the job-control operations (``corral.workers.ops``, the CLI's), the
live members of other hosts, and the graphs' history. ``snapshot()`` is what a page shows, pushed
every second over server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from typing import Any

from redis.exceptions import RedisError

from corral.entrypoints.dashboard.history import History
from corral.supervisor.config import redacted
from corral.supervisor.web import Console
from corral.workers.jobs.keys import Keys
from corral.workers.ops.fleet import snapshot as fleet_snapshot
from corral.workers.ops.operations import Operations
from corral.workers.topology import connect

REDIS_EVERY_S = 1.0  # how often the Redis side (depths, dead letters, members) is read again


class Board:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.keys = Keys(self.config.work.redis.key_prefix)
        self.redis: Any = None
        self.ops: Operations | None = None
        self.history: History | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._redis_view: dict[str, Any] = {}
        self._redis_at = 0.0

    async def start(self) -> None:
        if not self.config.uses_redis or self.console.redis_url is None:
            return
        spec = dataclasses.replace(self.config.work.redis, url=self.console.redis_url, socket_timeout_s=5.0)
        self.redis = await connect(spec)
        self.ops = Operations(self.redis, self.config.work)
        host = self.host
        self.history = History(
            self.redis, self.keys, self.config.pool_name, host, self.config.dashboard.history_s
        )
        self._sampler = asyncio.create_task(self.history.run(self.status))

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self.redis is not None:
            await self.redis.aclose()

    @property
    def config(self) -> Any:
        """The pool's config as the supervisor runs it now (a reload replaces it)."""
        return self.console.config

    @property
    def host(self) -> str:
        return str(self.config.pool.host or socket.gethostname())  # as the pool names its workers

    def status(self) -> dict[str, Any]:
        return dict(self.console.status())

    async def snapshot(self) -> dict[str, Any]:
        """The supervisor's status (secrets redacted) and the Redis side (at most every second)."""
        status = self.status()
        if status.get("redis_url"):
            status["redis_url"] = redacted(str(status["redis_url"]))
        if time.monotonic() - self._redis_at >= REDIS_EVERY_S:
            self._redis_at = time.monotonic()
            self._redis_view = await self._read_redis(status)
        return {
            "status": status,
            **self._redis_view,
            "actions": not self.console.read_only,
            "token_set": bool(self.console.token),
            "host": self.host,
        }

    @staticmethod
    def _where(fleet: Any, keys: tuple[str, ...]) -> str:
        """The servers (a cluster's primaries) a queue's or stream's keys live on."""
        return ", ".join(sorted({fleet.placement.get(key, "") for key in keys}))

    async def _read_redis(self, status: dict[str, Any]) -> dict[str, Any]:
        if self.ops is not None and self.ops.work is not self.config.work:  # reloaded: new names
            self.ops = Operations(self.redis, self.config.work)
        if self.ops is None:
            return {"work": [], "members": {}, "schedules": [], "redis": "none"}
        try:
            discovered = list(status.get("work", {}).get("queues", {}))
            rows = await self.ops.overview(discovered)
            names = [key for row in rows for key in row.keys]
            fleet = await fleet_snapshot(self.redis, self.keys, self.config.pool_name, names)
            schedules = await self.ops.schedules()
            hosts = await self.history.hosts() if self.history is not None else {}
        except (RedisError, OSError) as exc:
            return {**self._redis_view, "redis": f"away: {type(exc).__name__}"}
        return {
            "work": [{**row.to_json(), "where": self._where(fleet, row.keys)} for row in rows],
            "hosts": hosts,
            "members": fleet.hosts,
            "topology": fleet.topology,
            "schedules": [row.to_json() for row in schedules],
            "redis": "ok",
        }
