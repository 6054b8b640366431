"""How the supervisor ends a child's life: the stop ladder and the heartbeat watchdog.

Both take what they need explicitly (the connection, the deadlines, the pool's ``Escalation``), so
they know nothing of the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass

from corral.contract import Event, StopMode
from corral.ipc import ChannelClosed, IPCError, RequestTimeout
from corral.supervisor.connection import WorkerConnection
from corral.supervisor.states import WorkerState


class Escalation:
    """Shared by every stop ladder of a pool: ``skip_ahead()`` (a second TERM) ends the rung each
    ladder is on now."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def skip_ahead(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self) -> None:
        await self._event.wait()


@dataclass(frozen=True)
class StopDeadlines:
    graceful_timeout_s: float  # stop asked -> SIGTERM
    kill_timeout_s: float  # SIGTERM -> SIGKILL, and SIGKILL -> give up waiting


async def stop_child(
    conn: WorkerConnection, reason: str, deadlines: StopDeadlines, escalation: Escalation, mode: StopMode
) -> None:
    """The ladder, each rung with its named deadline: ask to stop (graceful: stop taking work and
    finish in-flight work; fast: hand in-flight work back) -> SIGTERM -> SIGKILL -> reaped."""
    if not conn.alive:
        return
    conn.stop_requested = True
    conn.set_state(WorkerState.STOPPING, reason)
    with contextlib.suppress(IPCError):  # a closed channel: the signals below still apply
        conn.send(Event.STOP, {"mode": mode.value})
    first_s = deadlines.kill_timeout_s if mode is StopMode.FAST else deadlines.graceful_timeout_s
    rungs: list[tuple[str, float, signal.Signals | None]] = [
        ("graceful_timeout_s", first_s, None),
        ("kill_timeout_s", deadlines.kill_timeout_s, signal.SIGTERM),
        ("kill_timeout_s", deadlines.kill_timeout_s, signal.SIGKILL),
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
                sig.name,
            )
        escalate: asyncio.Future[None] = asyncio.ensure_future(escalation.wait())
        waiting: list[asyncio.Future[object]] = [conn.process.exited, escalate]  # type: ignore[list-item]
        await asyncio.wait(waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        previous, skipped = deadline_name, escalate.done()
        escalate.cancel()
        if not conn.alive:
            return
    conn.log.error("slot {} pid {}: still not reaped after SIGKILL", conn.slot, conn.pid)


@dataclass(frozen=True)
class HeartbeatSettings:
    interval_s: float
    timeout_s: float  # a loop that does not answer a ping this long is hung
    abort_timeout_s: float  # SIGABRT (traceback) -> SIGKILL


async def heartbeat(conn: WorkerConnection, settings: HeartbeatSettings) -> None:
    """Ping the child's event loop; one that does not answer within ``timeout_s`` is hung:
    SIGABRT (faulthandler writes its traceback into the slot's log), then SIGKILL."""
    while conn.alive and not conn.stop_requested:
        await asyncio.sleep(settings.interval_s)
        if conn.stop_requested or not conn.alive:
            return
        try:
            await conn.channel.ping(settings.timeout_s)
        except ChannelClosed:
            return
        except RequestTimeout:
            if conn.stop_requested:
                return
            conn.fail_reason = f"no heartbeat answer within {settings.timeout_s:g}s"
            conn.log.error("slot {} pid {}: {}: SIGABRT", conn.slot, conn.pid, conn.fail_reason)
            conn.process.signal(signal.SIGABRT)
            if await conn.process.wait(settings.abort_timeout_s) is None:
                conn.process.signal(signal.SIGKILL)
            return
