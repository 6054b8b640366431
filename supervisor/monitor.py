"""Resource sampling with psutil: RSS and CPU per child, and recycling past the configured limits."""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

import psutil

from supervisor.connection import WorkerConnection
from supervisor.states import WorkerState

if TYPE_CHECKING:
    from supervisor.pool import WorkerPool

MIB = 1024 * 1024


def sample(conn: WorkerConnection) -> None:
    """Refresh ``conn.rss_bytes`` and ``conn.cpu_percent`` (CPU since the previous sample)."""
    proc: psutil.Process | None = conn.psutil_process
    try:
        if proc is None:
            proc = psutil.Process(conn.pid)
            conn.psutil_process = proc
            proc.cpu_percent(None)
        with proc.oneshot():
            conn.rss_bytes = proc.memory_info().rss
            conn.cpu_percent = proc.cpu_percent(None)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        pass


def jobs_limit(pool: WorkerPool, conn: WorkerConnection) -> int | None:
    """This child's own ``max_jobs`` (+ jitter, drawn once) so that children don't recycle together."""
    max_jobs = pool.settings.max_jobs
    if max_jobs is None:
        return None
    limit = conn.jobs_limit
    if limit is None:
        limit = max_jobs + random.randint(0, max(0, pool.settings.max_jobs_jitter))
        conn.jobs_limit = limit
    return limit


def recycle_reason(pool: WorkerPool, conn: WorkerConnection) -> str | None:
    max_mb = pool.settings.max_memory_mb
    if max_mb is not None and conn.rss_bytes > max_mb * MIB:
        return f"RSS {conn.rss_bytes / MIB:.0f} MB over max_memory_mb={max_mb:g}"
    limit = jobs_limit(pool, conn)
    processed = int(conn.stats.get("processed", 0))
    if limit is not None and processed >= limit:
        return f"{processed} jobs processed, max_jobs={limit}"
    return None


async def run(pool: WorkerPool) -> None:
    while not pool.stopping:
        for slot in list(pool.slots.values()):
            for conn in (slot.current, slot.next):
                if conn is not None and conn.alive:
                    sample(conn)
            conn = slot.current
            if conn is not None and conn.state is WorkerState.READY and not slot.recycle_reason:
                reason = recycle_reason(pool, conn)
                if reason:
                    conn.log.info("slot {} pid {}: recycling: {}", conn.slot, conn.pid, reason)
                    pool.request_recycle(slot.index, reason)
        await asyncio.sleep(pool.settings.monitor_interval_s)
