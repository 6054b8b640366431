"""A free lane takes work at once (continuous refill), and a long job saves its place
(``ctx.checkpoint``) and sees its worker stopping (``ctx.stopping``). The refill tests failed on
main, where a round held its whole batch until its slowest job ended."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from corral.workers.jobs.wire import encode_job
from tests.integration.conftest import KEYS, H, client, equals, queue_work, wait_for
from tests.integration.workers.test_never_twice import overlaps, runs, settled


def steps(out: Path) -> list[tuple[int, int]]:
    """(step, attempt) of every step marked, in order."""
    lines = out.read_text().splitlines() if out.exists() else []
    return [(int(step), int(attempt)) for _, _, step, attempt, _ in (line.split() for line in lines)]


async def test_a_free_lane_takes_work_while_a_long_job_runs(
    redis_clean: Any, local_worker: Any, tmp_path: Path
) -> None:
    """concurrency 4: a 3 s job and three short ones, then two more short ones: the late ones run
    in the free lanes and end long before the long job does."""

    r = client(redis_clean.url)
    out = tmp_path / "marks"
    jobs = [encode_job({"n": n, "s": 3.0 if n == 1 else 0.2, "out": str(out)}) for n in range(1, 5)]
    await r.lpush("rq", *jobs)
    work = queue_work(redis_clean.url, names=("rq",), handler=f"{H}:mark_async", concurrency=4)
    worker = await local_worker(work)
    try:
        await wait_for(lambda: len([x for x in runs(out) if x.end]) == 3, what="the short jobs done")
        await r.lpush("rq", *(encode_job({"n": n, "s": 0.2, "out": str(out)}) for n in (5, 6)))
        await wait_for(lambda: settled(r, "rq", out, 6), timeout_s=20, what="every job done")
    finally:
        await worker.stop()
        await r.aclose()
    found = {x.n: x for x in runs(out)}
    assert found["5"].end < found["1"].end and found["6"].end < found["1"].end, found  # type: ignore[operator]


async def test_a_worker_holds_only_what_its_lanes_take(
    redis_clean: Any, local_worker: Any, tmp_path: Path
) -> None:
    """Four 1 s jobs, batch_size 50, concurrency 1: a worker holds one at a time (it has seen no
    handling time yet, so nothing is prefetched), and a second worker takes the next at once."""

    r = client(redis_clean.url)
    out = tmp_path / "marks"
    await r.lpush("hq", *(encode_job({"n": n, "s": 1.0, "out": str(out)}) for n in range(4)))
    work = queue_work(redis_clean.url, names=("hq",), handler=f"{H}:mark_async")
    a = await local_worker(work, name="a")
    b = None
    try:
        await wait_for(lambda: runs(out), what="a's first job")
        assert await r.llen(KEYS.processing("hq", a.worker_id)) == 1 and await r.llen("hq") == 3
        b = await local_worker(work, name="b")
        await wait_for(lambda: equals(r.llen(KEYS.processing("hq", b.worker_id)), 1), what="b takes one")
        await wait_for(lambda: settled(r, "hq", out, 4), timeout_s=20, what="every job done")
    finally:
        for worker in (a, b):
            if worker is not None:
                await worker.stop()
        await r.aclose()
    assert overlaps(runs(out)) == 0 and len(runs(out)) == 4


@pytest.mark.parametrize("handler", ["steps_sync", "steps_async"])
async def test_a_stopping_worker_hands_its_job_back_with_its_checkpoint(
    redis_clean: Any, local_worker: Any, tmp_path: Path, handler: str
) -> None:
    """A stop mid-job: the handler sees ``ctx.stopping`` and requeues; the next worker goes on from
    its checkpoint: every step done once, none skipped."""

    r = client(redis_clean.url)
    out = tmp_path / "steps"
    await r.lpush("cq", encode_job({"n": 1, "steps": 8, "s": 0.15, "out": str(out)}))
    work = queue_work(redis_clean.url, names=("cq",), handler=f"{H}:{handler}")
    a = await local_worker(work, name="a")
    try:
        await wait_for(lambda: len(steps(out)) >= 2, what="two steps done")
    finally:
        await a.stop()
    [raw] = await r.lrange("cq", 0, -1)  # back at the front, with its place
    saved = json.loads(raw)["checkpoint"]["next"]
    assert saved == len(steps(out)) < 8
    b = await local_worker(work, name="b")
    try:
        await wait_for(lambda: len(steps(out)) >= 8, what="every step done")
        await wait_for(lambda: equals(r.llen(KEYS.processing("cq", b.worker_id)), 0), what="b's ack")
    finally:
        await b.stop()
        await r.aclose()
    done = Counter(step for step, _ in steps(out))
    assert done == Counter(range(8)), steps(out)  # each step once: none repeated, none skipped
    assert {attempt for _, attempt in steps(out)} == {1}  # a hand-back is no failed attempt


async def test_a_checkpoint_of_a_job_recovered_away_is_refused(
    redis_clean: Any, local_worker: Any, tmp_path: Path
) -> None:
    """A worker whose job was recovered away (as from a worker cut off from Redis) cannot save over
    it: its checkpoint raises ``JobLost``, counted as refused; the queued job keeps its place."""

    r = client(redis_clean.url)
    out = tmp_path / "steps"
    await r.lpush("lq", encode_job({"n": 1, "steps": 50, "s": 0.1, "out": str(out)}))
    work = queue_work(redis_clean.url, names=("lq",), handler=f"{H}:steps_async")
    a = await local_worker(work, name="a")
    peer = await local_worker(work, name="peer", start=False)
    try:
        # paused (seen by a's next take: its pause cache, 0.5 s, is older by then): a cannot take the
        # job back once it has lost it
        await wait_for(lambda: len(steps(out)) >= 6, what="six steps done")
        await r.set(KEYS.paused("lq"), 1)
        assert (await peer.consumers.recover(a.worker_id, force=True))["jobs"] == 1
        done = len(steps(out))
        stats = a.consumers.queues[0].stats
        await wait_for(lambda: stats["lq"].refused == 1, what="a's next checkpoint refused")
        assert len(steps(out)) <= done + 1  # a stopped at the step in progress
        [raw] = await r.lrange("lq", 0, -1)
        assert json.loads(raw)["checkpoint"]["next"] >= 1
        assert stats["lq"].failed == 0
    finally:
        await a.stop()
        await r.aclose()
