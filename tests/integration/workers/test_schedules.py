"""Schedules against real servers: each tick fires once however many workers see it due (and
whichever dies), the catch-up policies after a downtime, and no overlapping runs."""

from __future__ import annotations

import itertools
import json
import time
from datetime import datetime
from typing import Any

import pytest
from loguru import logger

from corral.contract import ScheduleSpec, WorkSpec
from corral.workers.consumers.scheduler import Scheduler
from corral.workers.jobs.keys import Keys
from corral.workers.ops.operations import Operations
from tests.integration.conftest import KEYS, H, at_least, client, queue_work, redis_spec, wait_for

EVERY_S = 0.2


def tick_times(ids: list[bytes]) -> list[float]:
    """``name@2026-...Z`` -> the tick's unix time."""
    return sorted(
        datetime.fromisoformat(i.decode().split("@", 1)[1].replace("Z", "+00:00")).timestamp() for i in ids
    )


def test_every_tick_fires_once_with_two_workers_one_killed(
    redis_any: Any, local_worker: Any, run: Any
) -> None:
    async def body() -> dict[bytes, bytes]:
        r = client(redis_any.url)
        base = queue_work(redis_any.url, names=("ticks",), handler=f"{H}:count_job")
        work = WorkSpec(
            redis=base.redis,
            queues=base.queues,
            schedules=(ScheduleSpec(name="beat", every_s=EVERY_S, queue="ticks"),),
        )
        first, second = [await local_worker(work, name=n) for n in ("w1", "w2")]
        try:
            await wait_for(lambda: at_least(r.hkeys("test:handled"), 8), timeout_s=10, what="8 ticks")
            await first.stop(fast=True)  # one scheduler gone mid-run: the other goes on alone
            await wait_for(lambda: at_least(r.hkeys("test:handled"), 16), timeout_s=10, what="16 ticks")
        finally:
            await second.stop()
        handled = await r.hgetall("test:handled")
        await r.aclose()
        return handled

    handled = run(body())
    times = tick_times(list(handled))
    gaps = {round(b - a, 3) for a, b in itertools.pairwise(times)}
    assert set(handled.values()) == {b"1"}, "a tick handled twice"
    assert gaps == {EVERY_S}, f"a tick missed or out of step: {gaps}"


@pytest.mark.parametrize(("policy", "fired"), [("skip", (2, 3)), ("once", (2, 3)), ("all", (10, 11))])
def test_catch_up_after_a_downtime(redis_clean: Any, run: Any, policy: str, fired: tuple[int, int]) -> None:
    """The fence says the last tick was 10 s ago (every 1 s): nothing ran meanwhile. The ticks of
    the last 2 s (the grace) fire under every policy; the older ones by the policy (tests/unit)."""

    async def body() -> tuple[int, int, int]:
        r = client(redis_clean.url)
        spec = ScheduleSpec(name="s", every_s=1.0, queue="q", catch_up=policy, overlap=True)
        work = WorkSpec(redis=redis_spec(redis_clean.url), schedules=(spec,))
        last_ms = int((time.time() // 1 - 10) * 1000)
        await r.hset(KEYS.schedule_state("s", "q"), "last_tick_ms", last_ms)
        scheduler = Scheduler(work, redis=r, keys=Keys(), log=logger)
        await scheduler.run()
        await scheduler.run()  # a second look fires nothing more (unless the next tick fell due)
        [row] = await Operations(r, work).schedules()
        queued = await r.llen("q")
        await r.aclose()
        return queued, row.fired, row.missed

    queued, row_fired, row_missed = run(body())
    assert queued == row_fired and row_fired in fired, (queued, row_fired, row_missed)
    assert row_fired + row_missed in (10, 11) and (policy != "all" or row_missed == 0)


def test_a_new_schedule_starts_from_the_next_tick(redis_clean: Any, run: Any) -> None:
    async def body() -> tuple[int, Any]:
        r = client(redis_clean.url)
        spec = ScheduleSpec(name="cron", cron="* * * * *", queue="q")
        work = WorkSpec(redis=redis_spec(redis_clean.url), schedules=(spec,))
        await Scheduler(work, redis=r, keys=Keys(), log=logger).run()
        [row] = await Operations(r, work).schedules()
        queued = await r.llen("q")
        await r.aclose()
        return queued, row

    queued, row = run(body())
    assert queued == 0 and row.fired == 0 and row.last_tick_s is not None
    assert row.last_tick_s % 60 == 0 and row.next_tick_s == row.last_tick_s + 60


def test_a_handler_schedule_never_overlaps_its_running_tick(
    redis_any: Any, local_worker: Any, run: Any
) -> None:
    async def body() -> tuple[list[dict[str, float]], int]:
        r = client(redis_any.url)
        spec = ScheduleSpec(name="slow", every_s=0.1, handler=f"{H}:timed_run", data={"sleep": 0.35})
        work = WorkSpec(redis=redis_spec(redis_any.url), schedules=(spec,))
        workers = [await local_worker(work, name=n) for n in ("w1", "w2")]
        try:
            await wait_for(lambda: at_least(r.lrange("test:runs", 0, -1), 4), timeout_s=10, what="4 runs")
        finally:
            for worker in workers:
                await worker.stop()
        runs = [json.loads(raw) for raw in await r.lrange("test:runs", 0, -1)]
        [row] = await Operations(r, work).schedules()
        await r.aclose()
        return runs, row.overlapped

    runs, overlapped = run(body())
    runs.sort(key=lambda item: item["start"])
    assert all(b["start"] >= a["end"] - 0.01 for a, b in itertools.pairwise(runs)), runs
    assert overlapped > 0
