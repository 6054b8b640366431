"""A small example worker that does visible periodic work (until the Redis-backed apps arrive).

Each child counts "ticks" at ``options.tick_interval_s`` and answers the parent's ``echo`` and
``whoami`` requests. Run it: ``corral run -c entrypoints/ticker/corral.toml``.
"""

from __future__ import annotations

import os
from typing import Any

from corral.workers import BaseWorker


class Tick:
    """A unit of work for the WorkerManager: one tick per round, then idle for the interval."""

    name = "tick"

    def __init__(self, worker: BaseWorker, interval_s: float) -> None:
        self.worker = worker
        self.idle_sleep_s = interval_s
        self.count = 0

    async def run(self) -> int:
        self.count += 1
        if self.count % 10 == 1:
            self.worker.log.info("slot {} tick {}", self.worker.slot, self.count)
        return 0  # nothing "processed" beyond the tick: sleep the interval before the next one


class TickerWorker(BaseWorker):
    async def start(self) -> None:
        interval_s = float(self.context.options.get("tick_interval_s", 1.0))
        self.ticks = Tick(self, interval_s)
        self.manager.register_worker(self.ticks)
        self.on("echo", lambda data: data)
        self.on("whoami", self.whoami)
        await super().start()

    def whoami(self, _data: Any) -> dict[str, Any]:
        return {"slot": self.slot, "pid": os.getpid(), "identity": self.context.identity}

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "processed": self.ticks.count}
