"""What ``corral status`` shows, as plain data (the CLI renders it: ``entrypoints/cli/view.py``)."""

from __future__ import annotations

import time
from typing import Any, TypedDict

from corral.supervisor.connection import WorkerConnection
from corral.supervisor.events import PoolEvent
from corral.supervisor.outage import REDIS_DOWN, redis_url, unreachable
from corral.supervisor.pool import WorkerPool
from corral.supervisor.states import WorkerState


class SlotRow(TypedDict):
    slot: int
    pid: int | None
    state: str
    uptime_s: float | None
    rss_bytes: int
    cpu_percent: float
    processed: int
    failed: int
    restarts: int
    reason: str | None
    app: dict[str, Any]  # what the worker's own stats() adds (an app's metrics)
    worker_id: str | None  # the child's <host>:<pool>:<slot>:<token> (its consumer name)
    redis_down_since: float | None  # Unix time: since when its child cannot reach Redis (None: it can)


FRAMEWORK_STATS = frozenset({"processed", "failed", "queues", "streams", "schedules", "redis_down_s"})


# summed over children, past ones too (throttled: takes a rate limit held back; refused: acks, settles
# and checkpoints of work recovered away from its worker meanwhile)
COUNTERS = ("processed", "failed", "retried", "dead", "requeued", "throttled", "refused")
GAUGES = ("in_flight", "lag", "delayed", "paused")  # in_flight summed over live children; the rest sampled
SAMPLED = ("lag", "delayed", "paused")  # each child samples the same Redis figure: the largest wins


class WorkTotals:
    """Per queue/stream counters of the whole pool, including those of children that exited. A child
    counts from its spawn until its exit is handled (then its last stats join ``before``), so the
    totals never dip while a child is being stopped or replaced."""

    def __init__(self, pool: WorkerPool) -> None:
        self.before: dict[str, dict[str, dict[str, int]]] = {"queues": {}, "streams": {}}
        self.children: set[WorkerConnection] = set()
        pool.on(PoolEvent.SPAWNING, self.children.add)
        pool.on(PoolEvent.EXIT, self._exited)

    def _exited(self, conn: WorkerConnection) -> None:
        self.children.discard(conn)
        for kind, name, figures in _figures(conn):
            row = self.before[kind].setdefault(name, {})
            for counter in COUNTERS:
                row[counter] = row.get(counter, 0) + int(figures.get(counter, 0))

    def rows(self) -> dict[str, dict[str, dict[str, float]]]:
        out: dict[str, dict[str, dict[str, float]]] = {
            kind: {name: dict(row) for name, row in rows.items()} for kind, rows in self.before.items()
        }
        for conn in self.children:
            for kind, name, figures in _figures(conn):
                row = out[kind].setdefault(name, {})
                for counter in (*COUNTERS, "in_flight"):
                    row[counter] = row.get(counter, 0) + int(figures.get(counter, 0))
                for gauge in SAMPLED:
                    row[gauge] = max(row.get(gauge, 0), int(figures.get(gauge, 0)))
        return out


def _figures(conn: WorkerConnection) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (kind, name, figures)
        for kind in ("queues", "streams")
        for name, figures in (conn.stats.get(kind) or {}).items()
    ]


class Status(TypedDict):
    pid: int
    pool: str
    state: str
    size: int
    uptime_s: float
    rss_bytes: int
    redis_url: str | None
    spawn: str  # how children start now: "zygote pid N", or "exec" and why
    config: str  # the config file the pool runs, and the sha256 of it as loaded
    config_digest: str
    slots: list[SlotRow]
    work: dict[str, dict[str, dict[str, float]]]


def slot_rows(pool: WorkerPool) -> list[SlotRow]:
    rows: list[SlotRow] = []
    for index in sorted(pool.slots):
        slot = pool.slots[index]
        conn = slot.current
        stats = conn.stats if conn is not None else {}
        down_since = conn.redis_down_since if conn is not None else None
        cut_off = down_since is not None and slot.state is WorkerState.READY
        rows.append(
            SlotRow(
                slot=index,
                pid=conn.pid if conn is not None else None,
                state=REDIS_DOWN if cut_off else slot.state.value,
                uptime_s=round(conn.uptime_s, 3) if conn is not None else None,
                rss_bytes=conn.rss_bytes if conn is not None else 0,
                cpu_percent=conn.cpu_percent if conn is not None else 0.0,
                processed=slot.processed_before + int(stats.get("processed", 0)),
                failed=slot.failed_before + int(stats.get("failed", 0)),
                restarts=slot.history.restarts,
                reason=slot.reason(pool.clock()) or redis_note(down_since, redis_url(pool)),
                app={k: v for k, v in stats.items() if k not in FRAMEWORK_STATS},
                worker_id=conn.info.worker_id if conn is not None and conn.info is not None else None,
                redis_down_since=down_since,
            )
        )
        rows += [draining_row(index, old, pool.clock() - since) for old, since in slot.draining if old.alive]
    return rows


def redis_note(since: float | None, url: str | None) -> str | None:
    """What a child says of its Redis: unreachable since when, for how long, which one."""
    return None if since is None else f"{unreachable(since, url, time.time())} (lease not renewed)"


def draining_row(index: int, conn: WorkerConnection, draining_s: float) -> SlotRow:
    """An old child of a reload or recycle finishing what it holds (state ``draining``)."""
    stats = conn.stats
    held = sum(int(q.get("in_flight", 0)) for q in (stats.get("queues") or {}).values())
    held += sum(int(s.get("in_flight", 0)) for s in (stats.get("streams") or {}).values())
    return SlotRow(
        slot=index,
        pid=conn.pid,
        state="draining",
        uptime_s=round(conn.uptime_s, 3),
        rss_bytes=conn.rss_bytes,
        cpu_percent=conn.cpu_percent,
        processed=int(stats.get("processed", 0)),
        failed=int(stats.get("failed", 0)),
        restarts=0,
        reason=f"draining for {draining_s:.0f}s, {held} in hand",
        app={},
        worker_id=conn.info.worker_id if conn.info is not None else None,
        redis_down_since=conn.redis_down_since,
    )


def summary(pool: WorkerPool) -> str:
    """One line for systemd's STATUS=."""
    rows = slot_rows(pool)
    ready = sum(r["state"] == "ready" for r in rows)
    fatal = sum(r["state"] == "fatal" for r in rows)
    processed = sum(r["processed"] for r in rows)
    return f"{ready}/{pool.size} ready, {fatal} fatal, {processed} processed"
