"""Never twice at once: a worker that is alive but late (a reload or recycle, a Redis stall, a blocked
loop, a neighbouring lane's error) never has its job taken over while it still runs it.

Each handler writes a start and an end mark per run to a file (``redis_handlers._mark``); the checks
count overlapping runs of one job, and the attempts, from those marks. Each test failed on main
before the lease moved to its own thread and fenced (docs/design.md, section 5, "Fencing").
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from corral.contract import WorkSpec
from corral.supervisor.status import slot_rows
from corral.workers.consumers.membership import Membership
from corral.workers.jobs.wire import encode_job
from corral.workers.lease import Lease
from tests.integration.conftest import KEYS, POOL, H, client, equals, queue_work, redis_spec, wait_for

STALL_S = 3.0


@dataclass
class Run:
    n: str
    attempt: int
    pid: int
    start: float
    end: float | None = None


def runs(path: Path, exits: dict[int, float] | None = None) -> list[Run]:
    """Every run the marks in ``path`` record, in the order they started; a run whose process ended
    before its end mark ends when the supervisor saw that exit (``exits``: pid -> unix time)."""
    found: list[Run] = []
    for line in path.read_text().splitlines() if path.exists() else []:
        what, n, attempt, pid, at = line.split()
        if what == "start":
            found.append(Run(n, int(attempt), int(pid), float(at)))
        else:
            run = next(r for r in found if (r.n, r.pid, r.end) == (n, int(pid), None))
            run.end = float(at)
    for run in found:
        if run.end is None and exits and run.pid in exits:
            run.end = exits[run.pid]
    return found


def overlaps(found: list[Run]) -> int:
    """Pairs of runs of one job that were under way at the same time (a run never ended: until now)."""
    count = 0
    for i, a in enumerate(found):
        for b in found[i + 1 :]:
            if a.n == b.n and b.start < (a.end or float("inf")) and a.start < (b.end or float("inf")):
                count += 1
    return count


def assert_ran_once(out: Path) -> None:
    """Job 1 ran once, on its first attempt: no second run, overlapping or not."""
    found = runs(out)
    assert overlaps(found) == 0 and [(x.n, x.attempt) for x in found] == [("1", 1)], found


def short_lease(work: WorkSpec, ttl_s: float = 1.5, **redis: Any) -> WorkSpec:
    return dataclasses.replace(work, redis=dataclasses.replace(work.redis, member_ttl_s=ttl_s, **redis))


async def settled(r: Any, queue: str, out: Path, jobs: int, exits: dict[int, float] | None = None) -> bool:
    """Every job ran to its end, none waits in the queue and none is held in a processing list."""
    found = runs(out, exits)
    if len({run.n for run in found}) < jobs or any(run.end is None for run in found) or await r.llen(queue):
        return False
    held = [await r.llen(key) for key in await r.keys(f"{KEYS.processing(queue, '')}*")]
    return not any(held)


@pytest.mark.parametrize(("how", "handler"), [("recycle", "mark_sync"), ("reload", "mark_async")])
async def test_a_child_replaced_mid_job_keeps_its_job_until_it_ends(
    redis_clean: Any, consumer_pool: Any, tmp_path: Path, handler: str, how: str
) -> None:
    """A 4 s job, its child recycled or reloaded at once: the stopping child finishes it (within
    graceful_timeout_s) while its lease holds; nobody else starts it meanwhile."""

    r = client(redis_clean.url)
    out = tmp_path / "marks"
    work = short_lease(queue_work(redis_clean.url, names=("lq",), handler=f"{H}:{handler}", batch_size=1))
    cp = consumer_pool(2, work)
    try:
        assert await cp.pool.spawn_all()
        await r.lpush("lq", encode_job({"n": 1, "s": 4, "out": str(out)}))
        await wait_for(lambda: runs(out), what="the job started")
        if how == "recycle":
            slot = next(s for s in (0, 1) if cp.pid(s) == runs(out)[0].pid)
            cp.pool.request_recycle(slot, "a test")
        else:
            assert await cp.pool.reload()
        await wait_for(lambda: settled(r, "lq", out, 1), timeout_s=30, what="the job done")
    finally:
        await cp.pool.stop(10)
        await r.aclose()
    assert_ran_once(out)


async def test_a_blocked_loop_keeps_its_lease(redis_clean: Any, consumer_pool: Any, tmp_path: Path) -> None:
    """An async handler that blocks its loop for 4 s (past a 1.5 s lease, short of hang detection)
    keeps its lease (renewed by a thread), so no peer recovers and runs its job meanwhile."""

    r = client(redis_clean.url)
    out = tmp_path / "marks"
    work = short_lease(queue_work(redis_clean.url, names=("bq",), handler=f"{H}:mark_blocking"))
    cp = consumer_pool(2, work, heartbeat_interval_s=2.0, heartbeat_timeout_s=10.0)
    try:
        assert await cp.pool.spawn_all()
        await r.lpush("bq", encode_job({"n": 1, "s": 4, "out": str(out)}))
        await wait_for(lambda: settled(r, "bq", out, 1), timeout_s=30, what="the job done")
    finally:
        await cp.pool.stop(10)
        await r.aclose()
    assert_ran_once(out)


@pytest.mark.deadline(90)
async def test_a_redis_stall_past_the_lease_fences_instead_of_running_twice(
    redis_clean: Any, consumer_pool: Any, tmp_path: Path
) -> None:
    """The server stopped for 3 s (SIGSTOP) under two 5 s jobs with a 2 s lease: each worker, unable
    to renew, ends itself before its lease can lapse; the jobs run again after the stall, never
    beside their first run, and no death is counted against them (attempt 1 each time)."""

    r = client(redis_clean.url)
    out = tmp_path / "marks"
    work = short_lease(
        queue_work(redis_clean.url, names=("sq",), handler=f"{H}:mark_async", batch_size=1),
        ttl_s=2.0,
        socket_timeout_s=1.0,  # the stall outlasts it: commands time out, clients back off
    )
    cp = consumer_pool(2, work)
    exits: dict[int, float] = {}
    cp.pool.on("exit", lambda conn: exits.setdefault(conn.pid, time.time()))
    stopped = False
    try:
        assert await cp.pool.spawn_all()
        await r.lpush("sq", *[encode_job({"n": n, "s": 5, "out": str(out)}) for n in (1, 2)])
        await wait_for(lambda: len(runs(out)) == 2, what="both jobs started")
        os.kill(redis_clean.pid, signal.SIGSTOP)
        stopped = True
        await asyncio.sleep(STALL_S)  # the fault: a server that answers nothing for this long
        os.kill(redis_clean.pid, signal.SIGCONT)
        stopped = False
        await wait_for(lambda: settled(r, "sq", out, 2, exits), timeout_s=40, what="both jobs done")
    finally:
        if stopped:
            os.kill(redis_clean.pid, signal.SIGCONT)
        await cp.pool.stop(10)
        await r.aclose()
    found = runs(out, exits)
    assert overlaps(found) == 0, found
    assert {x.attempt for x in found} == {1}, found
    assert len(found) == 4  # each job: its run cut by the fence, and its run after the stall
    assert cp.log().count("fencing this worker") == 2
    assert {x.n for x in found if x.end is not None} == {"1", "2"}


async def test_a_neighbouring_lanes_redis_error_does_not_run_a_job_twice(
    redis_clean: Any, local_worker: Any, tmp_path: Path
) -> None:
    """``concurrency = 2``: a sync job sleeping 2 s beside one whose handler raises a Redis error once.
    The error is that handler's failure (retried), not an outage of the round: the sleeping job
    is neither put back nor started again while its thread runs."""

    r = client(redis_clean.url)
    out = tmp_path / "marks"
    work = queue_work(
        redis_clean.url, names=("nq",), handler=f"{H}:mark_or_redis_error", concurrency=2, batch_size=2,
        backoff_initial_s=0.05,
    )  # fmt: skip
    jobs = [{"n": 1, "s": 2, "out": str(out)}, {"n": 2, "s": 0, "out": str(out), "redis_error": True}]
    await r.lpush("nq", *[encode_job(job) for job in jobs])
    worker = await local_worker(work)
    try:
        await wait_for(lambda: settled(r, "nq", out, 2), timeout_s=20, what="both jobs done")
    finally:
        await worker.stop()
        await r.aclose()
    found = runs(out)
    assert overlaps(found) == 0, found
    assert sorted((x.n, x.attempt) for x in found) == [("1", 1), ("2", 1), ("2", 2)], found
    assert worker.consumers.queues[0].stats["nq"].failed == 1


async def test_a_handler_that_always_raises_a_redis_error_is_dead_lettered(
    redis_clean: Any, local_worker: Any, tmp_path: Path
) -> None:
    r = client(redis_clean.url)
    out = tmp_path / "marks"
    work = queue_work(
        redis_clean.url, names=("eq",), handler=f"{H}:mark_or_redis_error", max_attempts=2,
        backoff_initial_s=0.05,
    )  # fmt: skip
    await r.lpush("eq", encode_job({"n": 1, "s": 0, "out": str(out), "redis_error": "always"}))
    worker = await local_worker(work)
    try:
        await wait_for(lambda: equals(r.llen(KEYS.dead("eq")), 1), timeout_s=10, what="a dead letter")
    finally:
        await worker.stop()
        await r.aclose()
    assert [x.attempt for x in runs(out)] == [1, 2]


async def test_a_worker_that_cannot_renew_fences_itself_before_its_lease_lapses(redis_clean: Any) -> None:
    """Renewals fail (the server stopped): the fence acts 0.8 x the lease after the last renewal's
    send, before the server could see the lease lapse; no take may be sent from then on."""

    r = client(redis_clean.url)
    fenced: list[float] = []
    spec = redis_spec(redis_clean.url, member_ttl_s=2.0)
    lease = Lease(spec, members=KEYS.members(POOL), worker_id=f"testhost:{POOL}:w", holding=lambda: True,
                  on_fence=lambda _reason: fenced.append(time.time()))  # fmt: skip
    stopped = False
    try:
        await lease.join()
        assert lease.valid()
        expires_ms = await r.zscore(KEYS.members(POOL), lease.worker_id)
        os.kill(redis_clean.pid, signal.SIGSTOP)
        stopped = True
        await wait_for(lambda: fenced, timeout_s=5, what="the fence")
        assert not lease.valid()  # (a renewal after the server is back makes it valid again)
    finally:
        if stopped:
            os.kill(redis_clean.pid, signal.SIGCONT)
        lease.stop()
        await r.aclose()
    assert fenced[0] * 1000 < expires_ms - 200, (fenced[0] * 1000, expires_ms)


async def test_a_worker_holding_nothing_is_not_fenced(redis_clean: Any) -> None:
    fenced: list[str] = []
    spec = redis_spec(redis_clean.url, member_ttl_s=1.0)
    lease = Lease(spec, members=KEYS.members(POOL), worker_id=f"testhost:{POOL}:w", holding=lambda: False,
                  on_fence=fenced.append)  # fmt: skip
    stopped = False
    try:
        await lease.join()
        os.kill(redis_clean.pid, signal.SIGSTOP)
        stopped = True
        await wait_for(lambda: not lease.valid(), timeout_s=5, what="the lease no longer valid")
        await asyncio.sleep(0.3)  # the fence thread's rounds: it acts within 0.1 s when it must
    finally:
        if stopped:
            os.kill(redis_clean.pid, signal.SIGCONT)
        lease.stop()
    assert fenced == []


def test_a_worker_back_from_an_outage_sweeps_no_peer_for_a_whole_lease(redis_clean: Any, run: Any) -> None:
    """Its peers were likely cut off too: they get a full lease to renew before anyone recovers them."""

    @dataclass
    class LeaseBackFromOutage:
        ttl_s: float = 10.0
        steady: float = 1.0  # renewals succeeded this long since the last failure

        async def join(self) -> None:
            return None

        def steady_s(self) -> float:
            return self.steady

    async def body() -> None:
        r = client(redis_clean.url)
        tried: list[str] = []

        async def recover(member: str, died: bool = True) -> dict[str, int]:
            tried.append(member)
            return {}

        lease = LeaseBackFromOutage()
        unit = Membership(redis=r, keys=KEYS, pool=POOL, worker_id="me", lease=lease, recover=recover)  # type: ignore[arg-type]
        await r.zadd(KEYS.members(POOL), {"testhost:test:late": 1})  # its lease ran out during the outage
        await unit.run()
        assert tried == []
        lease.steady = 10.0
        await unit.run()
        assert tried == ["testhost:test:late"]
        await r.aclose()

    run(body())


async def test_a_round_cut_short_by_redis_lets_a_running_sync_job_finish(
    redis_clean: Any, local_worker: Any, tmp_path: Path
) -> None:
    """``concurrency = 2``: the consumer's own Redis command fails while settling one job, while the
    other's sync handler sleeps 2 s in its thread: that job is neither put back nor started again
    while it runs; the round's work is put back once it has finished."""

    r = client(redis_clean.url)
    out = tmp_path / "marks"
    work = queue_work(redis_clean.url, names=("rq",), handler=f"{H}:mark_or_fail", concurrency=2,
                      batch_size=2, backoff_initial_s=0.05)  # fmt: skip
    jobs = [{"n": 1, "s": 2, "out": str(out)}, {"n": 2, "s": 0, "out": str(out), "fail": True}]
    await r.lpush("rq", *[encode_job(job) for job in jobs])
    worker = await local_worker(work, start=False)
    [consumer] = worker.consumers.queues
    move = consumer.settlement.move

    async def lost_once(*args: Any, **kwargs: Any) -> None:
        consumer.settlement.move = move  # type: ignore[method-assign]
        raise RedisConnectionError("simulated: the consumer's connection dropped while settling")

    consumer.settlement.move = lost_once  # type: ignore[method-assign]
    worker.start()
    try:
        await wait_for(lambda: settled(r, "rq", out, 2), timeout_s=20, what="both jobs done")
    finally:
        await worker.stop()
        await r.aclose()
    found = runs(out)
    assert overlaps(found) == 0, found
    assert [x.n for x in found].count("1") == 1, found


