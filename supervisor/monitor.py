"""Resource sampling with psutil: RSS and CPU per child, and whether a child is past its limits."""

from __future__ import annotations

import random

import psutil

from corral.supervisor.connection import WorkerConnection
from corral.supervisor.settings import PoolSettings

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


def jobs_limit(settings: PoolSettings, conn: WorkerConnection) -> int | None:
    """This child's own ``max_jobs`` (+ jitter, drawn once) so that children don't recycle together."""
    if settings.max_jobs is None:
        return None
    if conn.jobs_limit is None:
        conn.jobs_limit = settings.max_jobs + random.randint(0, max(0, settings.max_jobs_jitter))
    return conn.jobs_limit


def recycle_reason(settings: PoolSettings, conn: WorkerConnection) -> str | None:
    """Why this child should be replaced now (memory or jobs over the limit), or None."""
    max_mb = settings.max_memory_mb
    if max_mb is not None and conn.rss_bytes > max_mb * MIB:
        return f"RSS {conn.rss_bytes / MIB:.0f} MB over max_memory_mb={max_mb:g}"
    limit = jobs_limit(settings, conn)
    processed = int(conn.stats.get("processed", 0))
    if limit is not None and processed >= limit:
        return f"{processed} jobs processed, max_jobs={limit}"
    return None
