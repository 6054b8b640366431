"""The WorkerManager's loops: a burst run ends each unit at its first round that found nothing."""

from __future__ import annotations

import pytest

from corral.workers.manager import WorkerManager


class Unit:
    def __init__(self, name: str, finds: list[int]) -> None:
        self.name = name
        self.finds = finds
        self.idle_sleep_s = 0.0

    async def run(self) -> int:
        return self.finds.pop(0) if self.finds else 0


@pytest.mark.deadline(5)
async def test_a_burst_run_ends_each_unit_at_its_first_empty_round() -> None:
    manager = WorkerManager()
    busy, idle = Unit("busy", [3, 2, 0, 5]), Unit("idle", [])
    manager.register_worker(busy)
    manager.register_worker(idle)
    await manager.run(burst=True)
    assert manager.stats["busy"].processed == 5 and manager.stats["busy"].rounds == 3
    assert busy.finds == [5]  # not taken: the burst ended at the empty round
    assert manager.stats["idle"].rounds == 1


async def test_a_burst_run_of_no_unit_returns_at_once() -> None:
    await WorkerManager().run(burst=True)
