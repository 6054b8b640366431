"""WorkerManager: runs a child's registered units of work side by side until told to stop.

A unit of work is any object with a ``name`` and an ``async run() -> int`` that does one round of
work (read a batch, purge a batch, ...) and returns how many events it processed. The manager calls
each unit in its own task, again and again: at once while it keeps finding work, after
``idle_sleep_s`` (the unit's own attribute, or the manager's default) when it found none, and after
an exponential backoff when it raised. A unit may name ``transient_errors`` (a dependency being
down): those are logged once per outage, not per round. Setting ``stopping`` ends every loop after
its current round.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from loguru import logger


@runtime_checkable
class Runnable(Protocol):
    name: str

    async def run(self) -> int: ...


@dataclass
class RunnerStats:
    processed: int = 0
    rounds: int = 0
    errors: int = 0
    last_error: str | None = None


@dataclass
class WorkerManager:
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    idle_sleep_s: float = 0.1
    error_backoff_s: float = 0.5
    max_error_backoff_s: float = 30.0
    max_transient_backoff_s: float = 2.0  # an outage of a dependency: retry at least this often
    workers: list[Runnable] = field(default_factory=list)
    stats: dict[str, RunnerStats] = field(default_factory=dict)

    def register_worker(self, worker: Runnable) -> None:
        if not isinstance(worker, Runnable):
            raise TypeError(f"{worker!r} needs a 'name' and an 'async run() -> int'")
        if worker.name in self.stats:
            raise ValueError(f"a worker named {worker.name!r} is registered already")
        self.workers.append(worker)
        self.stats[worker.name] = RunnerStats()

    @property
    def processed(self) -> int:
        return sum(s.processed for s in self.stats.values())

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.stats.values())

    async def run(self, burst: bool = False) -> None:
        """Run every registered worker until ``stopping`` is set (or the task is cancelled). With none
        (a worker that only answers IPC requests), just wait until asked to stop. ``burst``: each
        worker's loop ends after its first round that found nothing (a queue or stream drained now:
        what a test runs to the end instead of polling for it)."""
        if not self.workers:
            if not burst:
                await self.stopping.wait()
            return
        async with asyncio.TaskGroup() as group:
            for worker in self.workers:
                group.create_task(self._loop(worker, burst), name=f"worker:{worker.name}")

    async def wait_stopping(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s``, waking early when stopping; True if stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout_s)
        return self.stopping.is_set()

    async def _loop(self, worker: Runnable, burst: bool = False) -> None:
        stats = self.stats[worker.name]
        log = logger.bind(unit=worker.name)
        backoff_s = self.error_backoff_s
        idle_s = float(getattr(worker, "idle_sleep_s", self.idle_sleep_s))
        transient: tuple[type[BaseException], ...] = getattr(worker, "transient_errors", ())
        outage = False
        while not self.stopping.is_set():
            try:
                count = await worker.run()
            except transient as exc:  # e.g. Redis went away: said once, retried with backoff
                if not outage:
                    log.warning("{}: {!r}; retrying with backoff until it is back", worker.name, exc)
                outage = True
                await self.wait_stopping(backoff_s)
                backoff_s = min(backoff_s * 2, self.max_transient_backoff_s)
                continue
            except Exception as exc:
                stats.errors += 1
                stats.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("{} failed; next round in {:.1f}s", worker.name, backoff_s)
                await self.wait_stopping(backoff_s)
                backoff_s = min(backoff_s * 2, self.max_error_backoff_s)
                continue
            if outage:
                log.info("{}: working again", worker.name)
                outage = False
            backoff_s = self.error_backoff_s
            stats.rounds += 1
            stats.processed += count
            if not count and burst:
                return
            if not count:
                await self.wait_stopping(idle_s)
