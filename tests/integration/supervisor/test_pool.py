"""WorkerPool through its Python API, with real child processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from corral.contract import ExitCode
from corral.supervisor import PoolEvents, RestartPolicy, WorkerConnection, WorkerPool, WorkerState
from tests.integration.conftest import kill_children, wait_for

APPS = "tests.integration.supervisor.pool_apps"


@pytest.fixture
def make_pool() -> Iterator[Callable[..., WorkerPool]]:
    """Pools whose every child pid is recorded and SIGKILLed at teardown if still alive."""
    pids: list[int] = []

    def make(size: int, worker: str, **settings: Any) -> WorkerPool:
        settings.setdefault("ready_timeout_s", 20.0)
        settings.setdefault("output", lambda _slot: lambda _data: None)
        pool = WorkerPool("test", size, f"{APPS}:{worker}", **settings)
        pool.on("spawning", lambda conn: pids.append(conn.pid))
        return pool

    yield make
    kill_children(pids)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_spawn_request_both_ways_and_pool_events(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(2, "Echo")
    events = PoolEvents(pool)
    told: list[tuple[int, Any]] = []
    events.on("parent_echo", lambda conn, data: ["parent", data])
    events.on("told", lambda conn, data: told.append((conn.slot, data)))
    try:
        assert await pool.spawn_all()
        conns = [pool.get(0), pool.get(1)]
        assert all(c is not None and c.state is WorkerState.READY for c in conns)
        answers = await asyncio.gather(*(c.request("whoami") for c in conns if c))
        assert [a["slot"] for a in answers] == [0, 1]
        assert [a["pid"] for a in answers] == [c.pid for c in conns if c]
        assert answers[0]["identity"].endswith(":test:0")
        conn = pool.get(1)
        assert conn is not None
        assert await conn.request("ask_parent", 42) == ["parent", 42]
        conn.send("tell_parent", "hello")
        await wait_for(lambda: told == [(1, "hello")], what="the child's send, with its connection")
        # a handler attached later reaches present and future children, and detaches on kill
        events.on("late", lambda _conn, _data: "late!")
        old_pid = conn.pid
        os.kill(old_pid, signal.SIGKILL)
        await wait_for(lambda: (c := pool.get(1)) is not None and c.pid != old_pid
                         and c.state is WorkerState.READY, what="replacement")  # fmt: skip
        new = pool.get(1)
        assert new is not None
        assert await new.request("ask_parent", "again") == ["parent", "again"]
        assert "late" in new.channel._handlers and "late" not in conn.channel._handlers
    finally:
        await pool.stop(5)


async def test_sigkilled_child_is_replaced_and_reaped(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(2, "Echo")
    seen: list[tuple[str, int]] = []
    for event in ("spawning", "ready", "killing", "exit"):
        pool.on(event, lambda c, e=event: seen.append((e, c.pid)))
    try:
        assert await pool.spawn_all()
        victim = pool.get(0)
        assert victim is not None
        os.kill(victim.pid, signal.SIGKILL)
        await wait_for(lambda: (c := pool.get(0)) is not None and c.pid != victim.pid
                         and c.state is WorkerState.READY, what="replacement")  # fmt: skip
        assert gone(victim.pid)
        assert victim.process.returncode == -signal.SIGKILL
        assert victim.state is WorkerState.STOPPED
        assert pool.slots[0].history.restarts == 1
        new_pid = pool.get(0).pid  # type: ignore[union-attr]
        assert seen.index(("killing", victim.pid)) < seen.index(("exit", victim.pid))
        assert seen.index(("exit", victim.pid)) < seen.index(("ready", new_pid))
    finally:
        await pool.stop(5)
    assert all(gone(c.pid) for c in (victim,))


async def test_scale_up_and_down(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(1, "Echo")
    try:
        assert await pool.spawn_all()
        pool.scale(3)
        assert await pool.wait_ready(20)
        pids = {i: pool.get(i).pid for i in range(3)}  # type: ignore[union-attr]
        pool.scale(1)
        await wait_for(lambda: sorted(pool.slots) == [0], what="slots 1 and 2 retired")
        assert gone(pids[1]) and gone(pids[2])
        assert pool.get(0).pid == pids[0]  # type: ignore[union-attr]
    finally:
        await pool.stop(5)


async def test_rolling_reload_new_child_ready_before_old_is_stopped(
    make_pool: Callable[..., WorkerPool],
) -> None:
    pool = make_pool(3, "Echo")
    order: list[tuple[str, int, int]] = []
    pool.on("ready", lambda c: order.append(("ready", c.slot, c.pid)))
    pool.on("killing", lambda c: order.append(("killing", c.slot, c.pid)))
    try:
        assert await pool.spawn_all()
        old = {i: pool.get(i).pid for i in range(3)}  # type: ignore[union-attr]
        order.clear()
        ready_counts: list[int] = []
        sampler = asyncio.create_task(_sample_ready(pool, ready_counts))
        assert await pool.reload()
        await wait_for(lambda: all(gone(p) for p in old.values()), what="old children gone")
        sampler.cancel()
        new = {i: pool.get(i).pid for i in range(3)}  # type: ignore[union-attr]
        assert not set(new.values()) & set(old.values())
        for slot in range(3):
            assert order.index(("ready", slot, new[slot])) < order.index(("killing", slot, old[slot]))
        assert min(ready_counts) >= 3  # never fewer ready children than slots: no gap
    finally:
        await pool.stop(5)


async def _sample_ready(pool: WorkerPool, counts: list[int]) -> None:
    while True:
        counts.append(sum(1 for i in range(pool.size) if (c := pool.get(i)) and c.state is WorkerState.READY))
        await asyncio.sleep(0.005)


async def test_stop_ladder_ends_a_child_that_ignores_everything(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(1, "IgnoresStop", kill_timeout_s=0.5, heartbeat_interval_s=60)
    assert await pool.spawn_all()
    conn = pool.get(0)
    assert conn is not None
    started = time.monotonic()
    await pool.stop(graceful_timeout_s=0.5)
    elapsed = time.monotonic() - started
    assert gone(conn.pid)
    # the child runs `time.sleep` in its loop: the asyncio SIGTERM handler never runs, SIGKILL ends it
    assert conn.process.returncode == -signal.SIGKILL
    assert 0.9 < elapsed < 5.0


async def test_second_escalation_skips_ahead(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(1, "IgnoresStop", kill_timeout_s=30, heartbeat_interval_s=60)
    assert await pool.spawn_all()
    conn = pool.get(0)
    assert conn is not None
    stopping = asyncio.create_task(pool.stop(graceful_timeout_s=30))
    await wait_for(lambda: conn.state is WorkerState.STOPPING, what="stopping")
    started = time.monotonic()
    pool.skip_ahead()  # past the graceful deadline: SIGTERM (ignored by a blocked loop)
    await asyncio.sleep(0.2)
    pool.skip_ahead()  # past the SIGTERM deadline: SIGKILL
    await asyncio.wait_for(stopping, 10)
    assert conn.process.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5


async def test_ready_timeout_kills_and_counts_a_failure(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(1, "SlowStart", ready_timeout_s=1.0, policy=RestartPolicy(backoff_initial_s=60))
    exits: list[WorkerConnection] = []
    pool.on("exit", exits.append)
    try:
        started = time.monotonic()
        assert not await pool.spawn_all(timeout_s=1.5)
        await wait_for(lambda: len(exits) == 1, what="the slow child killed")
        assert 0.9 < time.monotonic() - started < 5
        assert exits[0].process.returncode == -signal.SIGKILL
        assert exits[0].fail_reason == "not ready within 1s"
        assert pool.slots[0].history.restarts == 1
        await wait_for(lambda: (c := pool.get(0)) is not None and c.pid != exits[0].pid, what="a new try")
    finally:
        await pool.stop(2)


async def test_a_child_stopped_while_starting_exits_at_once(make_pool: Callable[..., WorkerPool]) -> None:
    """A stop that reaches a child before it is ready (here: its start() never ends) is not lost
    until the ladder's SIGTERM/SIGKILL: the child leaves at once, cleanly (it holds no work)."""

    pool = make_pool(1, "SlowStart", ready_timeout_s=60.0)
    exits: list[WorkerConnection] = []
    pool.on("exit", exits.append)
    assert not await pool.spawn_all(timeout_s=0.5)
    # a loaded machine may still be forking it: the stop is meant for a child that exists
    await wait_for(lambda: pool.get(0) is not None, what="the child started")
    started = time.monotonic()
    await pool.stop(graceful_timeout_s=30)
    assert time.monotonic() - started < 5, "the starting child waited for the stop ladder"
    assert [c.process.returncode for c in exits] == [0]


