"""When a schedule ticks, and where its ticks go: pure functions over a ``ScheduleSpec``.

A tick is identified by its time (unix milliseconds): ``every_s`` ticks at the multiples of the
interval since the epoch (the same instants on every host), ``cron`` at the expression's times in
``timezone`` (parsed by cronsim: DST-aware). A tick's job has the id ``<schedule>@<tick, ISO 8601
UTC>`` and goes to the schedule's ``queue`` (one list of it: a sharded queue's shard chosen by the
schedule's name), or, for a handler schedule, to the schedule's own queue
(``keys.schedule_queue``). The fence that makes a tick fire once lives in that list's slot.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from cronsim import CronSim

from corral.contract import QueueSpec, ScheduleSpec, WorkSpec
from corral.workers.jobs.keys import Keys
from corral.workers.producer import queue_key

MAX_TICKS_PER_ROUND = 1000  # catch_up = "all" after a long downtime: the rest on the next rounds


def target_queue(spec: ScheduleSpec, work: WorkSpec, keys: Keys) -> str:
    """The list a schedule's ticks are pushed onto."""
    if spec.queue is None:
        return keys.schedule_queue(spec.name)
    shards = next((q.shards for q in work.queues if spec.queue in q.names), 1)
    return queue_key(spec.queue, shards, spec.name)


def queue_specs(work: WorkSpec, keys: Keys) -> list[QueueSpec]:
    """The declared queues, and the queue of each handler schedule (one job at a time)."""
    own = [
        QueueSpec(handler=s.handler, names=(keys.schedule_queue(s.name),), batch_size=1)
        for s in work.schedules
        if s.handler
    ]
    return [*work.queues, *own]


def unique_key(spec: ScheduleSpec) -> str | None:
    """The unique key of a tick's job: the next tick is held back while it is queued or running."""
    return None if spec.overlap else f"schedule:{spec.name}"


def next_after(spec: ScheduleSpec, after_s: float) -> float:
    """The first tick strictly after ``after_s`` (unix seconds)."""
    if spec.every_s is not None:
        return (math.floor(after_s / spec.every_s + 1e-9) + 1) * spec.every_s
    start = datetime.fromtimestamp(after_s, ZoneInfo(spec.timezone))
    return next(iter(CronSim(spec.cron or "", start))).timestamp()


def latest_at(spec: ScheduleSpec, now_s: float) -> float:
    """The last tick at or before ``now_s``."""
    if spec.every_s is not None:
        return math.floor(now_s / spec.every_s + 1e-9) * spec.every_s
    start = datetime.fromtimestamp(math.floor(now_s) + 1, ZoneInfo(spec.timezone))
    return next(iter(CronSim(spec.cron or "", start, reverse=True))).timestamp()


def due(spec: ScheduleSpec, last_s: float, now_s: float) -> list[float]:
    """The ticks after ``last_s`` up to ``now_s``, oldest first (at most ``MAX_TICKS_PER_ROUND``)."""
    ticks: list[float] = []
    tick = next_after(spec, last_s)
    while tick <= now_s and len(ticks) < MAX_TICKS_PER_ROUND:
        ticks.append(tick)
        tick = next_after(spec, tick)
    return ticks


def grace_s(spec: ScheduleSpec) -> float:
    """How late a tick may still fire under ``catch_up = "skip"``: 2 s, or a tenth of the period."""
    period_s = spec.every_s if spec.every_s is not None else 60.0
    return max(2.0, min(60.0, period_s / 10))


def job_id(spec: ScheduleSpec, tick_s: float) -> str:
    stamp = datetime.fromtimestamp(tick_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return f"{spec.name}@{stamp}"
