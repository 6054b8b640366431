"""Delivery at its edges (issue: nothing stranded, lost or run twice): each test reproduces a hole
found against a real server, and failed before its fix."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from corral.contract import StreamSpec, WorkSpec
from corral.supervisor import RestartPolicy
from corral.workers.consumers.consumer_set import Consumers
from corral.workers.consumers.membership import Membership
from corral.workers.jobs.keys import Keys
from corral.workers.jobs.wire import encode_job
from corral.workers.lease import Lease
from tests.integration.conftest import KEYS, POOL, H, client, equals, queue_work, redis_spec, wait_for


async def test_a_live_worker_recovered_by_a_peer_registers_its_queue_again(
    redis_any: Any, local_worker: Any
) -> None:
    """A stalled loop lets a peer 'recover' a live worker (deleting its held set); the next job that
    worker takes must be recoverable again, or a later SIGKILL strands it for good."""

    r = client(redis_any.url)
    await r.lpush("hq", encode_job({"n": 1}))
    work = queue_work(redis_any.url, names=("hq",), handler=f"{H}:hold_each_delivery")
    a = await local_worker(work, name="a")
    peer = Consumers(work, redis=r, pool=POOL, worker_id="testhost:test:peer", log=a.consumers.log)
    held = KEYS.held_queues(POOL, a.worker_id)
    try:
        await wait_for(lambda: equals(r.get("test:seen"), b"1"), what="a's first delivery")
        assert await peer.recover(a.worker_id, force=True) == {"jobs": 1, "entries": 0}
        assert not await r.exists(held)
        await r.set("test:release:1", 1)  # a's stalled handler finishes; a takes the job again
        await wait_for(lambda: equals(r.get("test:seen"), b"2"), what="a's second delivery")
        assert await r.smembers(held) == {b"hq"}, "the queue a holds again is not registered"
        # the take itself registered a, in the queue's slot: even with the held-queues set gone
        # again (a second peer's recovery racing a's next round), a's list is found
        assert await r.sismember(KEYS.holders("hq"), a.worker_id)
        await r.delete(held)
        assert await peer.recover(a.worker_id, force=True) == {"jobs": 1, "entries": 0}
        assert await r.llen("hq") == 1  # recoverable: back in the queue
        assert not await r.sismember(KEYS.holders("hq"), a.worker_id)  # recovery took it out
    finally:
        await r.set("test:release:2", 1)
        await r.set("test:release:3", 1)
        await a.stop()
    await r.aclose()


async def test_a_batch_of_ten_thousand_is_taken_whole(redis_any: Any, local_worker: Any) -> None:
    """Lua's unpack() has a limit near 8,000 values: the take script must not delete what it took."""

    r = client(redis_any.url)
    jobs = [encode_job({"n": n}) for n in range(10_000)]
    for start in range(0, len(jobs), 1000):
        await r.lpush("big", *jobs[start : start + 1000])
    work = queue_work(redis_any.url, names=("big",), handler=f"{H}:count_job", batch_size=10_000)
    worker = await local_worker(work)
    try:
        await wait_for(lambda: equals(r.hlen("test:handled"), 10_000), timeout_s=60, what="every job")
    finally:
        await worker.stop()
    assert await r.llen(KEYS.dead("big")) == 0
    await r.aclose()


async def test_input_that_breaks_the_decoder_is_dead_lettered_not_retried_forever(
    redis_any: Any, local_worker: Any
) -> None:
    r = client(redis_any.url)
    nested = b"[" * 100_000 + b"]" * 100_000  # RecursionError in json.loads
    huge = json.dumps({"_corral": 1, "id": "huge", "data": 1, "attempt": 1, "enqueued_at": 10**400}).encode()
    await r.lpush("odd", nested, huge, encode_job({"n": "after"}))
    work = queue_work(redis_any.url, names=("odd",), handler=f"{H}:record_job")
    worker = await local_worker(work)
    try:
        await wait_for(lambda: equals(r.hlen("test:handled"), 2), what="the decodable jobs")
        await wait_for(lambda: equals(r.llen(KEYS.dead("odd")), 1), what="the nested one dead-lettered")
    finally:
        await worker.stop()
    [record] = await r.lrange(KEYS.dead("odd"), 0, -1)
    assert json.loads(record)["error"].startswith("malformed: ")
    assert await r.llen("odd") == 0
    await r.aclose()


