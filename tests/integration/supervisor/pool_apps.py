"""Workers used by the pool integration tests (imported by the children, by import path)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from corral.workers import BaseWorker


class Echo(BaseWorker):
    """Answers the parent, and can ask the parent something back."""

    async def start(self) -> None:
        self.on(
            "whoami", lambda _d: {"slot": self.slot, "pid": os.getpid(), "identity": self.context.identity}
        )
        self.on("ask_parent", self.ask_parent)
        self.on("tell_parent", lambda data: self.send("told", data))
        await super().start()

    async def ask_parent(self, data: Any) -> Any:
        return await self.request("parent_echo", data, timeout_s=5)

    async def run(self) -> None:
        await self.stopping.wait()


class Counter(BaseWorker):
    """Processes an 'event' every few ms: for max_jobs recycling."""

    async def start(self) -> None:
        self.count = 0
        await super().start()

    async def run(self) -> None:
        while not self.stopping.is_set():
            self.count += 1
            await asyncio.sleep(0.002)

    def stats(self) -> dict[str, Any]:
        return {"processed": self.count, "failed": 0}


class IgnoresStop(BaseWorker):
    """Blocks its loop and ignores stop requests: only signals end it."""

    async def run(self) -> None:
        while True:
            time.sleep(0.05)


class SlowStart(BaseWorker):
    async def start(self) -> None:
        await asyncio.sleep(3600)


class StartFails(BaseWorker):
    async def start(self) -> None:
        raise RuntimeError("cannot connect to the thing")


class NotAWorker:
    pass


class RedisUser(BaseWorker):
    """A custom worker with no streams or queues that still uses Redis (``self.redis``)."""

    async def start(self) -> None:
        assert self.redis is not None, "a pool with [redis] gives its children a client"
        await self.redis.hset("test:redis_users", str(self.slot), self.context.worker_id)
        await super().start()

    async def run(self) -> None:
        await self.stopping.wait()