async def test_a_reload_drains_a_job_longer_than_the_stop_deadline(
    redis_clean: Any, consumer_pool: Any, tmp_path: Path
) -> None:
    """graceful_timeout_s = 1 and a 4 s job on a queue whose timeout_s is 10: the old child of the
    reload finishes it (draining, shown as such) while its ready replacement takes new work."""

    r = client(redis_clean.url)
    out = tmp_path / "marks"
    work = queue_work(redis_clean.url, names=("dq",), handler=f"{H}:mark_async", batch_size=1, timeout_s=10.0)
    cp = consumer_pool(1, work, graceful_timeout_s=1.0)
    try:
        assert await cp.pool.spawn_all()
        await r.lpush("dq", encode_job({"n": 1, "s": 4, "out": str(out)}))
        await wait_for(lambda: runs(out), what="the long job started")
        assert await cp.pool.reload()
        [draining] = [row for row in slot_rows(cp.pool) if row["state"] == "draining"]
        assert draining["pid"] == runs(out)[0].pid
        await wait_for(  # what it holds, from its stats (sent every second)
            lambda: [r for r in slot_rows(cp.pool) if "1 in hand" in str(r["reason"])], what="in hand"
        )
        await r.lpush("dq", encode_job({"n": 2, "s": 0, "out": str(out)}))  # for the new child
        await wait_for(lambda: any(x.n == "2" and x.end for x in runs(out)), what="the new child's job")
        assert runs(out)[0].end is None, "the new child waited for the old one"
        await wait_for(lambda: settled(r, "dq", out, 2), timeout_s=20, what="the long job done")
    finally:
        await cp.pool.stop(10)
        await r.aclose()
    found = runs(out)
    assert sorted((x.n, x.attempt) for x in found) == [("1", 1), ("2", 1)], found
    assert found[0].pid != found[1].pid


async def test_status_says_when_a_child_cannot_reach_redis(redis_clean: Any, consumer_pool: Any) -> None:
    work = short_lease(queue_work(redis_clean.url, names=("uq",), handler=f"{H}:count_job"), ttl_s=2.0)
    cp = consumer_pool(1, work)
    stopped = False
    try:
        assert await cp.pool.spawn_all()
        assert slot_rows(cp.pool)[0]["reason"] is None
        os.kill(redis_clean.pid, signal.SIGSTOP)
        stopped = True
        [row] = await wait_for(
            lambda: [r for r in slot_rows(cp.pool) if "Redis unreachable" in str(r["reason"])], 10, "said"
        )
        os.kill(redis_clean.pid, signal.SIGCONT)
        stopped = False
        await wait_for(lambda: slot_rows(cp.pool)[0]["reason"] is None, 10, "no longer said")
    finally:
        if stopped:
            os.kill(redis_clean.pid, signal.SIGCONT)
        await cp.pool.stop(10)
    assert row["state"] == "redis-down" and row["reason"].endswith("(lease not renewed)")