async def test_put_back_and_recovery_keep_the_order_of_a_batch(redis_any: Any, local_worker: Any) -> None:
    r = client(redis_any.url)
    raws = [encode_job({"n": n}) for n in range(3)]
    await r.lpush("oq", *raws)  # producers push at the left, the oldest (n=0) is taken first
    before = await r.lrange("oq", 0, -1)
    work = queue_work(redis_any.url, names=("oq",), handler=f"{H}:hold_each_delivery", concurrency=3)
    a = await local_worker(work, name="a")
    peer = Consumers(work, redis=r, pool=POOL, worker_id="testhost:test:peer", log=a.consumers.log)
    try:
        await wait_for(lambda: equals(r.get("test:seen"), b"3"), what="a holds the batch")
        assert await r.llen("oq") == 0
        assert (await peer.recover(a.worker_id, force=True))["jobs"] == 3
        assert await r.lrange("oq", 0, -1) == before, "recovery reversed the batch"
    finally:
        for n in range(1, 8):
            await r.set(f"test:release:{n}", 1)
        await a.stop()
    await r.aclose()


def test_a_recovery_that_raises_does_not_stop_the_sweeps(redis_any: Any, run: Any) -> None:
    async def body() -> None:
        r = client(redis_any.url)
        keys = Keys()
        tried: list[str] = []

        async def recover(member: str, died: bool = True) -> dict[str, int]:
            tried.append(member)
            raise ResponseError("NOGROUP No such key 'gone' or consumer group 'g'")

        me = "testhost:test:me"
        lease = Lease(
            redis_spec(redis_any.url), members=keys.members(POOL), worker_id=me, holding=lambda: False
        )
        unit = Membership(redis=r, keys=keys, pool=POOL, worker_id=me, lease=lease, recover=recover)
        await r.zadd(keys.members(POOL), {"testhost:test:dead": 1})  # a lease that ran out long ago
        try:
            for _ in range(3):
                await unit.run()  # must not raise, and tries again each sweep
        finally:
            lease.stop()
        assert tried == ["testhost:test:dead"] * 3
        now_ms = int((await r.time())[0]) * 1000
        assert await r.zscore(keys.members(POOL), me) > now_ms  # our own lease, taken by the first sweep
        await r.aclose()

    run(body())


async def test_a_stream_whose_group_vanished_is_consumed_again(redis_any: Any, local_worker: Any) -> None:
    """A server restarted without persistence, or FLUSHALL: the group is gone (NOGROUP)."""

    r = client(redis_any.url)
    spec = StreamSpec(stream="gs", handler=f"{H}:count_entry", group="g", block_ms=100)
    worker = await local_worker(WorkSpec(redis=redis_spec(redis_any.url), streams=(spec,)))
    try:
        await r.xadd("gs", {"n": "1"})
        await wait_for(lambda: equals(r.hlen("test:handled_entries"), 1), what="the first entry")
        await r.delete("gs")  # the stream and its group are gone
        await asyncio.sleep(0.3)  # let a round or two meet NOGROUP
        await r.xadd("gs", {"n": "2"})
        await wait_for(
            lambda: equals(r.hlen("test:handled_entries"), 2), timeout_s=10, what="the entry after"
        )
    finally:
        await worker.stop()
    await r.aclose()


