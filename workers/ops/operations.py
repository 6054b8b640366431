"""What an operator does to a pool's work, straight in Redis: pause and resume a queue or stream,
see the schedules, act on dead letters. The one module the CLI calls (and the dashboard will), over
one asyncio client of any topology; every name goes through the ``Catalog`` (``UnknownName``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from corral.contract import ScheduleSpec, WorkSpec
from corral.workers import schedules
from corral.workers.ops.catalog import Catalog, Target, UnknownName
from corral.workers.ops.dead_letters import DeadLetters
from corral.workers.ops.overview import WorkRow, overview


@dataclass(frozen=True)
class ScheduleRow:
    """One schedule as ``corral schedules`` shows it (times in unix seconds, None: never)."""

    name: str
    when: str  # "cron */5 * * * * (UTC)" or "every 5s"
    target: str  # "queue jobs" or "handler pkg.mod:fn"
    catch_up: str
    overlap: bool
    last_tick_s: float | None  # the last tick fired (or skipped), by any host
    last_fired_s: float | None  # when a tick last fired
    next_tick_s: float
    fired: int
    missed: int  # ticks not fired: missed while nothing ran (catch_up)
    overlapped: int  # ticks not fired: the previous one still queued or running
    last_job: str | None = None  # the id of the last tick's job (``<name>@<tick>``)

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


class Operations:
    def __init__(self, redis: Any, work: WorkSpec) -> None:
        self.redis = redis
        self.work = work
        self.catalog = Catalog(work)
        self.keys = self.catalog.keys
        self.dead = DeadLetters(redis, self.keys)

    def resolve(self, name: str) -> Target:
        """The queue or stream ``name`` (``UnknownName`` if it is neither)."""
        return self.catalog.resolve(name)

    async def pause(self, name: str) -> Target:
        """No worker of any host takes from ``name`` (each of its lists or shards) within a second;
        jobs stay queued, what is in hand finishes."""
        target = self.resolve(name)
        since = repr(time.time())
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in target.keys:
                pipe.set(self.keys.paused(key), since)
            await pipe.execute()
        return target

    async def resume(self, name: str) -> Target:
        target = self.resolve(name)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in target.keys:
                pipe.delete(self.keys.paused(key))
            await pipe.execute()
        return target

    async def overview(self, extra: Sequence[str] = ()) -> list[WorkRow]:
        """Every declared queue and stream (and ``extra`` names: queues a pattern found), with its
        counts in Redis."""
        targets = self.catalog.names()
        known = {target.name for target in targets}
        for name in extra:
            if name not in known:
                with contextlib.suppress(UnknownName):  # a registry's queue: not known by name
                    targets.append(self.resolve(name))
        return await overview(self.redis, self.keys, targets)

    async def paused(self) -> dict[str, float]:
        """The declared names paused now (any of their lists), with since when (unix seconds)."""
        targets = self.catalog.names()
        async with self.redis.pipeline(transaction=False) as pipe:
            for target in targets:
                for key in target.keys:
                    pipe.get(self.keys.paused(key))
            replies = iter(await pipe.execute())
        found: dict[str, float] = {}
        for target in targets:
            since = [float(reply) for reply in (next(replies) for _ in target.keys) if reply]
            if since:
                found[target.name] = min(since)
        return found

    async def schedules(self) -> list[ScheduleRow]:
        specs = self.work.schedules
        async with self.redis.pipeline(transaction=False) as pipe:
            for spec in specs:
                queue = schedules.target_queue(spec, self.work, self.keys)
                pipe.hgetall(self.keys.schedule_state(spec.name, queue))
            states = await pipe.execute()
        now_s = time.time()
        return [self._row(spec, state, now_s) for spec, state in zip(specs, states, strict=True)]

    @staticmethod
    def _row(spec: ScheduleSpec, raw: dict[bytes, bytes], now_s: float) -> ScheduleRow:
        state = {key.decode(): value.decode() for key, value in raw.items()}
        last_tick_s = int(state["last_tick_ms"]) / 1000 if "last_tick_ms" in state else None
        last_fired_s = int(state["last_fired_ms"]) / 1000 if "last_fired_ms" in state else None
        when = f"cron {spec.cron} ({spec.timezone})" if spec.cron else f"every {spec.every_s:g}s"
        return ScheduleRow(
            name=spec.name,
            when=when,
            target=f"queue {spec.queue}" if spec.queue else f"handler {spec.handler}",
            catch_up=spec.catch_up,
            overlap=spec.overlap,
            last_tick_s=last_tick_s,
            last_fired_s=last_fired_s,
            next_tick_s=schedules.next_after(spec, max(now_s, last_tick_s or 0.0)),
            fired=int(state.get("fired", 0)),
            missed=int(state.get("missed", 0)),
            overlapped=int(state.get("overlapped", 0)),
            last_job=state.get("last_job"),
        )
