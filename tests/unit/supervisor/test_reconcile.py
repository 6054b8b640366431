"""reconcile() with a fake clock and fake children: which slots it starts, backs off, gives up on,
retires and recycles. No processes are started here."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from corral.contract import ExitCode
from corral.supervisor.pool import Slot, WorkerPool
from corral.supervisor.states import RestartPolicy, WorkerState


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None


class FakeConn:
    def __init__(self, slot: int, pid: int) -> None:
        self.slot = slot
        self.pid = pid
        self.process = FakeProcess(pid)
        self.state = WorkerState.READY
        self.alive = True
        self.stop_requested = False
        self.uptime_s = 1.0
        self.log = __import__("loguru").logger

    def exit_description(self) -> str:
        return ExitCode.describe(self.process.returncode)


class FakePool(WorkerPool):
    """The real reconcile(); launching, replacing and retiring are recorded instead of run."""

    def __init__(self, size: int, clock: FakeClock, policy: RestartPolicy) -> None:
        super().__init__("fake", size, "x:y", clock=clock, policy=policy)
        self.launched: list[int] = []
        self.replaced: list[tuple[int, str]] = []
        self.retired: list[int] = []
        self.next_pid = 100

    async def _launch(self, slot: Slot, replacing: bool) -> bool:
        slot.backoff_until = 0.0
        self.launched.append(slot.index)
        self.next_pid += 1
        slot.current = FakeConn(slot.index, self.next_pid)  # type: ignore[assignment]
        return True

    async def _replace(self, slot: Slot, reason: str) -> bool:
        self.replaced.append((slot.index, reason))
        slot.recycle_reason = None
        return True

    def _retire(self, slot: Slot) -> None:
        self.retired.append(slot.index)
        del self.slots[slot.index]

    def crash(self, index: int, code: int = 1, uptime_s: float = 1.0) -> None:
        """What _watch does when a child exits without being asked to."""
        slot = self.slots[index]
        conn: Any = slot.current
        conn.process.returncode, conn.uptime_s, conn.alive = code, uptime_s, False
        slot.current = None
        slot.exited_unasked(conn, self.clock())


def run(
    test: Callable[[FakePool, FakeClock], Coroutine[Any, Any, None]], size: int = 3, **policy: Any
) -> None:
    async def main() -> None:
        clock = FakeClock()
        pool = FakePool(size, clock, RestartPolicy(**policy))
        await test(pool, clock)

    asyncio.run(main())


async def settle() -> None:
    for _ in range(3):  # let the slot tasks started by reconcile() run
        await asyncio.sleep(0)


def test_fills_every_slot_once() -> None:
    async def body(pool: FakePool, _clock: FakeClock) -> None:
        assert pool.reconcile() is None
        await settle()
        assert sorted(pool.launched) == [0, 1, 2]
        pool.reconcile()
        await settle()
        assert sorted(pool.launched) == [0, 1, 2]  # nothing more: every slot has a child

    run(body)


def test_a_crash_backs_off_on_the_clock() -> None:
    async def body(pool: FakePool, clock: FakeClock) -> None:
        pool.reconcile()
        await settle()
        pool.crash(1)  # first failure: restart at once
        pool.reconcile()
        await settle()
        assert pool.launched.count(1) == 2
        pool.crash(1)  # second quick failure: back off 0.5 s
        next_at = pool.reconcile()
        await settle()
        assert next_at == pytest.approx(clock.now + 0.5)
        assert pool.launched.count(1) == 2
        assert pool.slots[1].state is WorkerState.BACKOFF
        reason = pool.slots[1].reason(clock.now)  # what `corral status` shows for the slot
        assert reason is not None and reason.startswith(ExitCode.describe(1)) and "restart in 0.5s" in reason
        clock.now += 0.49
        pool.reconcile()
        await settle()
        assert pool.launched.count(1) == 2
        clock.now += 0.02
        assert pool.reconcile() is None
        await settle()
        assert pool.launched.count(1) == 3

    run(body, backoff_initial_s=0.5)


def test_a_fenced_child_is_replaced_at_once_and_is_no_failure() -> None:
    """Exit code 8: the child ended itself while Redis was away (its lease could lapse): a safety
    stop, not a crash: no backoff, no restart counted, never fatal however often."""

    async def body(pool: FakePool, _clock: FakeClock) -> None:
        pool.reconcile()
        await settle()
        for _ in range(10):
            pool.crash(1, code=ExitCode.FENCED)
            assert pool.reconcile() is None
            await settle()
        assert pool.launched.count(1) == 11
        assert pool.slots[1].history.restarts == 0 and pool.slots[1].state is not WorkerState.FATAL

    run(body, max_restarts=2)


def test_crash_loop_makes_the_slot_fatal_and_the_others_keep_running() -> None:
    async def body(pool: FakePool, clock: FakeClock) -> None:
        pool.reconcile()
        await settle()
        for _ in range(3):
            pool.crash(0)
            clock.now += 10.0
            pool.reconcile()
            await settle()
        assert pool.slots[0].state is WorkerState.FATAL
        assert "3 failures within 60s" in (pool.slots[0].fatal_reason or "")
        launches = pool.launched.count(0)
        clock.now += 100.0
        pool.reconcile()
        await settle()
        assert pool.launched.count(0) == launches  # a fatal slot is not restarted
        assert pool.slots[1].state is WorkerState.READY
        assert not pool.all_fatal.is_set()

    run(body, max_restarts=2, backoff_initial_s=0.0)


def test_import_error_is_fatal_at_once_and_all_fatal_is_signalled() -> None:
    async def body(pool: FakePool, _clock: FakeClock) -> None:
        pool.reconcile()
        await settle()
        for index in range(2):
            pool.crash(index, code=ExitCode.BOOT_IMPORT, uptime_s=0.1)
        pool.reconcile()
        assert [s.state for s in pool.slots.values()] == [WorkerState.FATAL] * 2
        assert pool.all_fatal.is_set()

    run(body, size=2)


def test_scale_down_retires_the_highest_slots_and_scale_up_adds_new_ones() -> None:
    async def body(pool: FakePool, _clock: FakeClock) -> None:
        pool.reconcile()
        await settle()
        pool.size = 1
        pool.reconcile()
        assert sorted(pool.retired) == [1, 2]
        assert sorted(pool.slots) == [0]
        pool.size = 4
        pool.reconcile()
        await settle()
        assert sorted(pool.slots) == [0, 1, 2, 3]

    run(body)


def test_a_recycle_request_replaces_only_a_ready_child() -> None:
    async def body(pool: FakePool, _clock: FakeClock) -> None:
        pool.reconcile()
        await settle()
        conn: Any = pool.slots[2].current
        conn.state = WorkerState.STARTING
        pool.request_recycle(2, "too big")
        pool.reconcile()
        await settle()
        assert pool.replaced == []
        conn.state = WorkerState.READY
        pool.reconcile()
        await settle()
        assert pool.replaced == [(2, "too big")]

    run(body)


def test_nothing_is_started_once_stopping() -> None:
    async def body(pool: FakePool, _clock: FakeClock) -> None:
        pool.stopping = True
        assert pool.reconcile() is None
        await settle()
        assert pool.launched == []

    run(body)