async def test_a_graceful_stop_after_an_interrupted_round_puts_its_jobs_back(
    redis_any: Any, local_worker: Any
) -> None:
    r = client(redis_any.url)
    await r.lpush("iq", encode_job("first"), encode_job({"n": 1}), encode_job({"n": 2}))
    work = queue_work(redis_any.url, names=("iq",), handler=f"{H}:count_job", batch_size=3)
    worker = await local_worker(work, start=False)
    [consumer] = worker.consumers.queues
    handle_round = consumer.run_round

    async def connection_dropped_after_the_take(*args: Any, **kwargs: Any) -> None:
        consumer.run_round = handle_round  # type: ignore[method-assign]
        raise RedisConnectionError("simulated: the consumer's connection dropped after its take")

    consumer.run_round = connection_dropped_after_the_take  # type: ignore[method-assign]
    worker.start()
    await wait_for(lambda: consumer.interrupted, what="the round interrupted by 'Redis going away'")
    await worker.stop()  # graceful, at once
    processing = KEYS.processing("iq", worker.worker_id)
    left = await r.llen(processing)
    back = await r.llen("iq")
    lease = await r.zscore(KEYS.members(POOL), worker.worker_id)
    assert left == 0, f"{left} jobs stranded (lease {lease}): nobody would sweep them"
    assert back == 3 and lease is None  # all put back (in order), then the member left
    assert await r.hlen("test:handled") == 0
    await r.aclose()


async def test_an_entry_deleted_while_pending_never_reaches_the_handler(
    redis_any: Any, local_worker: Any
) -> None:
    r = client(redis_any.url)
    spec = StreamSpec(stream="ds", handler=f"{H}:fail_first_entry_then_record", group="g", block_ms=100)
    work = WorkSpec(redis=redis_spec(redis_any.url), streams=(spec,))
    entry = await r.xadd("ds", {"n": "1"})
    first = await local_worker(work, name="a")
    await wait_for(lambda: equals(r.hget("test:deliveries", entry), b"1"), what="the failed delivery")
    await first.stop()  # the entry stays pending, ours
    await r.xdel("ds", entry)
    again = await local_worker(work, name="a")  # the same consumer: it reads its own pending first
    try:
        await wait_for(lambda: equals(r.xpending("ds", "g"), {**PENDING_NONE}), what="the entry acknowledged")
    finally:
        await again.stop()
    assert await r.lrange("test:fields", 0, -1) == [], "the handler got an empty message"
    await r.aclose()


PENDING_NONE = {"pending": 0, "min": None, "max": None, "consumers": []}


async def test_a_job_that_kills_its_worker_is_dead_lettered_after_max_attempts(
    redis_any: Any, consumer_pool: Any
) -> None:
    r = client(redis_any.url)
    work = queue_work(redis_any.url, names=("kq",), handler=f"{H}:kill_own_worker", max_attempts=3)
    cp = consumer_pool(2, work, policy=RestartPolicy(backoff_initial_s=0.05))
    try:
        assert await cp.pool.spawn_all()
        await r.lpush("kq", encode_job("deadly"))
        record = await wait_for(lambda: r.lindex(KEYS.dead("kq"), 0), timeout_s=30, what="a dead letter")
        assert [int(a) for a in await r.lrange("test:deadly", 0, -1)] == [
            1,
            2,
            3,
        ]  # counted across deaths
        error = json.loads(record)["error"]
        assert "died" in error and "3" in error, error
        assert await r.llen("kq") == 0
        await r.lpush("kq", encode_job({"n": "after"}))
        await wait_for(lambda: equals(r.hlen("test:handled"), 1), timeout_s=15, what="the pool still works")
        assert not any(cp.pool.slots[i].fatal_reason for i in (0, 1))
        assert not await r.exists(KEYS.deaths("kq")), "the death count outlived the job"
    finally:
        await cp.pool.stop(10)
    await r.aclose()


async def test_an_async_handler_past_its_timeout_is_cancelled_and_the_attempt_fails(
    redis_any: Any, local_worker: Any
) -> None:
    r = client(redis_any.url)
    await r.lpush("tq", encode_job({"s": 30}))
    work = queue_work(
        redis_any.url, names=("tq",), handler=f"{H}:sleep_async", timeout_s=0.2, max_attempts=2,
        backoff_initial_s=0.05,
    )  # fmt: skip
    worker = await local_worker(work)
    try:
        record = await wait_for(lambda: r.lindex(KEYS.dead("tq"), 0), timeout_s=10, what="a dead letter")
    finally:
        await worker.stop()
    letter = json.loads(record)
    assert letter["attempt"] == 2 and "timed out after 0.2s" in letter["error"], letter
    await r.aclose()


