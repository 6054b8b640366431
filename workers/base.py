"""BaseWorker: what a child process runs. Subclass it and point ``pool.worker`` at the subclass.

    class Ticker(BaseWorker):
        async def start(self) -> None:
            self.on("ping", lambda data: "pong")          # a request handler for the parent
            self.manager.register_worker(MyUnit())        # periodic / consuming work
            await super().start()                         # announces ready to the supervisor

The child runtime calls ``start()``, then ``run()`` (by default: the ``WorkerManager`` until
``stopping`` is set), then ``stop()`` for cleanup. ``stopping`` is set when the supervisor asks the
child to stop (graceful stop, reload, scale down, recycling); work loops must honour it.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from corral.contract import ReadyInfo
from corral.ipc import DEFAULT_TIMEOUT_S, Channel, Handler
from corral.workers.manager import WorkerManager


@dataclass(frozen=True)
class WorkerContext:
    """Who this child is: its slot, its pool, its host, and the options the supervisor passed."""

    slot: int
    pool: str
    host: str
    options: dict[str, Any] = field(default_factory=dict)
    worker_id: str = ""  # <identity>:<token>: this process (its consumer name, its processing lists)
    config_dir: str = ""  # the folder of corral.toml: relative paths in [options] are taken from it
    state_dir: str = ""  # the pool's state dir (an app may keep files there)

    @property
    def identity(self) -> str:
        """``<host>:<pool>:<slot>``: stable across restarts of the slot (consumer names, keys)."""
        return f"{self.host}:{self.pool}:{self.slot}"


class BaseWorker:
    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.manager = WorkerManager(stopping=self.stopping)
        self._channel: Channel | None = None
        self._context: WorkerContext | None = None
        self.ready_announced = False
        self.log = logger
        self.redis: Any = None  # an asyncio Redis client when the pool declares streams or queues
        self.consumer_stats: Any = None  # set by the runtime: the consumers' counters

    def bind(self, context: WorkerContext, channel: Channel) -> None:
        """Called by the child runtime before ``start()``."""
        self._context = context
        self._channel = channel
        self.log = logger.bind(worker=context.slot)

    @property
    def context(self) -> WorkerContext:
        if self._context is None:
            raise RuntimeError("the worker is not bound to a child runtime yet")
        return self._context

    @property
    def channel(self) -> Channel:
        if self._channel is None:
            raise RuntimeError("the worker is not bound to a child runtime yet")
        return self._channel

    @property
    def slot(self) -> int:
        return self.context.slot

    async def start(self) -> None:
        """Set up, then ``await super().start()``: that announces ready to the supervisor."""
        if not self.ready_announced:
            self.ready_announced = True
            info = ReadyInfo(pid=os.getpid(), slot=self.slot, worker_id=self.context.worker_id)
            self.channel.announce_ready(info.to_wire())

    async def run(self) -> None:
        """The work loop: by default the registered units of work, until ``stopping`` is set."""
        await self.manager.run()

    async def stop(self) -> None:
        """Clean-up after the work loop ended (close connections, flush). Default: nothing."""

    def stats(self) -> dict[str, Any]:
        """Counters reported to the supervisor (``corral status``); extend with your own."""
        stats: dict[str, Any] = {"processed": self.manager.processed, "failed": self.manager.errors}
        if self.consumer_stats is not None:
            detail = self.consumer_stats()
            stats["failed"] += detail.pop("consumer_failed")
            stats.update(detail)
        return stats

    def on(self, event: str, handler: Handler) -> None:
        self.channel.on(event, handler)

    def off(self, event: str, handler: Handler) -> None:
        self.channel.off(event, handler)

    def send(self, event: str, data: Any = None) -> None:
        self.channel.send(event, data)

    async def request(self, event: str, data: Any = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
        return await self.channel.request(event, data, timeout_s)
