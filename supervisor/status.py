"""What ``corral status`` shows: a snapshot of the pool as plain data, and its rendering."""

from __future__ import annotations

import json
from typing import Any, TypedDict

from corral.supervisor.pool import WorkerPool


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


FRAMEWORK_STATS = frozenset({"processed", "failed", "queues", "streams"})


COUNTERS = ("processed", "failed", "retried", "dead", "requeued")  # summed over children, past ones too
GAUGES = ("in_flight", "lag")  # in_flight summed over live children; lag: the latest sample


class WorkTotals:
    """Per queue/stream counters of the whole pool, including those of children that exited."""

    def __init__(self) -> None:
        self.before: dict[str, dict[str, dict[str, int]]] = {"queues": {}, "streams": {}}

    def add_exited(self, stats: dict[str, Any]) -> None:
        for kind in ("queues", "streams"):
            for name, figures in (stats.get(kind) or {}).items():
                row = self.before[kind].setdefault(name, {})
                for counter in COUNTERS:
                    row[counter] = row.get(counter, 0) + int(figures.get(counter, 0))

    def rows(self, pool: WorkerPool) -> dict[str, dict[str, dict[str, int]]]:
        out: dict[str, dict[str, dict[str, int]]] = {
            kind: {name: dict(row) for name, row in rows.items()} for kind, rows in self.before.items()
        }
        for conn in pool.connections():
            for kind in ("queues", "streams"):
                for name, figures in (conn.stats.get(kind) or {}).items():
                    row = out[kind].setdefault(name, {})
                    for counter in (*COUNTERS, "in_flight"):
                        row[counter] = row.get(counter, 0) + int(figures.get(counter, 0))
                    row["lag"] = max(row.get("lag", 0), int(figures.get("lag", 0)))
        return out


class Status(TypedDict):
    pid: int
    pool: str
    state: str
    size: int
    uptime_s: float
    rss_bytes: int
    redis_url: str | None
    slots: list[SlotRow]
    work: dict[str, dict[str, dict[str, int]]]


def slot_rows(pool: WorkerPool) -> list[SlotRow]:
    rows: list[SlotRow] = []
    for index in sorted(pool.slots):
        slot = pool.slots[index]
        conn = slot.current
        stats = conn.stats if conn is not None else {}
        rows.append(
            SlotRow(
                slot=index,
                pid=conn.pid if conn is not None else None,
                state=slot.state.value,
                uptime_s=round(conn.uptime_s, 3) if conn is not None else None,
                rss_bytes=conn.rss_bytes if conn is not None else 0,
                cpu_percent=conn.cpu_percent if conn is not None else 0.0,
                processed=slot.processed_before + int(stats.get("processed", 0)),
                failed=slot.failed_before + int(stats.get("failed", 0)),
                restarts=slot.history.restarts,
                reason=slot.fatal_reason or slot.recycle_reason,
                app={k: v for k, v in stats.items() if k not in FRAMEWORK_STATS},
                worker_id=conn.info.worker_id if conn is not None and conn.info is not None else None,
            )
        )
    return rows


def summary(pool: WorkerPool) -> str:
    """One line for systemd's STATUS=."""
    rows = slot_rows(pool)
    ready = sum(r["state"] == "ready" for r in rows)
    fatal = sum(r["state"] == "fatal" for r in rows)
    processed = sum(r["processed"] for r in rows)
    return f"{ready}/{pool.size} ready, {fatal} fatal, {processed} processed"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def render(status: dict[str, Any]) -> str:
    """The table printed by ``corral status``."""
    head = (
        f"pool {status['pool']}  supervisor pid {status['pid']}  {status['state']}  "
        f"up {_duration(status['uptime_s'])}  rss {status['rss_bytes'] / 2**20:.1f} MB"
    )
    columns = ("SLOT", "STATE", "PID", "UPTIME", "RSS MB", "CPU %", "PROCESSED", "FAILED", "RESTARTS")
    lines = [head, "", "{:>4}  {:<9} {:>8} {:>8} {:>7} {:>6} {:>10} {:>7} {:>8}".format(*columns)]
    for row in status["slots"]:
        lines.append(
            "{:>4}  {:<9} {:>8} {:>8} {:>7.1f} {:>6.1f} {:>10} {:>7} {:>8}".format(
                row["slot"],
                row["state"],
                row["pid"] or "-",
                _duration(row["uptime_s"]),
                row["rss_bytes"] / 2**20,
                row["cpu_percent"],
                row["processed"],
                row["failed"],
                row["restarts"],
            )
        )
        if row.get("reason"):
            lines.append(f"      └ {row['reason']}")
    lines.extend(_render_work(status.get("work") or {}))
    apps = [(row["slot"], row.get("app")) for row in status["slots"] if row.get("app")]
    if apps:
        lines.extend(["", "APP METRICS"])
        lines.extend(f"{slot:>4}  {json.dumps(app, separators=(', ', ': '))}" for slot, app in apps)
    return "\n".join(lines)


def _render_work(work: dict[str, dict[str, dict[str, int]]]) -> list[str]:
    rows = [
        (kind[:-1], name, f)
        for kind in ("queues", "streams")
        for name, f in sorted(work.get(kind, {}).items())
    ]
    if not rows:
        return []
    columns = ("KIND", "NAME", "PROCESSED", "FAILED", "RETRIED", "DEAD", "IN FLIGHT", "LAG")
    template = "{:<6} {:<28} {:>10} {:>7} {:>8} {:>6} {:>10} {:>8}"
    lines = ["", template.format(*columns)]
    for kind, name, f in rows:
        retried = f.get("retried", "-") if kind == "queue" else "-"
        lines.append(
            template.format(
                kind,
                name[:28],
                f.get("processed", 0),
                f.get("failed", 0),
                retried,
                f.get("dead", 0),
                f.get("in_flight", 0),
                f.get("lag", 0),
            )
        )
    return lines