async def test_a_sync_handler_runs_off_the_loop_and_an_overrun_recycles_its_child(
    redis_any: Any, consumer_pool: Any
) -> None:
    """A sync handler sleeping 3 s does not stall the child's loop (its heartbeat answers within
    1 s); past its timeout_s its job fails at once, and the child is replaced."""

    r = client(redis_any.url)
    work = queue_work(redis_any.url, names=("sq",), handler=f"{H}:sleep_sync", timeout_s=0.5, max_attempts=1)
    cp = consumer_pool(1, work, heartbeat_interval_s=0.2, heartbeat_timeout_s=1.0, graceful_timeout_s=1.0)
    try:
        assert await cp.pool.spawn_all()
        first = cp.pid(0)
        await r.lpush("sq", encode_job({"s": 3}))
        record = await wait_for(lambda: r.lindex(KEYS.dead("sq"), 0), timeout_s=10, what="the job failed")
        assert "timed out after 0.5s" in json.loads(record)["error"]
        await wait_for(
            lambda: cp.pool.get(0) is not None and cp.pid(0) != first, timeout_s=15, what="recycled"
        )
        await wait_for(lambda: cp.pool.wait_ready(0.01), timeout_s=15, what="the replacement ready")
        assert "no heartbeat answer" not in cp.log(), "the sync handler stalled the loop"
        assert "asking to be recycled" in cp.log(0)
        assert cp.pool.slots[0].history.restarts == 0  # a recycle, not a failure
        await r.lpush("sq", encode_job({"s": 0}))  # the replacement works
        await wait_for(lambda: equals(r.llen("sq"), 0), what="the next job taken")
        processing = KEYS.processing("sq", cp.worker_id(0))
        await wait_for(lambda: equals(r.llen(processing), 0), what="and acknowledged")
        assert await r.llen(KEYS.dead("sq")) == 1
    finally:
        await cp.pool.stop(5)
    await r.aclose()


async def test_the_batch_mates_of_a_job_that_kills_its_worker_are_not_dead_lettered(
    redis_any: Any, consumer_pool: Any
) -> None:
    r = client(redis_any.url)
    work = queue_work(
        redis_any.url, names=("bq",), handler=f"{H}:kill_own_worker", max_attempts=3, batch_size=5
    )
    cp = consumer_pool(1, work, policy=RestartPolicy(backoff_initial_s=0.05))
    try:
        assert await cp.pool.spawn_all()
        await r.lpush("bq", encode_job("deadly"), *[encode_job({"n": n}) for n in range(4)])
        await wait_for(lambda: r.lindex(KEYS.dead("bq"), 0), timeout_s=30, what="the killer dead-lettered")
        await wait_for(
            lambda: equals(r.hlen("test:handled"), 4), timeout_s=15, what="its batch-mates handled"
        )
        [record] = await r.lrange(KEYS.dead("bq"), 0, -1)
        assert json.loads(json.loads(record)["job"])["data"] == "deadly"
        assert not await r.exists(KEYS.deaths("bq"))
    finally:
        await cp.pool.stop(10)
    await r.aclose()


async def test_an_entry_in_hand_longer_than_min_idle_is_not_claimed_by_another_worker(
    redis_any: Any, local_worker: Any
) -> None:
    r = client(redis_any.url)
    spec = StreamSpec(
        stream="ls",
        handler=f"{H}:slow_entry",
        group="g",
        block_ms=100,
        min_idle_ms=300,
        claim_interval_s=0.1,
    )
    work = WorkSpec(redis=redis_spec(redis_any.url), streams=(spec,))
    await r.xadd("ls", {"n": "1", "s": "1.5"})  # five times min_idle_ms
    first = await local_worker(work, name="a")
    await wait_for(lambda: pending_count(r, "ls", "g"), what="a holds the entry")
    second = await local_worker(work, name="b")  # idle, claiming every 0.1 s
    try:
        await wait_for(lambda: equals(r.hlen("test:handled_entries"), 1), timeout_s=10, what="handled")
    finally:  # graceful: a claim b made (~300 ms after a's delivery) would be handled to the end
        await first.stop()
        await second.stop()
    assert await r.hget("test:handled_entries", "1") == b"1", await r.lrange("test:handlers", 0, -1)
    await r.aclose()


