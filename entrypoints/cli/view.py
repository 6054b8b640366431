"""How ``corral status`` looks: the supervisor's status (plain data) as tables, with rich.

Slots (state, pid, uptime, memory, CPU, processed, failed, restarts, and why a slot is not simply
running), queues and streams (counters, rates, in flight, lag) and the apps' own metrics (one row
per metric, one column per slot).
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

MAX_APP_ROWS = 40


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def render(
    status: dict[str, Any], note: str = "", extra: list[RenderableType] | None = None
) -> RenderableType:
    head = (
        f"pool {status['pool']}  supervisor pid {status['pid']}  {status['state']}  "
        f"up {duration(status['uptime_s'])}  rss {status['rss_bytes'] / 2**20:.1f} MB"
        + (f"  children from: {status['spawn']}" if status.get("spawn") else "")
    )
    parts: list[RenderableType] = [Text(head), slots_table(status["slots"])]
    work = work_table(status.get("work") or {})
    if work is not None:
        parts.append(work)
    apps = app_table(status["slots"])
    if apps is not None:
        parts.append(apps)
    parts.extend(extra or [])
    if note:
        parts.append(Text(note))
    return Group(*parts)


def table_of(*columns: str, title: str | None = None) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False)
    for name in columns:
        text = name in ("STATE", "KIND", "NAME", "METRIC", "REASON", "HOST", "WORKER IDS", "KEY", "SERVER")
        # names are never cut short on a narrow terminal: they fold onto a second line instead
        table.add_column(name, justify="left" if text else "right", overflow="fold" if text else "ellipsis")
    return table


def slots_table(slots: list[dict[str, Any]]) -> Table:
    table = table_of(
        "SLOT", "STATE", "PID", "UPTIME", "RSS MB", "CPU %", "PROCESSED", "FAILED", "RESTARTS", "REASON"
    )
    for row in slots:
        table.add_row(
            str(row["slot"]),
            row["state"],
            str(row["pid"] or "-"),
            duration(row["uptime_s"]),
            f"{row['rss_bytes'] / 2**20:.1f}",
            f"{row['cpu_percent']:.1f}",
            str(row["processed"]),
            str(row["failed"]),
            str(row["restarts"]),
            row.get("reason") or "",
        )
    return table


def work_table(work: dict[str, dict[str, dict[str, Any]]]) -> Table | None:
    rows = [
        (kind[:-1], name, f)
        for kind in ("queues", "streams")
        for name, f in sorted(work.get(kind, {}).items())
    ]
    if not rows:
        return None
    table = table_of(
        "KIND",
        "NAME",
        "PROCESSED",
        "/S",
        "FAILED",
        "FAILED/S",
        "RETRIED",
        "DEAD",
        "IN FLIGHT",
        "LAG",
        "DELAYED",
        "STATE",
    )
    table.columns[1].min_width = min(max(len(name) for _, name, _ in rows), 48)  # whole names first
    for kind, name, f in rows:
        table.add_row(
            kind,
            name,
            str(int(f.get("processed", 0))),
            f"{f.get('processed_per_s', 0.0):.1f}",
            str(int(f.get("failed", 0))),
            f"{f.get('failed_per_s', 0.0):.1f}",
            str(int(f.get("retried", 0))) if kind == "queue" else "-",
            str(int(f.get("dead", 0))),
            str(int(f.get("in_flight", 0))),
            str(int(f.get("lag", 0))),
            str(int(f.get("delayed", 0))) if kind == "queue" else "-",
            state_of(f),
        )
    return table


def state_of(figures: dict[str, Any]) -> str:
    """``paused`` (corral pause), how often a rate limit held takes back, and the acks, settles and
    checkpoints refused (the work had been recovered away from its worker)."""
    words = ["paused"] if figures.get("paused") else []
    for counter in ("throttled", "refused"):
        if figures.get(counter):
            words.append(f"{counter} {int(figures[counter])}")
    return ", ".join(words)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, inner in value.items():
        out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
    return out


def app_table(slots: list[dict[str, Any]]) -> Table | None:
    """The apps' own metrics (a worker's ``stats()`` beyond corral's): a row each, a column per slot."""
    per_slot = {row["slot"]: flatten(row.get("app") or {}) for row in slots if row.get("app")}
    if not per_slot:
        return None
    metrics = sorted({key for values in per_slot.values() for key in values})
    table = table_of("METRIC", *(f"SLOT {slot}" for slot in per_slot), title="APP METRICS")
    table.columns[0].min_width = min(max(len(metric) for metric in metrics), 48)
    for metric in metrics[:MAX_APP_ROWS]:
        table.add_row(metric, *(str(values.get(metric, "")) for values in per_slot.values()))
    if len(metrics) > MAX_APP_ROWS:
        table.add_row(
            f"... {len(metrics) - MAX_APP_ROWS} more (corral status --json)", *([""] * len(per_slot))
        )
    return table
