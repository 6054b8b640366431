"""A slot of the pool: its current child (and a replacement being started), its failure history,
and what the pool wants of it (backoff, fatal, recycling)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

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

    def children(self) -> list[WorkerConnection]:
        """The live children of this slot (the current one and a replacement being started)."""
        return [c for c in (self.current, self.next) if c is not None and c.alive]