async def pending_count(r: Any, stream: str, group: str) -> int:
    try:
        return int((await r.xpending(stream, group))["pending"])
    except ResponseError:  # no group yet
        return 0


async def test_a_partition_retrying_one_entry_does_not_count_attempts_against_those_behind_it(
    redis_any: Any, local_worker: Any
) -> None:
    r = client(redis_any.url)
    spec = StreamSpec(
        stream="ps",
        handler=f"{H}:fail_entry_one",
        group="g",
        partitions=1,
        max_deliveries=3,
        block_ms=100,
    )
    worker = await local_worker(WorkSpec(redis=redis_spec(redis_any.url), streams=(spec,)))
    for n in (1, 2, 3):  # one key, one shard: 2 and 3 wait behind 1
        await r.xadd("ps:0", {"n": str(n)})
    await worker.consumers.assign({"stream": "ps", "shards": [0]})
    try:
        await wait_for(lambda: r.xlen(KEYS.stream_dead("ps:0")), timeout_s=20, what="entry 1 dead-lettered")
        await wait_for(lambda: r.llen("test:attempts:3"), timeout_s=10, what="the entries behind it")
    finally:
        await worker.stop()
    assert [int(a) for a in await r.lrange("test:attempts:1", 0, -1)] == [1, 2, 3]
    assert [int(a) for a in await r.lrange("test:attempts:2", 0, -1)] == [1]  # not dead-lettered
    assert [int(a) for a in await r.lrange("test:attempts:3", 0, -1)] == [1]
    assert await r.xlen(KEYS.stream_dead("ps:0")) == 1
    await r.aclose()


async def test_a_partition_whose_group_vanished_is_consumed_again(redis_any: Any, local_worker: Any) -> None:
    r = client(redis_any.url)
    spec = StreamSpec(stream="pg", handler=f"{H}:count_entry", group="g", partitions=1, block_ms=100)
    worker = await local_worker(WorkSpec(redis=redis_spec(redis_any.url), streams=(spec,)))
    await worker.consumers.assign({"stream": "pg", "shards": [0]})
    try:
        await r.xadd("pg:0", {"n": "1"})
        await wait_for(lambda: equals(r.hlen("test:handled_entries"), 1), what="the first entry")
        await r.delete("pg:0")  # the shard and its group are gone
        await r.xadd("pg:0", {"n": "2"})
        await wait_for(
            lambda: equals(r.hlen("test:handled_entries"), 2), timeout_s=10, what="the entry after"
        )
    finally:
        await worker.stop()
    await r.aclose()


async def test_a_revoke_returns_only_once_the_round_in_progress_is_acknowledged(
    redis_any: Any, local_worker: Any
) -> None:
    r = client(redis_any.url)
    spec = StreamSpec(stream="hs", handler=f"{H}:block_first_entry", group="g", partitions=1, block_ms=100)
    worker = await local_worker(WorkSpec(redis=redis_spec(redis_any.url), streams=(spec,)))
    await worker.consumers.assign({"stream": "hs", "shards": [0]})
    await r.xadd("hs:0", {"n": "1"})
    try:
        await wait_for(lambda: r.get("test:blocked:1"), what="the round in progress")
        revoking = asyncio.ensure_future(worker.consumers.revoke({"stream": "hs", "shards": [0]}))
        done, _ = await asyncio.wait([revoking], timeout=0.5)
        assert not done, "the revoke did not wait for the round in progress"
        await r.set("test:release", 1)
        assert await asyncio.wait_for(revoking, 10) == []
        assert await pending_count(r, "hs:0", "g") == 0  # acknowledged before the revoke answered
    finally:
        await r.set("test:release", 1)
        await worker.stop()
    await r.aclose()


