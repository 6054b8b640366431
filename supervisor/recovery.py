"""Giving back a dead child's in-flight work as soon as the supervisor sees the death.

The supervisor does not talk to Redis itself: it asks a ready child (``corral.recover``) to move
the dead worker's processing lists back to their queues and claim its pending stream entries.
A request that cannot be served yet (no child ready) waits for the next ``ready``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from loguru import logger

from corral.contract import Event, ExitCode, RecoverRequest
from corral.ipc import IPCError
from corral.supervisor.connection import WorkerConnection
from corral.supervisor.events import PoolEvent
from corral.supervisor.pool import WorkerPool
from corral.supervisor.states import WorkerState

RECOVER_TIMEOUT_S = 30.0


class Recovery:
    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        # worker id -> when its exit was seen (monotonic), and whether it died (killed, crashed)
        self.pending: dict[str, tuple[float, bool]] = {}
        self.last_latency_s: float | None = None
        self._running: asyncio.Task[None] | None = None
        pool.on(PoolEvent.EXIT, self._on_exit)
        pool.on(PoolEvent.READY, lambda _conn: self._kick())

    def _on_exit(self, conn: WorkerConnection) -> None:
        if conn.info is not None:
            self.pending[conn.info.worker_id] = (time.monotonic(), died(conn))
            self._kick()

    def _kick(self) -> None:
        if self.pending and (self._running is None or self._running.done()):
            self._running = self.pool.spawn_task(self._drain())

    async def _drain(self) -> None:
        while self.pending:
            helper = next((c for c in self.pool.connections() if c.state is WorkerState.READY), None)
            if helper is None:
                return  # the next `ready` kicks us again
            worker_id, (died_at, was_death) = next(iter(self.pending.items()))
            try:
                request = RecoverRequest(worker_id=worker_id, died=was_death)
                moved: Any = await helper.request(Event.RECOVER, request, RECOVER_TIMEOUT_S)
            except IPCError as exc:
                logger.warning(
                    "recovery of {} via slot {} failed: {}; will retry", worker_id, helper.slot, exc
                )
                await asyncio.sleep(0.2)
                continue
            self.pending.pop(worker_id, None)
            self.last_latency_s = time.monotonic() - died_at
            logger.info(
                "recovered {} via slot {} in {:.0f} ms: {}",
                worker_id,
                helper.slot,
                self.last_latency_s * 1000,
                moved or "nothing in flight",
            )


def died(conn: WorkerConnection) -> bool:
    """Whether an exit counts as a death against the jobs the child held: killed or crashed, not a
    clean exit, a fence, or the stop ladder's kill of a child we asked to stop."""
    code = conn.process.returncode
    if code in (ExitCode.OK, ExitCode.FENCED, ExitCode.ORPHANED):
        return False
    return not conn.stop_requested
