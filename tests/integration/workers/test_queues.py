"""Reliable job queues against a real Redis server: in-process consumers for the fine-grained cases,
pools of real children (with exit-triggered recovery) for crashes, stops and outages."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import signal
import time
from collections.abc import Callable
from typing import Any

from corral.contract import QueueSpec, WorkSpec
from corral.supervisor import WorkerState
from corral.workers.jobs.wire import decode_job, encode_job
from tests.integration.conftest import (
    KEYS,
    ConsumerPool,
    H,
    at_least,
    client,
    equals,
    queue_work,
    redis_spec,
    wait_for,
)

Pool = Callable[..., ConsumerPool]


def job_id(raw: bytes | str, queue: str = "q") -> str:
    return decode_job(raw.encode() if isinstance(raw, str) else raw, queue).id


async def corral_keys(redis: Any, kind: str) -> list[str]:
    return sorted([k.decode() async for k in redis.scan_iter(match=f"corral:*{kind}*")])


async def handled(redis: Any, key: str = "test:handled") -> dict[str, int]:
    return {k.decode(): int(v) for k, v in (await redis.hgetall(key)).items()}


# -- in process ----------------------------------------------------------------------------------


async def test_malformed_jobs_are_dead_lettered_at_once(redis_any: Any, local_worker: Any) -> None:
    r = client(redis_any.url)
    await r.lpush("mq", b"\xff\xfe{}", b"{not json", b'{"ok": 1}')
    work = queue_work(redis_any.url, names=("mq",), handler=f"{H}:record_job", block_s=0.1)
    worker = await (await local_worker(work, start=False)).drain()
    dead = await r.lrange(KEYS.dead("mq"), 0, -1)
    records = sorted((json.loads(d) for d in dead), key=lambda rec: rec["error"])
    assert records[0]["error"].startswith("malformed: not JSON"), records[0]
    assert records[0]["job"] == "{not json"
    assert records[1]["error"].startswith("malformed: not UTF-8"), records[1]
    assert base64.b64decode(records[1]["job_base64"]) == b"\xff\xfe{}"  # the exact bytes survive
    assert "job_base64" not in records[0]
    assert all(rec["queue"] == "mq" and rec["worker"] == worker.worker_id for rec in records)
    assert await handled(r) == {job_id(b'{"ok": 1}'): 1}  # the handler never saw the others
    assert await r.zcard(KEYS.retry("mq")) == 0
    assert await corral_keys(r, "processing") == []
    stats = worker.consumers.queues[0].stats["mq"]
    assert (stats.processed, stats.dead, stats.failed, stats.retried) == (1, 2, 0, 0)
    await r.aclose()


async def test_failing_job_is_retried_with_backoff_then_dead_lettered(
    redis_any: Any, local_worker: Any
) -> None:
    r = client(redis_any.url)
    bare = b'{"task": "bare"}'
    envelope = encode_job({"task": "env"}, job_id="env-1", attempt=2)
    await r.lpush("fq", bare, envelope)
    work = queue_work(
        redis_any.url,
        names=("fq",),
        handler=f"{H}:fail_recording",
        max_attempts=3,
        backoff_initial_s=0.4,
        block_s=0.1,
    )
    worker = await local_worker(work)
    try:
        # the first failures: both jobs wait in the retry set, due after the initial backoff
        retry = await wait_for(
            lambda: at_least(r.zrange(KEYS.retry("fq"), 0, -1, withscores=True), 2), what="retries"
        )
        first = [json.loads(a) for a in await r.lrange("test:attempts", 0, -1)]
        by_id = {json.loads(raw)["id"]: score for raw, score in retry}
        for attempt in first[:2]:
            expected = 0.4 * 2 ** (attempt["attempt"] - 1)
            assert abs(by_id[attempt["id"]] - attempt["t"] - expected) < 0.3, (by_id, first)
        assert {json.loads(raw)["attempt"] for raw, _ in retry} == {2, 3}
        dead = await wait_for(
            lambda: at_least(r.lrange(KEYS.dead("fq"), 0, -1), 2), timeout_s=15, what="dead letters"
        )
    finally:
        await worker.stop()
    attempts = [json.loads(a) for a in await r.lrange("test:attempts", 0, -1)]
    bare_id = job_id(bare)
    bare_attempts = [a for a in attempts if a["id"] == bare_id]
    env_attempts = [a for a in attempts if a["id"] == "env-1"]
    assert [a["attempt"] for a in bare_attempts] == [1, 2, 3]
    assert [a["attempt"] for a in env_attempts] == [2, 3]  # the envelope's attempt is kept
    # backoff doubles: 0.4 s, then 0.8 s (plus the promotion and block granularity)
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(bare_attempts)]
    assert 0.35 <= gaps[0] < 0.4 + 1.5, gaps
    assert 0.75 <= gaps[1] < 0.8 + 1.5, gaps
    assert 0.75 <= env_attempts[1]["t"] - env_attempts[0]["t"] < 0.8 + 1.5
    records = {rec["id"]: rec for rec in map(json.loads, dead)}
    assert set(records) == {bare_id, "env-1"}
    for rec in records.values():
        assert rec["attempt"] == 3 and rec["queue"] == "fq"
        assert "Traceback" in rec["error"] and "ValueError: cannot handle" in rec["error"], rec["error"]
        assert "fail_recording" in rec["error"]
    assert json.loads(records["env-1"]["job"])["data"] == {"task": "env"}
    assert await r.zcard(KEYS.retry("fq")) == 0 and await r.llen("fq") == 0
    assert await corral_keys(r, "processing") == []
    await r.aclose()


async def test_requeue_front_and_back(redis_any: Any, local_worker: Any) -> None:
    r = client(redis_any.url)
    for where, expected in (("front", ["1", "2", "3"]), ("back", ["2", "3", "1"])):
        queue = f"rq:{where}"
        for n in (1, 2, 3):  # LPUSH: job 1 is the first to be taken
            await r.lpush(queue, json.dumps({"n": n, "requeue": where if n == 1 else None}))
        work = queue_work(
            redis_any.url, names=(queue,), handler=f"{H}:requeue_once", batch_size=1, block_s=0.1
        )
        worker = await (await local_worker(work, name=f"w-{where}", start=False)).drain()
        order = await r.lrange("test:order", 0, -1)
        assert [o.decode() for o in order] == expected, where
        stats = worker.consumers.queues[0].stats[queue]
        assert (stats.processed, stats.requeued, stats.failed, stats.retried) == (3, 1, 0, 0)
        assert await r.llen(queue) == 0 and await r.zcard(KEYS.retry(queue)) == 0
        await r.delete("test:order")
    assert await corral_keys(r, "processing") == []
    await r.aclose()


async def test_at_most_once_keeps_nothing_in_flight(redis_any: Any, local_worker: Any) -> None:
    r = client(redis_any.url)
    await r.lpush("amo", *(json.dumps({"n": n}) for n in range(3)))
    work = queue_work(redis_any.url, names=("amo",), handler=f"{H}:block_all", at_most_once=True)
    worker = await local_worker(work)
    try:
        await wait_for(lambda: r.llen("test:started"), what="the first job started")
        # a free lane's worth is in this process's hands only (the rest waits in the queue):
        # nothing in Redis to recover
        assert await r.llen("amo") == 2
        assert await corral_keys(r, "processing") == []
        assert await corral_keys(r, "held") == []
        await r.set("test:release", 1)
        await wait_for(lambda: equals(r.hlen("test:handled"), 3), what="3 jobs handled")
    finally:
        await worker.stop()
    assert await corral_keys(r, "processing") == []
    await r.aclose()


async def test_pattern_and_registry_discovery(redis_any: Any, local_worker: Any) -> None:
    r = client(redis_any.url)
    await r.lpush("contest:submissions:1", '"s1"')
    await r.lpush("contest:other", '"not mine"')
    await r.sadd("test:registry", "reg:a")
    await r.lpush("reg:a", '"r1"')
    work = WorkSpec(
        redis=redis_spec(redis_any.url),
        queues=(
            QueueSpec(handler=f"{H}:record_job", pattern="contest:submissions:*", refresh_s=0.3, block_s=0.1),
            QueueSpec(handler=f"{H}:record_job", registry="test:registry", refresh_s=0.3, block_s=0.1),
        ),
    )
    worker = await local_worker(work)
    try:
        await wait_for(lambda: equals(r.hlen("test:handled"), 2), what="the first two jobs")
        # new queues appear: a new list matching the pattern, a new member of the registry
        pushed_at = time.monotonic()
        await r.lpush("contest:submissions:{42}", '"s42"')
        await r.sadd("test:registry", "reg:b")
        await r.lpush("reg:b", '"r2"')
        await wait_for(lambda: equals(r.hlen("test:handled"), 4), timeout_s=5, what="the new queues' jobs")
        assert time.monotonic() - pushed_at < 3.0
    finally:
        await worker.stop()
    assert set(await handled(r)) == {job_id(v) for v in ('"s1"', '"r1"', '"s42"', '"r2"')}
    assert await r.lrange("contest:other", 0, -1) == [b'"not mine"']
    pattern, registry = worker.consumers.queues
    assert "contest:other" not in pattern.queues
    assert pattern.queues == ["contest:submissions:1", "contest:submissions:{42}"]  # kept while empty
    assert registry.queues == ["reg:a", "reg:b"]
    assert await corral_keys(r, "processing") == []
    await r.aclose()


async def test_a_drained_pattern_queue_gets_its_next_job_within_the_block_time(
    redis_any: Any, local_worker: Any
) -> None:
    """A drained list is gone from Redis, so the next SCAN does not find it: its next job must still be
    picked up within the block time, not at the discovery after next (refresh_s = 1.5 here)."""

    r = client(redis_any.url)
    await r.lpush("drained:a", '"first"')
    spec = QueueSpec(handler=f"{H}:record_job", pattern="drained:*", refresh_s=1.5, block_s=0.2)
    worker = await local_worker(WorkSpec(redis=redis_spec(redis_any.url), queues=(spec,)))
    [consumer] = worker.consumers.queues
    try:
        await wait_for(lambda: equals(r.hlen("test:handled"), 1), what="the first job")
        assert not await r.exists("drained:a")  # drained: Redis deleted the list
        drained_at = time.monotonic()
        await wait_for(lambda: consumer.discovery._discovered_at > drained_at, timeout_s=5, what="a scan")
        pushed_at = time.monotonic()  # just after a scan that could not see the queue
        await r.lpush("drained:a", '"again"')
        await wait_for(lambda: equals(r.hlen("test:handled"), 2), timeout_s=5, what="the next job")
        latency_s = time.monotonic() - pushed_at
    finally:
        await worker.stop()
    assert latency_s < 1.0, f"{latency_s:.2f}s: it waited for the next discovery"
    await r.aclose()


async def test_discovery_keeps_queues_whose_jobs_wait_for_a_retry(redis_any: Any, local_worker: Any) -> None:
    r = client(redis_any.url)
    queues = ("retry:q:1", "retry:q:{7}")
    for queue in queues:
        await r.lpush(queue, json.dumps({"q": queue}))
    work = queue_work(
        redis_any.url,
        pattern="retry:q:*",
        handler=f"{H}:fail_first",
        refresh_s=0.1,
        block_s=0.1,
        backoff_initial_s=0.5,
    )
    worker = await local_worker(work)
    try:
        # after the first attempt the lists are gone; only the retry sets know the queues
        await wait_for(lambda: _all_retrying(r, queues), what="both jobs waiting to retry")
        assert await r.exists(*queues) == 0
        await wait_for(lambda: equals(r.hlen("test:handled"), 2), timeout_s=8, what="retried jobs handled")
    finally:
        await worker.stop()
    assert sorted(worker.consumers.queues[0].queues) == sorted(queues)
    await r.aclose()


async def _all_retrying(r: Any, queues: tuple[str, ...]) -> bool:
    return all([await r.zcard(KEYS.retry(q)) == 1 for q in queues])


# -- pools of real children ----------------------------------------------------------------------


async def processing_lengths(r: Any) -> dict[str, int]:
    return {key: int(await r.llen(key)) for key in await corral_keys(r, "processing")}


async def test_foreign_and_envelope_jobs_are_handled_exactly_once_across_workers(
    redis_any: Any, consumer_pool: Pool
) -> None:
    r = client(redis_any.url)
    values = [json.dumps({"n": n}) for n in range(250)] + ['"a string"', "42", "[1, 2]", "null", "3.5"]
    early, late = values[:100], values[100:]
    for i, raw in enumerate(early):  # as redis-cli LPUSH would: bare JSON, no envelope
        await r.lpush("q:a" if i % 2 else "q:b", raw)
    envelopes = [encode_job({"env": n}, job_id=f"env-{n}", attempt=2) for n in range(20)]
    cp = consumer_pool(3, queue_work(redis_any.url, names=("q:a", "q:b"), handler=f"{H}:record_job",
                                     batch_size=10))  # fmt: skip
    try:
        assert await cp.pool.spawn_all()
        for i, raw in enumerate(late):
            await r.rpush("q:a" if i % 2 else "q:b", raw)  # RPUSH works too (taken next)
        await r.lpush("q:a", *envelopes)
        total = len(values) + len(envelopes)
        await wait_for(lambda: equals(r.hlen("test:handled"), total), timeout_s=20, what=f"{total} jobs")
        await wait_for(lambda: _empty_processing(r), what="every batch acknowledged")
    finally:
        await cp.pool.stop(10)
    counts = await handled(r)
    expected = {job_id(v) for v in values} | {f"env-{n}" for n in range(20)}
    assert set(counts) == expected
    assert [k for k, v in counts.items() if v != 1] == [], "duplicates"
    attempts = {k.decode(): int(v) for k, v in (await r.hgetall("test:attempt")).items()}
    assert all(attempts[f"env-{n}"] == 2 for n in range(20))
    assert all(attempts[job_id(v)] == 1 for v in values)
    data = {k.decode(): json.loads(v) for k, v in (await r.hgetall("test:data")).items()}
    assert data["env-7"] == {"env": 7} and data[job_id("null")] is None and data[job_id("3.5")] == 3.5
    assert await r.llen("q:a") == 0 and await r.llen("q:b") == 0
    assert await r.exists(KEYS.dead("q:a"), KEYS.dead("q:b")) == 0
    await r.aclose()


async def _empty_processing(r: Any) -> bool:
    return not any((await processing_lengths(r)).values())


async def test_job_of_a_sigkilled_worker_is_handled_again_promptly(
    redis_any: Any, consumer_pool: Pool
) -> None:
    r = client(redis_any.url)
    cp = consumer_pool(2, queue_work(redis_any.url, names=("jobs",), handler=f"{H}:block_first"))
    try:
        assert await cp.pool.spawn_all()
        raw = json.dumps({"victim": True})
        jid = job_id(raw)
        await r.lpush("jobs", raw)
        info = json.loads(await wait_for(lambda: r.get(f"test:blocked:{jid}"), what="the handler blocked"))
        dead_worker = info["worker"]
        slot = next(s for s in (0, 1) if cp.pid(s) == info["pid"])
        assert cp.worker_id(slot) == dead_worker
        processing = KEYS.processing("jobs", dead_worker)
        assert await r.lrange(processing, 0, -1) == [raw.encode()]
        os.kill(info["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        await wait_for(lambda: r.hget("test:handled", jid), timeout_s=10, what="the job handled again",
                       interval_s=0.005)  # fmt: skip
        delay_s = time.monotonic() - killed_at
        assert delay_s < 2.0, f"the job came back {delay_s:.2f}s after the kill"
        assert await r.llen(processing) == 0
        assert await r.exists(KEYS.held_queues("test", dead_worker)) == 0
        assert await r.zscore(KEYS.members("test"), dead_worker) is None
        # (the helper's reply may arrive after the job was handled again)
        await wait_for(lambda: cp.recovery.last_latency_s is not None, what="the recovery reply")
        assert cp.recovery.last_latency_s < 2.0
        assert int(await r.hget("test:attempts", jid)) == 2
        assert int(await r.hget("test:handled", jid)) == 1
        # the slot comes back and the pool keeps working
        await wait_for(lambda: cp.pool.wait_ready(0.01), timeout_s=15, what="the slot replaced")
        await r.set("test:release", 1)
        await r.lpush("jobs", '"after"')
        await wait_for(lambda: r.hget("test:handled", job_id('"after"')), what="a job after the kill")
    finally:
        await r.set("test:release", 1)
        await cp.pool.stop(10)
    assert await _empty_processing(r)
    await r.aclose()


def _stop_requests_seen(cp: ConsumerPool, mode: str) -> bool:
    return all(f"stopping ({mode})" in cp.log(slot) for slot in range(cp.pool.size))


async def test_graceful_stop_finishes_the_jobs_in_hand(redis_any: Any, consumer_pool: Pool) -> None:
    r = client(redis_any.url)
    raws = [json.dumps({"n": n}) for n in range(20)]
    await r.lpush("jobs", *raws)
    cp = consumer_pool(2, queue_work(redis_any.url, names=("jobs",), handler=f"{H}:block_all",
                                     batch_size=5))  # fmt: skip
    conns: list[Any] = []
    try:
        assert await cp.pool.spawn_all()
        conns = list(cp.pool.connections())
        await wait_for(lambda: equals(r.llen("test:started"), 2), what="both workers busy")
        assert sum((await processing_lengths(r)).values()) == 2  # a free lane's worth each
        stopping = asyncio.ensure_future(cp.pool.stop(10))
        await wait_for(lambda: _stop_requests_seen(cp, "graceful"), what="the children asked to stop")
        await r.set("test:release", 1)
        await asyncio.wait_for(stopping, 15)
    finally:
        await r.set("test:release", 1)
        await cp.pool.stop(10)
    assert [c.process.returncode for c in conns] == [0, 0]
    counts = await handled(r)
    assert len(counts) == 2 and set(counts.values()) == {1}  # both jobs finished, no more taken
    left = {job_id(raw) for raw in await r.lrange("jobs", 0, -1)}
    assert len(left) == 18 and not left & set(counts)
    assert await processing_lengths(r) == {}
    await r.aclose()


async def test_fast_stop_hands_jobs_back(redis_any: Any, consumer_pool: Pool) -> None:
    r = client(redis_any.url)
    raws = [json.dumps({"n": n}) for n in range(20)]
    await r.lpush("jobs", *raws)
    # the handlers spin on Redis commands: the cancellation must get through all the same
    cp = consumer_pool(2, queue_work(redis_any.url, names=("jobs",), handler=f"{H}:spin_all",
                                     batch_size=5))  # fmt: skip
    conns: list[Any] = []
    try:
        assert await cp.pool.spawn_all()
        conns = list(cp.pool.connections())
        await wait_for(lambda: equals(r.llen("test:started"), 2), what="both workers busy")
        started = time.monotonic()
        await cp.pool.stop(10, fast=True)
        assert time.monotonic() - started < 5.0, cp.log()
    finally:
        await r.set("test:release", 1)
        await cp.pool.stop(10)
    assert all(c.state is WorkerState.STOPPED for c in conns)
    assert await r.hlen("test:handled") == 0
    assert sorted(await r.lrange("jobs", 0, -1)) == sorted(raw.encode() for raw in raws)
    assert await processing_lengths(r) == {}
    assert "handing jobs back failed" not in cp.log()
    await r.aclose()


OUTAGE = re.compile(r"(\S+): .*retrying with backoff until it is back")


def test_workers_carry_on_through_a_redis_restart(redis_clean: Any, consumer_pool: Pool, run: Any) -> None:
    async def body() -> None:
        r = client(redis_clean.url)
        before = [json.dumps({"n": n}) for n in range(600)]
        after = [json.dumps({"n": n}) for n in range(600, 800)]
        await r.lpush("jobs", *before)
        cp = consumer_pool(2, queue_work(redis_clean.url, names=("jobs",), handler=f"{H}:slow_count",
                                         batch_size=20))  # fmt: skip
        try:
            assert await cp.pool.spawn_all()
            await wait_for(lambda: _more_than(r.hlen("test:handled"), 100), what="work under way")
            await r.aclose()
            await asyncio.to_thread(redis_server_stop, redis_clean)
            await wait_for(lambda: all(OUTAGE.search(cp.log(s)) for s in (0, 1)), timeout_s=10,
                           what="both children noticing the outage")  # fmt: skip
            await asyncio.sleep(2.0)  # the outage lasts: several rounds of retrying, logged once
            await asyncio.to_thread(redis_clean.start)
            r = client(redis_clean.url)
            await r.lpush("jobs", *after)
            total = len(before) + len(after)
            try:
                await wait_for(lambda: equals(r.hlen("test:handled"), total), timeout_s=20,
                               what=f"all {total} jobs handled")  # fmt: skip
            except AssertionError:
                print("in flight:", await processing_lengths(r), "queued:", await r.llen("jobs"))
                print(cp.log())
                raise
            await wait_for(lambda: _empty_processing(r), timeout_s=5, what="nothing left in flight")
        finally:
            await cp.pool.stop(10)
        counts = await handled(r)
        assert set(counts) == {job_id(v) for v in before + after}
        assert await r.llen("jobs") == 0 and await r.zcard(KEYS.retry("jobs")) == 0
        for slot in (0, 1):
            log = cp.log(slot)
            units = [m.group(1) for m in OUTAGE.finditer(log)]
            assert units and len(units) == len(set(units)), f"slot {slot} logged the outage {units}"
            assert "working again" in log
        await r.aclose()

    run(body(), 90)


def redis_server_stop(server: Any) -> None:
    server.stop()


async def _more_than(coro: Any, n: int) -> bool:
    return bool(await coro > n)


async def test_a_rejected_job_is_dead_lettered_at_once_without_retries(
    redis_any: Any, local_worker: Any
) -> None:
    r = client(redis_any.url)
    await r.lpush("rq", *(json.dumps({"n": n}) for n in range(4)))
    work = queue_work(redis_any.url, names=("rq",), handler=f"{H}:reject_odd", max_attempts=5)
    worker = await local_worker(work)
    try:
        dead = await wait_for(lambda: at_least(r.lrange(KEYS.dead("rq"), 0, -1), 2), what="two rejected")
        await wait_for(lambda: equals(r.llen("rq"), 0), what="the queue drained")
    finally:
        await worker.stop()
    records = [json.loads(d) for d in dead]
    assert sorted(rec["error"] for rec in records) == ["rejected: odd n=1", "rejected: odd n=3"]
    assert {rec["attempt"] for rec in records} == {1}  # no retry before the dead letter
    assert await r.zcard(KEYS.retry("rq")) == 0
    stats = worker.consumers.queues[0].stats["rq"]
    assert (stats.processed, stats.dead, stats.retried, stats.failed) == (2, 2, 0, 0)
    await r.aclose()


async def test_concurrency_runs_a_batch_side_by_side(redis_any: Any, local_worker: Any) -> None:
    r = client(redis_any.url)
    await r.lpush("cq", *(json.dumps({"n": n}) for n in range(8)))
    work = queue_work(redis_any.url, names=("cq",), handler=f"{H}:sleepy_count", batch_size=8, concurrency=4)
    started = time.monotonic()
    worker = await local_worker(work)
    try:
        await wait_for(lambda: equals(r.hlen("test:handled"), 8), what="8 jobs handled")
        elapsed = time.monotonic() - started
    finally:
        await worker.stop()
    assert elapsed < 1.2  # 8 x 0.2 s one after another would be 1.6 s; 4 at once, about 0.4 s
    assert max(int(level) for level in await r.lrange("test:levels", 0, -1)) == 4  # the lanes, exactly
    assert set((await handled(r)).values()) == {1}
    assert await corral_keys(r, "processing") == []
    await r.aclose()
