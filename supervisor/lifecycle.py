"""How the supervisor ends a child's life: the stop ladder and the heartbeat watchdog."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import TYPE_CHECKING

from ipc import ChannelClosed, IPCError, RequestTimeout
from supervisor.connection import WorkerConnection
from supervisor.states import WorkerState

if TYPE_CHECKING:
    from supervisor.pool import WorkerPool

STOP_EVENT = "corral.stop"


def announce_killing(pool: WorkerPool, conn: WorkerConnection) -> None:
    """Emit ``killing`` once per child: when we start stopping it, or when it died by itself."""
    if not conn.killing_emitted:
        conn.killing_emitted = True
        pool.emit("killing", conn)


async def stop(
    pool: WorkerPool, conn: WorkerConnection, reason: str, graceful_timeout_s: float, fast: bool = False
) -> None:
    """The ladder, each rung with its named deadline: ask to stop (graceful: stop taking work and
    finish in-flight work; fast: hand in-flight work back) -> SIGTERM -> SIGKILL -> reaped.
    ``pool.skip_ahead()`` (a second TERM) cuts the current rung short."""
    if not conn.alive:
        return
    announce_killing(pool, conn)
    conn.stop_requested = True
    conn.set_state(WorkerState.STOPPING, reason)
    with contextlib.suppress(IPCError):  # a closed channel: the signals below still apply
        conn.send(STOP_EVENT, {"mode": "fast" if fast else "graceful"})
    settings = pool.settings
    rungs: list[tuple[str, float, int | None]] = [
        ("graceful_timeout_s", settings.kill_timeout_s if fast else graceful_timeout_s, None),
        ("kill_timeout_s", settings.kill_timeout_s, signal.SIGTERM),
        ("kill_timeout_s", settings.kill_timeout_s, signal.SIGKILL),
    ]
    previous, skipped = "", False  # the rung that just ended: its deadline passed, or it was skipped
    for deadline_name, timeout_s, sig in rungs:
        if sig is not None and conn.process.signal(sig):
            conn.log.warning(
                "slot {} pid {}: {} {}, sent {}",
                conn.slot,
                conn.pid,
                previous,
                "skipped (stop again)" if skipped else "passed",
                signal.Signals(sig).name,
            )
        escalate: asyncio.Future[object] = asyncio.ensure_future(pool._escalate.wait())
        waiting: list[asyncio.Future[object]] = [conn.process.exited, escalate]  # type: ignore[list-item]
        await asyncio.wait(waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        previous, skipped = deadline_name, escalate.done()
        escalate.cancel()
        if not conn.alive:
            return
    conn.log.error("slot {} pid {}: still not reaped after SIGKILL", conn.slot, conn.pid)


async def heartbeat(pool: WorkerPool, conn: WorkerConnection) -> None:
    """Ping the child's event loop; one that does not answer within ``heartbeat_timeout_s`` is hung:
    SIGABRT (faulthandler writes its traceback into the slot's log), then SIGKILL."""
    settings = pool.settings
    while conn.alive and not conn.stop_requested:
        await asyncio.sleep(settings.heartbeat_interval_s)
        if conn.stop_requested or not conn.alive:
            return
        try:
            await conn.channel.ping(settings.heartbeat_timeout_s)
        except ChannelClosed:
            return
        except RequestTimeout:
            if conn.stop_requested:
                return
            conn.fail_reason = f"no heartbeat answer within {settings.heartbeat_timeout_s:g}s"
            conn.log.error("slot {} pid {}: {}: SIGABRT", conn.slot, conn.pid, conn.fail_reason)
            conn.process.signal(signal.SIGABRT)
            if await conn.process.wait(settings.abort_timeout_s) is None:
                conn.process.signal(signal.SIGKILL)
            return
