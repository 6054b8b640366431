"""A slot of the pool: its current child (and a replacement being started), its failure history,
and what the pool wants of it (backoff, fatal, recycling)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from corral.contract import ExitCode
from corral.supervisor.connection import WorkerConnection
from corral.supervisor.states import SlotHistory, WorkerState


@dataclass
class Slot:
    index: int
    history: SlotHistory
    current: WorkerConnection | None = None
    next: WorkerConnection | None = None  # a replacement being started (reload, recycling)
    task: asyncio.Task[Any] | None = None  # the one launch/replace running for this slot
    backoff_until: float = 0.0
    fatal_reason: str | None = None
    recycle_reason: str | None = None
    last_failure: str | None = None  # how its last child died unasked (shown while in backoff)
    generation: int = 0
    processed_before: int = 0  # processed/failed by this slot's earlier children
    failed_before: int = 0
    draining: list[tuple[WorkerConnection, float]] = field(default_factory=list)  # old children, since

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    @property
    def state(self) -> WorkerState:
        if self.fatal_reason:
            return WorkerState.FATAL
        if self.current is not None:
            return self.current.state
        return WorkerState.BACKOFF if self.backoff_until else WorkerState.STOPPED

    def reason(self, now: float) -> str | None:
        """Why the slot is not simply running: fatal, being recycled, or waiting to restart."""
        if self.fatal_reason or self.recycle_reason:
            return self.fatal_reason or self.recycle_reason
        if self.current is None and self.backoff_until > now:
            return f"{self.last_failure}; restart in {self.backoff_until - now:.1f}s"
        return None

    def exited_unasked(self, conn: WorkerConnection, now: float) -> None:
        """Its current child exited without being asked to: a failure (backoff, or fatal), unless
        it fenced itself (a safety stop while Redis was away: replaced at once)."""
        if conn.process.returncode == ExitCode.FENCED:
            conn.log.warning(
                "slot {} pid {}: fenced itself (its lease lapsed); replaced", self.index, conn.pid
            )
            return
        self.last_failure = conn.exit_description()
        heals = conn.process.returncode != ExitCode.BOOT_IMPORT
        decision = self.history.record_failure(now, conn.uptime_s, heals)
        if decision.fatal:
            self.fatal_reason = f"{decision.reason}; last: {conn.exit_description()}"
            conn.log.error("slot {}: stopped -> fatal ({})", self.index, self.fatal_reason)
        else:
            self.backoff_until = now + decision.delay_s
            conn.log.warning(
                "slot {} pid {} died: {}; {}", self.index, conn.pid, conn.exit_description(), decision.reason
            )

    def start_draining(self, old: WorkerConnection, now: float, most: int) -> list[WorkerConnection]:
        """``old`` drains from ``now``; returns the oldest drainers past ``most`` (to hand back)."""
        self.children()  # forgets the drained
        self.draining.append((old, now))
        extra, self.draining = self.draining[:-most], self.draining[-most:]
        return [c for c, _ in extra]

    def children(self) -> list[WorkerConnection]:
        """The live children of this slot: the current one, a replacement being started, and old
        ones draining after a reload or recycle."""
        self.draining = [(c, since) for c, since in self.draining if c.alive]
        old = [c for c, _ in self.draining]
        return [c for c in (self.current, self.next, *old) if c is not None and c.alive]