async def test_bad_import_path_is_fatal_at_once(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(2, "DoesNotExist")
    exits: list[WorkerConnection] = []
    pool.on("exit", exits.append)
    try:
        assert not await pool.spawn_all(timeout_s=20)
        await asyncio.wait_for(pool.all_fatal.wait(), 20)
        assert {c.process.returncode for c in exits} == {ExitCode.BOOT_IMPORT}
        assert all(s.state is WorkerState.FATAL for s in pool.slots.values())
        assert "boot_import" in (pool.slots[0].fatal_reason or "")
    finally:
        await pool.stop(2)


async def test_start_failure_exit_code_then_fatal_after_max_restarts(
    make_pool: Callable[..., WorkerPool],
) -> None:
    policy = RestartPolicy(max_restarts=1, backoff_initial_s=0.05)
    pool = make_pool(1, "StartFails", policy=policy)
    exits: list[WorkerConnection] = []
    pool.on("exit", exits.append)
    try:
        await asyncio.wait_for(pool.spawn_all(timeout_s=20), 25)
        await asyncio.wait_for(pool.all_fatal.wait(), 20)
        assert [c.process.returncode for c in exits] == [ExitCode.BOOT_START] * 2
    finally:
        await pool.stop(2)


async def test_max_jobs_recycles_with_the_new_child_ready_first(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(1, "Counter", max_jobs=100, stats_interval_s=0.1, monitor_interval_s=0.1)
    order: list[tuple[str, int]] = []
    pool.on("ready", lambda c: order.append(("ready", c.pid)))
    pool.on("killing", lambda c: order.append(("killing", c.pid)))
    try:
        assert await pool.spawn_all()
        first = pool.get(0)
        assert first is not None
        await wait_for(lambda: ("killing", first.pid) in order, 20, "recycling")
        # the child that replaced the first is the next one to become ready (a later recycle of
        # that one, under load, must not be mistaken for it)
        readies = [pid for event, pid in order if event == "ready"]
        second_pid = readies[readies.index(first.pid) + 1]
        assert order.index(("ready", second_pid)) < order.index(("killing", first.pid))
        # reaped by the pool's loop (its exit code is known only then, not when the pid is gone)
        assert await first.process.wait(10) == ExitCode.OK
        assert pool.slots[0].history.restarts == 0  # a recycle is not a failure
    finally:
        await pool.stop(5)
