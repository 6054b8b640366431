"""Stream consumer groups against a real Redis server: in-process consumers for the fine-grained
cases, pools of real children (with exit-triggered recovery) for crashes."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

from corral.contract import StreamSpec, WorkSpec
from corral.workers.consumers.streams import StreamConsumer
from tests.integration.conftest import (
    KEYS,
    POOL,
    ConsumerPool,
    H,
    at_least,
    client,
    equals,
    redis_spec,
    wait_for,
)
from tests.integration.workers import redis_handlers

Pool = Callable[..., ConsumerPool]


def stream_work(url: str, **spec: Any) -> WorkSpec:
    spec.setdefault("group", "grp")
    spec.setdefault("block_ms", 100)
    return WorkSpec(redis=redis_spec(url), streams=(StreamSpec(**spec),))


async def pending_count(r: Any, stream: str, group: str = "grp") -> int:
    return int((await r.xpending(stream, group))["pending"])


async def attempts_of(r: Any, key: str = "test:entry_attempts") -> dict[str, list[dict[str, Any]]]:
    by_id: dict[str, list[dict[str, Any]]] = {}
    for raw in await r.lrange(key, 0, -1):
        record = json.loads(raw)
        by_id.setdefault(record["id"], []).append(record)
    return by_id


# -- in process ----------------------------------------------------------------------------------


async def test_group_is_created_with_mkstream_and_start_id(redis_any: Any, local_worker: Any) -> None:
    r = client(redis_any.url)
    for n in range(3):
        await r.xadd("s:dollar", {"n": f"old-{n}"})
    work = WorkSpec(
        redis=redis_spec(redis_any.url),
        streams=(
            StreamSpec(stream="s:new", handler=f"{H}:count_entry", block_ms=100),  # group: the pool's
            StreamSpec(stream="s:dollar", handler=f"{H}:count_entry", start_id="$", block_ms=100),
        ),
    )
    worker = await local_worker(work)
    try:
        await wait_for(lambda: r.exists("s:new"), what="the stream created (MKSTREAM)")
        await wait_for(lambda: _groups(r, "s:dollar"), what="the group of s:dollar")
        for n in range(2):
            await r.xadd("s:dollar", {"n": f"new-{n}"})
            await r.xadd("s:new", {"n": f"s-new-{n}"})
        await wait_for(lambda: equals(r.hlen("test:handled_entries"), 4), what="4 new entries")
        await wait_for(lambda: _no_pending(r, ("s:new", "s:dollar"), POOL), what="all acknowledged")
    finally:
        await worker.stop()
    handled = {k.decode() for k in await r.hkeys("test:handled_entries")}
    assert handled == {"new-0", "new-1", "s-new-0", "s-new-1"}  # "$": the old entries are skipped
    assert await _groups(r, "s:new") == [POOL] and await _groups(r, "s:dollar") == [POOL]
    await r.aclose()


async def _groups(r: Any, stream: str) -> list[str]:
    if not await r.exists(stream):
        return []
    return [g["name"].decode() for g in await r.xinfo_groups(stream)]


async def _no_pending(r: Any, streams: tuple[str, ...], group: str = "grp") -> bool:
    return all([await pending_count(r, s, group) == 0 for s in streams])


async def test_failing_entries_are_claimed_after_min_idle_then_dead_lettered(
    redis_any: Any, local_worker: Any
) -> None:
    r = client(redis_any.url)
    ids = [(await r.xadd("fs", {"n": str(n), "payload": f"p{n}"})).decode() for n in range(2)]
    work = stream_work(
        redis_any.url,
        stream="fs",
        handler=f"{H}:fail_entry_recording",
        max_deliveries=3,
        min_idle_ms=300,
        claim_interval_s=0.1,
    )
    workers = [await local_worker(work, name="w1"), await local_worker(work, name="w2")]
    dead_key = KEYS.stream_dead("fs")
    try:
        dead = await wait_for(lambda: at_least(r.xrange(dead_key), 2), timeout_s=10, what="dead letters")
        await wait_for(lambda: _no_pending(r, ("fs",)), what="nothing pending")
    finally:
        for worker in workers:
            await worker.stop()
    attempts = await attempts_of(r)
    assert sorted(attempts) == sorted(ids)
    for entry_id, seen in attempts.items():
        assert [a["attempt"] for a in seen] == [1, 2, 3], seen
        gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(seen)]
        assert all(0.28 <= gap < 2.0 for gap in gaps), (entry_id, gaps)  # min_idle_ms apart
    records = {fields[b"_id"].decode(): fields for _, fields in dead}
    assert sorted(records) == sorted(ids)
    for n, entry_id in enumerate(ids):
        fields = records[entry_id]
        assert fields[b"n"] == str(n).encode() and fields[b"payload"] == f"p{n}".encode()
        assert fields[b"_group"] == b"grp"
        assert fields[b"_deliveries"] == b"3"  # failed on its last allowed delivery: dead at once
        assert b"RuntimeError: cannot handle entry" in fields[b"_error"], fields[b"_error"]
    assert sum(w.consumers.streams[0].dead for w in workers) == 2
    await r.aclose()


async def test_failures_of_claimed_entries_also_wait_for_min_idle(redis_any: Any, local_worker: Any) -> None:
    """Entries recovered from a dead consumer are read first; when they fail they must not be read
    again at once, round after round, but like any failure after ``min_idle_ms``."""

    r = client(redis_any.url)
    await r.xgroup_create("rs", "grp", id="0", mkstream=True)
    ids = [(await r.xadd("rs", {"n": str(n)})).decode() for n in range(2)]
    ghost = f"testhost:{POOL}:ghost"
    await r.xreadgroup("grp", ghost, {"rs": ">"})  # a consumer that took them and died
    work = stream_work(
        redis_any.url,
        stream="rs",
        handler=f"{H}:fail_entry_recording",
        max_deliveries=3,
        min_idle_ms=1000,  # longer than setting up a cluster client: no XAUTOCLAIM first
        claim_interval_s=0.1,
    )
    worker = await local_worker(work)
    try:
        await wait_for(lambda: _groups(r, "rs"), what="the group")
        moved = await worker.consumers.recover(ghost)
        assert moved == {"jobs": 0, "entries": 2}
        await wait_for(
            lambda: at_least(r.xrange(KEYS.stream_dead("rs")), 2), timeout_s=10, what="dead letters"
        )
    finally:
        await worker.stop()
    consumers = [c["name"].decode() for c in await r.xinfo_consumers("rs", "grp")]
    assert ghost not in consumers
    for entry_id, seen in (await attempts_of(r)).items():
        assert entry_id in ids
        gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(seen)]
        assert gaps and all(gap >= 0.95 for gap in gaps), (entry_id, [a["attempt"] for a in seen], gaps)
    await r.aclose()


async def test_trimming_never_drops_unacknowledged_entries(redis_any: Any, local_worker: Any) -> None:
    r = client(redis_any.url)
    await r.xgroup_create("ts", "grp", id="0", mkstream=True)
    held = [(await r.xadd("ts", {"n": f"held-{n}"})) for n in range(10)]
    stopped = f"testhost:{POOL}:stopped"
    await r.xreadgroup("grp", stopped, {"ts": ">"})  # read, never acknowledged
    async with r.pipeline(transaction=False) as pipe:
        for n in range(1000):
            pipe.xadd("ts", {"n": str(n)})
        await pipe.execute()
    work = stream_work(
        redis_any.url, stream="ts", handler=f"{H}:count_entry", trim_maxlen=20, trim_interval_s=0.05
    )
    worker = await local_worker(work)
    try:
        await wait_for(lambda: equals(r.hlen("test:handled_entries"), 1000), what="the new entries handled")
        # a few trim rounds later the held entries are all still there, with their fields
        trims = worker.consumers.streams[0]
        await wait_for(lambda: equals(pending_count(r, "ts"), 10), what="only the held entries pending")
        rounds = worker.manager.stats[trims.name].rounds
        await wait_for(lambda: worker.manager.stats[trims.name].rounds > rounds + 3, what="more rounds")
        for entry_id in held:
            assert await r.xrange("ts", entry_id, entry_id), f"{entry_id!r} was trimmed while pending"
        assert await r.xlen("ts") >= 1000  # nothing after the held entries could go either
        # once they are acknowledged, trimming goes ahead (to about trim_maxlen: whole nodes)
        await r.xack("ts", "grp", *held)
        await wait_for(lambda: _xlen_at_most(r, "ts", 20 + 100), what="the stream trimmed")
    finally:
        await worker.stop()
    assert await r.xlen("ts") >= 20
    last = await r.xrevrange("ts", count=1)
    assert last[0][1] == {b"n": b"999"}
    await r.aclose()


async def _xlen_at_most(r: Any, stream: str, n: int) -> bool:
    return bool(await r.xlen(stream) <= n)


async def test_raw_fields_are_binary_safe(redis_any: Any, local_worker: Any) -> None:
    r = client(redis_any.url)
    redis_handlers.CAPTURED.clear()
    blob = bytes(range(256))
    entry_id = await r.xadd("bs", {b"blob": blob, "text": "héllo ✓".encode(), b"\xff key": b"v"})
    worker = await local_worker(stream_work(redis_any.url, stream="bs", handler=f"{H}:capture"))
    try:
        await wait_for(lambda: redis_handlers.CAPTURED, what="the entry handled")
        await wait_for(lambda: _no_pending(r, ("bs",)), what="the entry acknowledged")
    finally:
        await worker.stop()
    [message] = redis_handlers.CAPTURED
    assert message.id == entry_id.decode() and message.stream == "bs" and message.attempt == 1
    assert message.raw_fields == {b"blob": blob, b"text": "héllo ✓".encode(), b"\xff key": b"v"}
    assert message.fields["text"] == "héllo ✓"
    assert message.fields["\ufffd key"] == "v"  # text access is lossy, never an error
    assert "\ufffd" in message.fields["blob"]
    await r.aclose()


# -- pools of real children ----------------------------------------------------------------------


async def test_entries_are_handled_exactly_once_across_workers(redis_any: Any, consumer_pool: Pool) -> None:
    r = client(redis_any.url)
    for n in range(100):
        await r.xadd("events", {"n": str(n)})
    cp = consumer_pool(
        3, stream_work(redis_any.url, stream="events", handler=f"{H}:count_entry", batch_size=10)
    )
    try:
        assert await cp.pool.spawn_all()
        async with r.pipeline(transaction=False) as pipe:
            for n in range(100, 400):
                pipe.xadd("events", {"n": str(n)})
            await pipe.execute()
        await wait_for(lambda: equals(r.hlen("test:handled_entries"), 400), timeout_s=20, what="400 entries")
        await wait_for(lambda: _no_pending(r, ("events",)), what="every entry acknowledged")
        worker_ids = {cp.worker_id(slot) for slot in range(3)}
    finally:
        await cp.pool.stop(10)
    counts = {k.decode(): int(v) for k, v in (await r.hgetall("test:handled_entries")).items()}
    assert set(counts) == {str(n) for n in range(400)}
    assert [n for n, c in counts.items() if c != 1] == [], "duplicates"
    consumers = {c["name"].decode(): c for c in await r.xinfo_consumers("events", "grp")}
    assert set(consumers) == worker_ids  # one consumer per worker process
    assert all(c["pending"] == 0 for c in consumers.values())
    await r.aclose()


async def test_pending_entries_of_a_sigkilled_worker_are_claimed_promptly(
    redis_any: Any, consumer_pool: Pool
) -> None:
    r = client(redis_any.url)
    # min_idle_ms is long: only the exit-triggered recovery can bring the entry back in time
    work = stream_work(
        redis_any.url,
        stream="events",
        handler=f"{H}:block_first_entry",
        block_ms=300,
        min_idle_ms=60_000,
    )
    cp = consumer_pool(2, work)
    try:
        assert await cp.pool.spawn_all()
        await wait_for(lambda: equals(_group_consumers(r, "events"), 2), what="both consumers in the group")
        entry_id = await r.xadd("events", {"n": "victim"})
        info = json.loads(await wait_for(lambda: r.get("test:blocked:victim"), what="the handler blocked"))
        dead_consumer = info["worker"]
        pending = await r.xpending_range("events", "grp", "-", "+", 10)
        assert [(p["message_id"], p["consumer"].decode()) for p in pending] == [(entry_id, dead_consumer)]
        os.kill(info["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        await wait_for(
            lambda: r.hget("test:handled_entries", "victim"),
            timeout_s=10,
            what="the entry handled again",
            interval_s=0.005,
        )
        delay_s = time.monotonic() - killed_at
        assert delay_s < 2.0, f"the entry came back {delay_s:.2f}s after the kill"
        await wait_for(lambda: _no_pending(r, ("events",)), what="the entry acknowledged")
        consumers = [c["name"].decode() for c in await r.xinfo_consumers("events", "grp")]
        assert dead_consumer not in consumers
        assert await r.zscore(KEYS.members(POOL), dead_consumer) is None
        assert int(await r.hget("test:entry_attempts", "victim")) == 2
    finally:
        await r.set("test:release", 1)
        await cp.pool.stop(10)
    await r.aclose()


async def _group_consumers(r: Any, stream: str) -> int:
    if not await r.exists(stream):
        return 0
    groups = await r.xinfo_groups(stream)
    return int(groups[0]["consumers"]) if groups else 0


async def test_a_rejected_entry_is_dead_lettered_at_once(redis_any: Any, local_worker: Any) -> None:
    r = client(redis_any.url)
    await r.xadd("rs", {"n": "7"})
    worker = await local_worker(
        stream_work(
            redis_any.url,
            stream="rs",
            handler=f"{H}:reject_entry",
            max_deliveries=5,
            min_idle_ms=60_000,
        )
    )
    dead_key = KEYS.stream_dead("rs")
    try:
        dead = await wait_for(lambda: at_least(r.xrange(dead_key), 1), what="the rejected entry")
    finally:
        await worker.stop()
    fields = dead[0][1]
    assert fields[b"_error"] == b"rejected: cannot ever handle 7"
    assert fields[b"_deliveries"] == b"1"
    assert await pending_count(r, "rs") == 0
    await r.aclose()


async def test_concurrency_runs_a_batch_of_entries_side_by_side(redis_any: Any, local_worker: Any) -> None:
    r = client(redis_any.url)
    for n in range(8):
        await r.xadd("cs", {"n": str(n)})
    started = time.monotonic()
    worker = await local_worker(
        stream_work(redis_any.url, stream="cs", handler=f"{H}:sleepy_entry", concurrency=8)
    )
    try:
        await wait_for(lambda: equals(r.hlen("test:handled_entries"), 8), what="8 entries handled")
        elapsed = time.monotonic() - started
        await wait_for(lambda: equals(pending_count(r, "cs"), 0), what="all acknowledged")
    finally:
        await worker.stop()
    assert elapsed < 1.2  # 8 x 0.2 s one after another would be 1.6 s
    assert max(int(level) for level in await r.lrange("test:levels", 0, -1)) == 8  # the lanes, exactly
    await r.aclose()


async def test_the_claim_keeper_outlives_a_batch_whose_entries_are_all_handled(redis_any: Any) -> None:
    """The keeper wakes between the last entry handled and the end of the round: nothing is left to
    keep claimed, and it must not die of an empty XCLAIM."""

    r = client(redis_any.url)
    spec = StreamSpec(stream="ks", handler=f"{H}:count_entry", group="g", min_idle_ms=30)
    consumer = StreamConsumer(spec, redis=r, keys=KEYS, worker_id="w1", log=logger)
    consumer.in_hand.append(b"1-0")
    consumer.unacked.append(b"1-0")
    keeper = asyncio.ensure_future(consumer._keep_claimed())
    done, _ = await asyncio.wait([keeper], timeout=0.2)  # about 20 wake-ups
    keeper.cancel()
    assert not done, keeper.exception()
    await r.aclose()
