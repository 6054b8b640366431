"""When schedules tick (pure: no Redis): interval and cron ticks, DST, and the catch-up plans."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from corral.contract import ScheduleSpec
from corral.workers import schedules
from corral.workers.consumers.scheduler import Scheduler


def at(text: str, zone: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def test_interval_ticks_are_the_multiples_of_the_interval() -> None:
    spec = ScheduleSpec(name="s", every_s=5.0, queue="q")
    assert schedules.next_after(spec, 12.0) == 15.0
    assert schedules.next_after(spec, 15.0) == 20.0  # strictly after
    assert schedules.latest_at(spec, 19.9) == 15.0
    assert schedules.due(spec, 10.0, 26.0) == [15.0, 20.0, 25.0]


def test_cron_ticks_in_a_time_zone_across_a_dst_change() -> None:
    spec = ScheduleSpec(name="s", cron="30 2 * * *", timezone="Europe/Paris", queue="q")
    # 2026-03-29: Paris skips 02:00-03:00; cronsim fires a skipped time at the jump (03:00 local)
    first = schedules.next_after(spec, at("2026-03-28T12:00:00", "Europe/Paris"))
    assert first == at("2026-03-29T03:00:00", "Europe/Paris")
    assert schedules.next_after(spec, first) == at("2026-03-30T02:30:00", "Europe/Paris")
    assert schedules.latest_at(spec, at("2026-03-30T02:30:00", "Europe/Paris")) == at(
        "2026-03-30T02:30:00", "Europe/Paris"
    )


def test_a_tick_job_is_named_by_its_schedule_and_time() -> None:
    spec = ScheduleSpec(name="beat", every_s=1.0, queue="q")
    assert schedules.job_id(spec, at("2026-12-01T10:00:00")) == "beat@2026-12-01T10:00:00.000Z"


@pytest.mark.parametrize(
    ("policy", "plan"),
    [
        ("skip", [(70.0, False, 3)]),  # the latest is 30 s late (grace 2 s): nothing fires
        ("once", [(70.0, True, 2)]),
        ("all", [(50.0, True, 0), (60.0, True, 0), (70.0, True, 0)]),
    ],
)
def test_catch_up_plans_for_late_ticks(policy: str, plan: list[tuple[float, bool, int]]) -> None:
    spec = ScheduleSpec(name="s", every_s=10.0, queue="q", catch_up=policy)
    fired = Scheduler._plan(spec, [50.0, 60.0, 70.0], now_s=100.0)
    assert [(f.tick_s, f.fire, f.missed) for f in fired] == plan


def test_ticks_within_the_grace_fire_under_every_policy() -> None:
    """A slow round (ticks 0.2 s apart, the last look 0.5 s ago) is not a downtime: none is lost."""
    for policy in ("skip", "once", "all"):
        spec = ScheduleSpec(name="s", every_s=0.2, queue="q", catch_up=policy)
        plan = Scheduler._plan(spec, [70.2, 70.4, 70.6], now_s=70.65)
        assert [(f.tick_s, f.fire, f.missed) for f in plan] == [
            (70.2, True, 0),
            (70.4, True, 0),
            (70.6, True, 0),
        ]


@pytest.mark.parametrize(("policy", "plan"), [("skip", [(5.0, True, 3)]), ("once", [(5.0, True, 3)])])
def test_late_ticks_are_missed_beside_an_on_time_one(
    policy: str, plan: list[tuple[float, bool, int]]
) -> None:
    spec = ScheduleSpec(name="s", every_s=1.0, queue="q", catch_up=policy)
    fired = Scheduler._plan(spec, [1.0, 2.0, 3.0, 5.0], now_s=5.5)  # grace 2 s: 1-3 are late
    assert [(f.tick_s, f.fire, f.missed) for f in fired] == plan
