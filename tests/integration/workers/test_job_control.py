"""Job control against real servers: pause/resume, rate limits, unique jobs and priorities, with
in-process consumers (the cross-host figures are in tests/e2e/test_job_control_hosts.py)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from corral.contract import StreamSpec, WorkSpec
from corral.workers.ops.operations import Operations
from corral.workers.producer import DuplicateJob, aenqueue
from tests.integration.conftest import KEYS, H, at_least, client, equals, queue_work, redis_spec, wait_for

QUIET_S = 0.6  # a window in which a paused queue must not move (the pause is seen within CHECK_S)


async def test_a_paused_queue_keeps_its_jobs_until_resumed(redis_any: Any, local_worker: Any) -> None:
    r = client(redis_any.url)
    work = queue_work(redis_any.url, names=("pq",), handler=f"{H}:count_job")
    worker = await local_worker(work)
    ops = Operations(r, work)
    try:
        first = await aenqueue(r, "pq", {"n": 0})
        await wait_for(lambda: r.hexists("test:handled", first), what="a job before the pause")
        await ops.pause("pq")
        stats = worker.consumers.queues[0].stats
        await wait_for(lambda: stats["pq"].paused, timeout_s=2, what="the consumer seeing the pause")
        assert await ops.paused() == {"pq": pytest.approx(time.time(), abs=5)}
        for n in range(10):
            await aenqueue(r, "pq", {"n": n})
        await asyncio.sleep(QUIET_S)  # the window observed, not a synchronisation
        assert await r.llen("pq") == 10 and await r.hlen("test:handled") == 1
        await ops.resume("pq")
        await wait_for(lambda: equals(r.hlen("test:handled"), 11), what="every job after resume")
        assert not stats["pq"].paused and await ops.paused() == {}
    finally:
        await worker.stop()
        await r.aclose()


async def test_a_paused_stream_is_not_read_until_resumed(redis_clean: Any, local_worker: Any) -> None:
    r = client(redis_clean.url)
    spec = StreamSpec(stream="ps", handler=f"{H}:count_entry", group="g", block_ms=200)
    work = WorkSpec(redis=redis_spec(redis_clean.url), streams=(spec,))
    ops = Operations(r, work)
    await ops.pause("ps")
    worker = await local_worker(work)
    try:
        for n in range(5):
            await r.xadd("ps", {"n": str(n)})
        unit = worker.consumers.streams[0]
        await wait_for(lambda: unit.paused, timeout_s=2, what="the consumer seeing the pause")
        await asyncio.sleep(QUIET_S)
        assert await r.hlen("test:handled_entries") == 0 and unit.stats()["paused"] == 1
        await ops.resume("ps")
        await wait_for(lambda: equals(r.hlen("test:handled_entries"), 5), what="the entries after resume")
    finally:
        await worker.stop()
        await r.aclose()


@pytest.mark.parametrize("redis_any", ["standalone", "cluster"], indirect=True)
def test_a_rate_limit_holds_across_workers(redis_any: Any, local_worker: Any, run: Any) -> None:
    """Two consumers of one queue limited to 50/s: together they take 50 a second, never by taking
    and putting back (nothing is requeued), and status counts the takes held back."""
    rate, jobs = 50, 150

    async def body() -> list[float]:
        r = client(redis_any.url)
        work = queue_work(redis_any.url, names=("rq",), handler=f"{H}:note_time", rate_limit=f"{rate}/s")
        await r.lpush("rq", *(json.dumps({"n": n}) for n in range(jobs)))
        workers = [await local_worker(work, name=f"w{i}") for i in range(2)]
        try:
            await wait_for(lambda: equals(r.hlen("test:handled"), jobs), timeout_s=20, what="every job")
        finally:
            for worker in workers:
                await worker.stop()
        stats = [w.consumers.queues[0].stats["rq"] for w in workers]
        assert sum(s.throttled for s in stats) > 0 and sum(s.requeued for s in stats) == 0
        assert all(s.processed > 0 for s in stats), "both consumers took a share"
        times = sorted(float(v) for v in (await r.hgetall("test:handled_at")).values())
        await r.aclose()
        return times

    times = run(body())
    burst = max(1, rate // 10)
    measured = (len(times) - burst - 1) / (times[-1] - times[burst])  # past the first burst
    print(f"rate limit {rate}/s on {redis_any.kind}, 2 workers: {measured:.1f} jobs/s over {len(times)} jobs")
    assert rate * 0.9 <= measured <= rate * 1.1, measured


async def test_a_unique_job_is_refused_while_queued_or_running_and_released_after(
    redis_any: Any, local_worker: Any
) -> None:
    r = client(redis_any.url)
    first = await aenqueue(r, "uq", {"n": 1}, unique_key="report:42")
    with pytest.raises(DuplicateJob) as refused:
        await aenqueue(r, "uq", {"n": 2}, unique_key="report:42")
    assert refused.value.job_id == first and await r.llen("uq") == 1  # reported, not doubled
    other = await aenqueue(r, "uq", {"n": 3}, unique_key="report:43")  # another key: fine
    worker = await local_worker(queue_work(redis_any.url, names=("uq",), handler=f"{H}:count_job"))
    try:
        await wait_for(lambda: equals(r.hlen("test:handled"), 2), what="both jobs")
        await wait_for(lambda: equals(r.exists(KEYS.unique("uq", "report:42")), 0), what="lock released")
        again = await aenqueue(r, "uq", {"n": 4}, unique_key="report:42")  # done: accepted again
        await wait_for(lambda: r.hexists("test:handled", again), what="the job enqueued again")
    finally:
        await worker.stop()
    assert other != first
    await r.aclose()


async def test_a_unique_job_keeps_its_key_through_retries_and_frees_it_when_dead(
    redis_clean: Any, local_worker: Any
) -> None:
    r = client(redis_clean.url)
    job = await aenqueue(r, "uf", {"n": 1}, unique_key="k")
    work = queue_work(
        redis_clean.url,
        names=("uf",),
        handler=f"{H}:fail_recording",
        max_attempts=2,
        backoff_initial_s=0.3,
    )
    worker = await local_worker(work)
    try:
        await wait_for(lambda: equals(r.llen("test:attempts"), 1), what="the first attempt")
        with pytest.raises(DuplicateJob):  # waiting for its retry: still held
            await aenqueue(r, "uf", {"n": 2}, unique_key="k")
        await wait_for(lambda: equals(r.llen(KEYS.dead("uf")), 1), what="the dead letter")
        assert await r.get(KEYS.unique("uf", "k")) is None  # released with the dead letter
    finally:
        await worker.stop()
    ttl = await aenqueue(r, "nobody", {"n": 1}, unique_key="k", unique_for_s=0.2)
    await wait_for(lambda: equals(r.exists(KEYS.unique("nobody", "k")), 0), what="the TTL running out")
    assert ttl != job
    await r.aclose()


def test_strict_priority_takes_the_first_queue_first(redis_any: Any, local_worker: Any, run: Any) -> None:
    async def body() -> list[str]:
        r = client(redis_any.url)
        for queue in ("low", "high"):
            await r.lpush(queue, *(json.dumps({"n": n}) for n in range(20)))
        work = queue_work(
            redis_any.url, names=("high", "low"), order="strict", handler=f"{H}:record_order", batch_size=5
        )
        worker = await local_worker(work)
        try:
            await wait_for(lambda: equals(r.llen("test:order"), 40), what="every job")
        finally:
            await worker.stop()
        order = [q.decode() for q in await r.lrange("test:order", 0, -1)]
        await r.aclose()
        return order

    order = run(body())
    assert order == ["high"] * 20 + ["low"] * 20, order


def test_weighted_priority_shares_by_weight_and_starves_nobody(
    redis_clean: Any, local_worker: Any, run: Any
) -> None:
    async def body() -> list[str]:
        r = client(redis_clean.url)
        for queue in ("a", "b"):
            await r.lpush(queue, *(json.dumps({"n": n}) for n in range(300)))
        work = queue_work(
            redis_clean.url,
            names=("a", "b"),
            order="weighted",
            weights=(3, 1),
            handler=f"{H}:record_order",
            batch_size=1,
        )
        worker = await local_worker(work)
        try:
            await wait_for(
                lambda: at_least(r.lrange("test:order", 0, 199), 200), timeout_s=20, what="200 jobs"
            )
        finally:
            await worker.stop()
        order = [q.decode() for q in await r.lrange("test:order", 0, 199)]
        await r.aclose()
        return order

    order = run(body())
    share = order.count("a") / len(order)
    print(f"weighted 3:1, first 200 jobs with both queues full: {share:.0%} from the weight-3 queue")
    assert 0.62 <= share <= 0.88, share  # 75 % expected; the lighter queue is never starved


async def test_a_stalled_worker_acking_a_recovered_unique_job_keeps_its_key(
    redis_clean: Any, local_worker: Any
) -> None:
    """Found by review: a worker recovered away while stalled acked (removing nothing) and still
    released the job's unique key, so a duplicate could be enqueued beside the requeued job."""

    r = client(redis_clean.url)
    job = await aenqueue(r, "sq", {"n": 1}, unique_key="only-one")
    work = queue_work(redis_clean.url, names=("sq",), handler=f"{H}:block_all")
    stalled = await local_worker(work, name="stalled")
    try:
        await wait_for(lambda: r.lrange("test:started", 0, -1), what="the job in hand")
        peer = await local_worker(work, name="peer", start=False)  # recovers it, as a sweep would
        await peer.consumers.recover(stalled.worker_id, force=True)
        assert await r.llen("sq") == 1  # queued again
        stalled.manager.stopping.set()  # its round ends, and no next one takes the job again
        await r.set("test:release", 1)  # the stalled handler finishes and acks: nothing removed
        await wait_for(lambda: equals(r.hlen("test:handled"), 1), what="the stalled handler done")
        await wait_for(lambda: stalled.consumers.queues[0].unacked == [], what="its ack")
        assert await r.get(KEYS.unique("sq", "only-one")) == job.encode()  # still held
        with pytest.raises(DuplicateJob):
            await aenqueue(r, "sq", {"n": 2}, unique_key="only-one")
    finally:
        await stalled.stop()
        await r.aclose()
