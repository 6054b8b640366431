"""The audit behind ``corral inspect`` against a real server: what is held, by whom, and whether
anything will ever give it back. Scenarios are built with real in-process consumers or by hand with
the very keys the consumers use."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

from corral.contract import QueueSpec, StreamSpec, WorkSpec
from corral.workers.consumers.membership import redis_now_ms
from corral.workers.jobs.keys import Keys
from corral.workers.ops.audit import (
    CLAIMABLE,
    HELD,
    PENDING,
    PROCESSING,
    RETRY,
    STRANDED,
    WAITING,
    Holding,
    Report,
    audit,
    parse_processing,
)
from tests.integration.conftest import KEYS, POOL, H, at_least, client, redis_spec, wait_for

GHOST = f"ghost:{POOL}:7:dead01"
LIVE = f"otherhost:{POOL}:0:beef01"


def only(report: Report, kind: str) -> Holding:
    found = [h for h in report.holdings if h.kind == kind]
    assert len(found) == 1, report.holdings
    return found[0]


async def join(r: Any, worker_id: str, lease_ms: int) -> None:
    """A member entry by hand: ``lease_ms`` from now (negative: expired that long ago)."""
    await r.zadd(KEYS.members(POOL), {worker_id: await redis_now_ms(r) + lease_ms})


def test_processing_keys_are_parsed_back_whatever_the_queue_name() -> None:
    keys = Keys("app:x")
    for queue in ("jobs", "contest:submissions:42", "a{b}c", "{t}", "weird:processing:name"):
        for worker in ("h:pool:0:abc123", "testhost:test:w1"):
            assert parse_processing(keys, keys.processing(queue, worker)) == (queue, worker)
    assert parse_processing(keys, keys.retry("jobs")) is None
    assert parse_processing(keys, "app:x:{jobs}:processing:") is None
    assert parse_processing(keys, "other:{jobs}:processing:w") is None


async def test_work_of_a_live_worker_is_held(redis_any: Any, local_worker: Any) -> None:
    r = client(redis_any.url)
    await r.lpush("aq", b'{"n": 1}', b'{"n": 2}')
    await r.xgroup_create("as", "grp", id="0", mkstream=True)
    await r.xadd("as", {"n": "1"})
    work = WorkSpec(
        redis=redis_spec(redis_any.url),
        queues=(QueueSpec(names=("aq",), handler=f"{H}:block_all", block_s=0.2, batch_size=2),),
        streams=(StreamSpec(stream="as", group="grp", handler=f"{H}:block_first_entry", block_ms=100),),
    )
    worker = await local_worker(work)
    try:
        await wait_for(lambda: r.exists("test:blocked:1"), what="the entry in the handler")
        await wait_for(lambda: r.llen("test:started"), what="a job in the handler")
        report = await audit(r, KEYS, POOL, [("as", "grp")])
    finally:
        await r.set("test:release", 1)
        await worker.stop()
    assert report.ok and report.stranded == []
    assert report.live_count == 1 and report.live_members == [worker.worker_id]
    held = only(report, PROCESSING)
    assert held == Holding(PROCESSING, KEYS.processing("aq", worker.worker_id), 1, worker.worker_id, HELD)
    pending = only(report, PENDING)
    assert (pending.where, pending.count, pending.holder, pending.fate) == (
        "as grp",
        1,
        worker.worker_id,
        HELD,
    )
    # stopped cleanly: it left the member set and holds nothing
    after = await audit(r, KEYS, POOL, [("as", "grp")])
    assert after.ok and after.holdings == [] and after.live_count == 0
    await r.aclose()


async def test_an_expired_member_s_list_will_be_swept_and_is(redis_any: Any, local_worker: Any) -> None:
    r = client(redis_any.url)
    processing = KEYS.processing("bq", GHOST)
    await r.lpush(processing, b'{"n": 1}', b'{"n": 2}')
    await r.sadd(KEYS.held_queues(POOL, GHOST), "bq")
    await join(r, GHOST, -5000)
    # nobody alive to sweep it: stranded (for now)
    alone = await audit(r, KEYS, POOL, [])
    assert not alone.ok and only(alone, PROCESSING).fate == STRANDED
    assert "no member of pool test is alive" in only(alone, PROCESSING).detail
    await join(r, LIVE, 60_000)
    report = await audit(r, KEYS, POOL, [])
    assert report.ok, report.holdings
    item = only(report, PROCESSING)
    assert (item.where, item.count, item.holder) == (processing, 2, GHOST)
    assert item.fate.startswith("will be swept (lease expired ")
    ago_ms = int(item.fate.split("expired ")[1].split(" ms")[0])
    assert 5000 <= ago_ms < 15_000
    # and it is: a live worker's sweep moves the jobs back, and they are handled
    work = WorkSpec(
        redis=redis_spec(redis_any.url),
        queues=(QueueSpec(names=("bq",), handler=f"{H}:count_job", block_s=0.2),),
    )
    worker = await local_worker(work)
    try:
        await wait_for(lambda: _hlen_is(r, "test:handled", 2), what="both jobs handled")
        swept = await wait_for(lambda: _settled(r, []), what="nothing held any more")
    finally:
        await worker.stop()
    assert swept.ok and swept.holdings == []
    await r.aclose()


async def test_a_list_a_sweep_would_not_find_is_stranded(redis_any: Any) -> None:
    r = client(redis_any.url)
    processing = KEYS.processing("hq", GHOST)
    await r.lpush(processing, b'{"n": 1}')
    await join(r, GHOST, -1000)  # expired, but its held-queues set does not name the queue
    await join(r, LIVE, 60_000)
    report = await audit(r, KEYS, POOL, [])
    assert not report.ok
    assert report.stranded == [only(report, PROCESSING)]
    assert "held-queues" in report.stranded[0].detail
    await r.aclose()


def test_a_list_of_a_worker_in_no_member_set_is_stranded(redis_any: Any, local_worker: Any, run: Any) -> None:
    async def body() -> None:
        r = client(redis_any.url)
        processing = KEYS.processing("cq", GHOST)
        await r.lpush(processing, b'{"n": 1}', b'{"n": 2}', b'{"n": 3}')
        await r.sadd(KEYS.held_queues(POOL, GHOST), "cq")  # even so: nothing sweeps a non-member
        work = WorkSpec(
            redis=redis_spec(redis_any.url, member_ttl_s=1.0),
            queues=(QueueSpec(names=("cq",), handler=f"{H}:count_job", block_s=0.2),),
        )
        worker = await local_worker(work)
        try:
            await wait_for(lambda: r.zscore(KEYS.members(POOL), worker.worker_id), what="a live member")
            await worker.consumers.membership.run()  # one more sweep, done before our eyes
            report = await audit(r, KEYS, POOL, [])
        finally:
            await worker.stop()
        assert not report.ok
        item = only(report, PROCESSING)
        assert report.stranded == [item]
        assert (item.where, item.count, item.holder, item.fate) == (processing, 3, GHOST, STRANDED)
        assert "no member set" in item.detail
        assert await r.llen(processing) == 3  # indeed nobody recovered it
        await r.aclose()

    run(body())


async def test_entries_of_a_consumer_in_no_member_set_are_claimable(
    redis_any: Any, local_worker: Any
) -> None:
    r = client(redis_any.url)
    await r.xgroup_create("ds", "grp", id="0", mkstream=True)
    for n in range(3):
        await r.xadd("ds", {"n": str(n)})
    await r.xreadgroup("grp", GHOST, {"ds": ">"})  # took them, and was never a member
    alone = await audit(r, KEYS, POOL, [("ds", "grp"), ("no-such-stream", "grp")])
    assert not alone.ok and only(alone, PENDING).fate == STRANDED
    spec = StreamSpec(
        stream="ds",
        group="grp",
        handler=f"{H}:count_entry",
        block_ms=100,
        min_idle_ms=2000,
        claim_interval_s=0.1,
    )
    worker = await local_worker(WorkSpec(redis=redis_spec(redis_any.url), streams=(spec,)))
    try:
        await wait_for(lambda: r.zscore(KEYS.members(POOL), worker.worker_id), what="a live member")
        report = await audit(r, KEYS, POOL, [("ds", "grp")])
        # and XAUTOCLAIM takes them once idle min_idle_ms
        await wait_for(lambda: _hlen_is(r, "test:handled_entries", 3), what="the entries handled")
        claimed = await wait_for(lambda: _settled(r, [("ds", "grp")]), what="nothing pending any more")
    finally:
        await worker.stop()
    assert report.ok, report.holdings
    item = only(report, PENDING)
    assert (item.where, item.count, item.holder, item.fate) == ("ds grp", 3, GHOST, CLAIMABLE)
    assert "oldest idle" in item.detail
    assert claimed.ok and claimed.holdings == []
    await r.aclose()


async def test_retry_sets_are_reported_with_their_first_due_time(redis_any: Any) -> None:
    r = client(redis_any.url)
    due = time.time() + 30
    await r.zadd(KEYS.retry("contest:{x}:1"), {b'{"n": 1}': due, b'{"n": 2}': due + 10})
    report = await audit(r, KEYS, POOL, [])
    assert report.ok
    item = only(report, RETRY)
    assert (item.where, item.count, item.holder, item.fate) == (
        KEYS.retry("contest:{x}:1"),
        2,
        None,
        WAITING,
    )
    assert item.earliest_due == due
    assert item.detail.startswith("earliest due in ")
    assert report.to_json()["holdings"][0]["earliest_due"] == due
    await r.aclose()


async def test_members_of_another_pool_on_the_same_prefix_count(redis_any: Any) -> None:
    """A processing list is stranded only when its worker is in no member set at all."""

    r = client(redis_any.url)
    other = "billing:worker:0:0a0a0a"
    await r.lpush(KEYS.processing("eq", other), b"1")
    await r.zadd(KEYS.members("billing"), {other: await redis_now_ms(r) + 60_000})
    report = await audit(r, KEYS, POOL, [])
    assert report.ok and only(report, PROCESSING).fate == HELD
    assert report.live_count == 0  # of the audited pool
    await r.aclose()


async def test_nothing_is_ever_stranded_around_a_sigkilled_worker(redis_any: Any, consumer_pool: Any) -> None:
    """A child killed holding a job and an entry: at every moment until both are handled again the
    audit finds nothing stranded, and in the end nothing held."""

    r = client(redis_any.url)
    work = WorkSpec(
        redis=redis_spec(redis_any.url),
        queues=(QueueSpec(names=("kq",), handler=f"{H}:block_first", block_s=0.2),),
        streams=(
            StreamSpec(
                stream="ks",
                group="grp",
                handler=f"{H}:block_first_entry",
                block_ms=200,
                min_idle_ms=60_000,
            ),
        ),
    )
    streams = [("ks", "grp")]
    cp = consumer_pool(2, work)
    try:
        assert await cp.pool.spawn_all()
        await r.lpush("kq", json.dumps({"victim": True}))
        await r.xadd("ks", {"n": "victim"})
        blocked = await wait_for(lambda: at_least(r.keys("test:blocked:*"), 2), what="both blocked")
        holders = {json.loads(await r.get(key))["pid"] for key in blocked}
        before = await audit(r, KEYS, POOL, streams)
        assert before.ok and {h.fate for h in before.holdings} == {HELD}, before.holdings
        for pid in holders:
            os.kill(pid, signal.SIGKILL)
        await r.set("test:release", 1)
        for _ in range(2000):  # every 5 ms, for 10 s at most
            report = await audit(r, KEYS, POOL, streams)
            assert report.ok, report.stranded
            handled = await r.hlen("test:handled") + await r.hlen("test:handled_entries")
            if handled == 2 and not report.holdings:
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError(f"not handled again: {report.holdings}")
    finally:
        await r.set("test:release", 1)
        await cp.pool.stop(10)
    after = await audit(r, KEYS, POOL, streams)
    assert after.ok and after.holdings == [], after.holdings
    await r.aclose()


async def _settled(r: Any, streams: list[tuple[str, str]]) -> Report | None:
    """The report once nothing is held any more (a handled batch is acknowledged a moment later)."""
    report = await audit(r, KEYS, POOL, streams)
    return report if not report.holdings else None


async def _hlen_is(r: Any, key: str, n: int) -> bool:
    return bool(await r.hlen(key) == n)
