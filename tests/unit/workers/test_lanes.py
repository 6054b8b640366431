"""Lanes refilled as they free, and how much a take asks for (no Redis: a refill is a function)."""

from __future__ import annotations

import asyncio

import pytest

from corral.workers.consumers.lanes import TakeSizer, run_all


def test_a_take_asks_for_the_free_lanes_until_handling_times_are_known() -> None:
    sizer = TakeSizer(batch_size=50, concurrency=4, prefetch_ms=100)
    assert sizer.size(free=4) == 4 and sizer.size(free=1) == 1
    sizer.observe(0.001)  # 1 ms jobs: 4 lanes start 400 in 100 ms, a batch's worth
    assert sizer.size(free=1) == 50
    for _ in range(20):
        sizer.observe(3.0)  # long jobs: nothing beyond the free lanes
    assert sizer.size(free=2) == 2
    assert TakeSizer(batch_size=50, concurrency=1, prefetch_ms=0).size(free=1) == 1


def test_free_lanes_take_what_a_refill_brings_while_a_long_item_runs() -> None:
    done: list[str] = []
    arrivals = [[], [("late",)]]  # the first refill finds nothing, the next one an item

    async def handle(name: str) -> None:
        await asyncio.sleep(0.3 if name == "long" else 0.01)
        done.append(name)

    async def refill(free: int) -> list[tuple[str]]:
        assert free >= 1
        return arrivals.pop(0) if arrivals else []

    asyncio.run(run_all([("long",), ("short",)], handle, 2, refill))
    assert done == ["short", "late", "long"]


def test_a_refill_that_fails_lets_the_items_in_hand_finish_then_raises() -> None:
    done: list[str] = []

    async def handle(name: str) -> None:
        await asyncio.sleep(0.2 if name == "long" else 0.01)
        done.append(name)

    async def refill(_free: int) -> list[tuple[str]]:
        raise ConnectionError("Redis went away")

    with pytest.raises(ConnectionError):
        asyncio.run(run_all([("long",), ("short",)], handle, 2, refill))
    assert sorted(done) == ["long", "short"]


def test_one_lane_refills_in_order_and_ends_when_nothing_comes() -> None:
    done: list[int] = []
    batches = [[(2,), (3,)], [(4,)]]

    async def handle(n: int) -> None:
        done.append(n)

    async def refill(free: int) -> list[tuple[int]]:
        assert free == 1
        return batches.pop(0) if batches else []

    asyncio.run(run_all([(1,)], handle, 1, refill))
    assert done == [1, 2, 3, 4]
