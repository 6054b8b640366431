"""Schedules (``[[schedules]]``): every worker of every host runs this unit; each tick fires once.

A tick fires through one script in the slot of the list it feeds (``FIRE``): the schedule's fence
(``keys.schedule_state``: the last tick fired, by anyone) moves forward and the tick's job is
pushed in the same step, or nothing happens because the fence is at or past that tick already.
So however many workers see a tick due at once, and whichever of them dies when, it fires exactly
once. Without ``overlap`` the job carries a unique key: a tick whose previous job is still queued or
running is not fired (counted as ``overlapped``). A tick at most ``schedules.grace_s`` late (a
slow round, not a downtime) fires whatever the policy; older ones were missed during a downtime
and go by ``catch_up``: ``skip`` (none of them), ``once`` (the latest of them), ``all`` (each,
oldest first). The first time a schedule is seen, its fence is set to the latest tick without
firing it: the next tick is the first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from corral.contract import ScheduleSpec, WorkSpec
from corral.workers import schedules
from corral.workers.jobs.keys import Keys
from corral.workers.jobs.scripts import FIRE
from corral.workers.jobs.wire import encode_job
from corral.workers.scripts import Script

POLL_S = 0.05  # how often the unit looks whether a tick is due (it asks Redis only then)


@dataclass
class Fired:
    """What one tick did (``FIRE``'s reply): 1 fired, 2 skipped, 3 held back by a run in progress."""

    tick_s: float
    fire: bool
    missed: int


class Scheduler:
    name = "schedules"

    def __init__(self, work: WorkSpec, *, redis: Any, keys: Keys, log: Any) -> None:
        self.specs = work.schedules
        self.work = work
        self.redis = redis
        self.keys = keys
        self.log = log
        self.idle_sleep_s = POLL_S
        self._fire = Script(redis, FIRE)
        self.next_at_s: dict[str, float] = {}  # a schedule is not looked at before its next tick
        self.fired = {spec.name: 0 for spec in self.specs}  # by this worker

    async def run(self) -> int:
        now_s = time.time()
        for spec in self.specs:
            if now_s >= self.next_at_s.get(spec.name, 0.0):
                await self._tick(spec, now_s)
        return 0  # ticks are not events processed: the unit polls again after POLL_S

    async def _tick(self, spec: ScheduleSpec, now_s: float) -> None:
        queue = schedules.target_queue(spec, self.work, self.keys)
        fence = self.keys.schedule_state(spec.name, queue)
        last_ms = await self.redis.hget(fence, "last_tick_ms")
        if last_ms is None:  # first seen: from the next tick on
            latest_s = schedules.latest_at(spec, now_s)
            await self._send(spec, queue, [Fired(latest_s, fire=False, missed=0)])
            self.next_at_s[spec.name] = schedules.next_after(spec, latest_s)
            return
        ticks = schedules.due(spec, int(last_ms) / 1000, now_s)
        if not ticks:
            self.next_at_s[spec.name] = schedules.next_after(spec, int(last_ms) / 1000)
            return
        await self._send(spec, queue, self._plan(spec, ticks, now_s))
        capped = len(ticks) == schedules.MAX_TICKS_PER_ROUND
        self.next_at_s[spec.name] = now_s if capped else schedules.next_after(spec, ticks[-1])

    @staticmethod
    def _plan(spec: ScheduleSpec, ticks: list[float], now_s: float) -> list[Fired]:
        """The ticks due, by the catch-up policy. A tick at most ``grace_s`` late fires whatever the
        policy (a slow round is not a downtime); older ones are missed: ``all`` fires them too,
        ``once`` fires the newest of them when no tick is on time, ``skip`` fires none."""
        if spec.catch_up == "all":
            return [Fired(tick_s, fire=True, missed=0) for tick_s in ticks]
        grace_s = schedules.grace_s(spec)
        late = [tick_s for tick_s in ticks if now_s - tick_s > grace_s]
        fire = ticks[len(late) :]
        if not fire and spec.catch_up == "once":
            late, fire = late[:-1], late[-1:]
        if not fire:  # only the fence moves, past what was missed
            return [Fired(late[-1], fire=False, missed=len(late))]
        plan = [Fired(tick_s, fire=True, missed=0) for tick_s in fire]
        plan[0].missed = len(late)
        return plan

    async def _send(self, spec: ScheduleSpec, queue: str, plan: list[Fired]) -> None:
        fence = self.keys.schedule_state(spec.name, queue)
        unique = schedules.unique_key(spec)
        lock = self.keys.unique(queue, unique or "")
        lock_ms = int(spec.max_run_s * 1000) if unique else 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for item in plan:
                job_id = schedules.job_id(spec, item.tick_s)
                raw = encode_job(dict(spec.data), job_id, unique=unique)
                args = [int(item.tick_s * 1000), raw, job_id, lock_ms, item.missed, int(item.fire)]
                args.append(int(time.time() * 1000))
                await self._fire(keys=[fence, queue, lock], args=args, client=pipe)
            replies = await pipe.execute()
        for item, reply in zip(plan, replies, strict=True):
            self._said(spec, item, int(reply))

    def _said(self, spec: ScheduleSpec, item: Fired, reply: int) -> None:
        log = self.log.bind(schedule=spec.name)
        job_id = schedules.job_id(spec, item.tick_s)
        if reply == 1:
            self.fired[spec.name] += 1
            log.info("schedule {}: fired {}", spec.name, job_id)
        elif reply == 2 and item.missed:
            log.warning("schedule {}: {} missed ticks skipped (catch_up = skip)", spec.name, item.missed)
        elif reply == 3:
            log.warning(
                "schedule {}: tick {} not fired: the previous one is still running", spec.name, job_id
            )
        if reply in (1, 3) and item.missed:
            log.warning("schedule {}: {} missed ticks caught up once", spec.name, item.missed)

    def stats(self) -> dict[str, int]:
        return dict(self.fired)