async def test_a_new_owner_handles_what_the_previous_owner_left_pending(
    redis_any: Any, local_worker: Any
) -> None:
    r = client(redis_any.url)
    spec = StreamSpec(stream="ns", handler=f"{H}:block_first_entry", group="g", partitions=1, block_ms=100)
    work = WorkSpec(redis=redis_spec(redis_any.url), streams=(spec,))
    first = await local_worker(work, name="a")
    for n in (1, 2, 3):  # before the shard is assigned: its first read takes all three
        await r.xadd("ns:0", {"n": str(n)})
    await first.consumers.assign({"stream": "ns", "shards": [0]})
    await wait_for(lambda: r.get("test:blocked:1"), what="a holds the batch")
    await first.stop(fast=True)  # as if killed: what it read stays pending, its consumer's
    assert await pending_count(r, "ns:0", "g") == 3
    second = await local_worker(work, name="b")
    await r.set("test:release", 1)
    await second.consumers.assign({"stream": "ns", "shards": [0]})
    try:
        await wait_for(lambda: equals(r.hlen("test:handled_entries"), 3), timeout_s=10, what="all three")
        await wait_for(lambda: equals(pending_count(r, "ns:0", "g"), 0), what="nothing pending")
    finally:
        await second.stop()
    await r.aclose()


async def test_a_recovery_cut_short_holds_the_work_back_at_most_twice_the_lease(
    redis_any: Any, local_worker: Any
) -> None:
    """Found by a long fault sequence on the cluster: a failover between a recovery's lock and its
    release left the lock for 60 s, and the dead worker's jobs waited that long. The lock now lives
    2 x member_ttl_s; here its release is lost on purpose and the next sweep gets the jobs anyway."""

    r = client(redis_any.url)
    ghost = f"testhost:{POOL}:ghost"
    await r.lpush(KEYS.processing("lq", ghost), encode_job({"n": 1}), encode_job({"n": 2}))
    await r.sadd(KEYS.held_queues(POOL, ghost), "lq")
    await r.zadd(KEYS.members(POOL), {ghost: 1})  # its lease ran out long ago
    work = queue_work(redis_any.url, names=("lq",), handler=f"{H}:count_job")
    work = WorkSpec(redis=redis_spec(redis_any.url, member_ttl_s=1.0), queues=work.queues)
    worker = await local_worker(work, start=False)
    consumers = worker.consumers
    real_recover = consumers.queues[0].recover

    async def cut_short(dead: str, died: bool = True) -> int:  # the helper dies before it moves anything
        lock = KEYS.recovery_lock(POOL, dead)
        assert 0 < await r.pttl(lock) <= 2000, "the lock outlives twice the lease"
        consumers.queues[0].recover = real_recover  # type: ignore[method-assign]
        raise asyncio.CancelledError  # killed: its finally may not reach Redis either

    consumers.queues[0].recover = cut_short  # type: ignore[method-assign]
    consumers.redis.delete = _lose_first_delete(consumers.redis.delete)  # type: ignore[method-assign]
    try:
        await consumers.recover(ghost)
    except asyncio.CancelledError:
        pass
    assert await r.exists(KEYS.recovery_lock(POOL, ghost)), "the release was meant to be lost"
    worker.start()
    try:
        await wait_for(lambda: equals(r.hlen("test:handled"), 2), timeout_s=8, what="the ghost's jobs")
    finally:
        await worker.stop()
    await r.aclose()


def _lose_first_delete(delete: Any) -> Any:
    lost = False

    async def maybe(*keys: Any) -> int:
        nonlocal lost
        if not lost:
            lost = True
            return 0
        return int(await delete(*keys))

    return maybe


async def test_sync_handlers_of_one_batch_overlap_up_to_concurrency(
    redis_any: Any, local_worker: Any, tmp_path: Any
) -> None:
    """Sync handlers run in the child's threads, so ``concurrency = 2`` runs two at once."""

    r = client(redis_any.url)
    out = tmp_path / "marks"
    await r.lpush("cq", *[encode_job({"n": n, "s": 0.5, "out": str(out)}) for n in range(2)])
    work = queue_work(redis_any.url, names=("cq",), handler=f"{H}:mark_sync", concurrency=2)
    worker = await local_worker(work)
    try:
        await wait_for(lambda: out.exists() and out.read_text().count("end") == 2, what="2 ends")
    finally:
        await worker.stop()
    times = {(w, n): float(t) for w, n, _a, _p, t in (line.split() for line in out.read_text().splitlines())}
    assert times[("start", "1")] < times[("end", "0")] and times[("start", "0")] < times[("end", "1")]
    await r.aclose()
