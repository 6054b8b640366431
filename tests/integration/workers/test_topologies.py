"""What only a Valkey Cluster or a Sentinel-watched primary shows: every script inside one slot,
discovery over every primary, one queue sharded over the primaries, and failovers with work in
flight. (The queue, stream and delivery suites run on all three topologies too: ``redis_any``.)"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from corral.contract import QueueSpec, RedisSpec, WorkSpec
from corral.workers.jobs import scripts as job_scripts
from corral.workers.jobs.keys import Keys, queue_shards
from corral.workers.producer import enqueue
from corral.workers.scripts import Script
from tests.integration.conftest import KEYS, H, client, equals, queue_work, redis_spec, wait_for

JOB_MOVES = ("TAKE", "PROMOTE", "MOVE_ALL", "RECOVER", "ACK", "SETTLE", "RELEASE", "CHECKPOINT")
SCRIPTS = {name: getattr(job_scripts, name) for name in (*JOB_MOVES, "FIRE", "ENQUEUE_UNIQUE")}


def script_calls(keys: Keys, queue: str) -> dict[str, tuple[list[str], list[Any]]]:
    """Each queue script with the keys and arguments the consumer gives it."""
    processing, worker = keys.processing(queue, "w1"), "w1"
    return {
        "TAKE": (  # with a rate limit: its GCRA state in the queue's slot too
            [queue, processing, keys.deaths(queue), keys.holders(queue), keys.rate(queue)],
            [10, worker, 1000, 5],
        ),
        "PROMOTE": ([keys.retry(queue), queue], [time.time(), 100]),
        "MOVE_ALL": ([processing, queue], []),
        "RECOVER": (
            [processing, queue, keys.deaths(queue), keys.in_hand(queue, worker), keys.holders(queue)],
            [worker],
        ),
        "ACK": ([processing, keys.deaths(queue)], [b"job"]),
        "SETTLE": (
            [
                processing,
                keys.dead(queue),
                keys.deaths(queue),
                keys.in_hand(queue, worker),
                keys.unique(queue, "u"),
            ],
            [b"j", b"r", "lpush", 0, "id"],
        ),
        "RELEASE": ([keys.unique(queue, "u")], ["id"]),
        "CHECKPOINT": (  # with an announcement: PUBLISH from a script, on a cluster too
            [processing, keys.deaths(queue), keys.in_hand(queue, worker)],
            [b"j", b"j2", "channel", "said"],
        ),
        "FIRE": (
            [keys.schedule_state("s", queue), queue, keys.unique(queue, "schedule:s")],
            [int(time.time() * 1000), b"job", "s@t", 1000, 0, 1, int(time.time() * 1000)],
        ),
        "ENQUEUE_UNIQUE": ([queue, keys.unique(queue, "k")], [b"job", "id", 1000, "lpush", 0]),
    }


async def test_every_queue_script_runs_within_one_slot_on_the_cluster(valkey_cluster: Any) -> None:
    """Directly and inside a cluster pipeline, for a plain, a hash-tagged and a sharded queue."""
    valkey_cluster.heal()

    r = client(valkey_cluster.url)
    try:
        for queue in ("plain", "app:{tenant-9}:jobs", *queue_shards("big", 3)):
            await r.lpush(queue, b"job")
            calls = script_calls(KEYS, queue)
            assert set(calls) == set(SCRIPTS)
            for name, (keys, args) in calls.items():
                await Script(r, SCRIPTS[name])(keys, args)  # CROSSSLOT would raise here
            async with r.pipeline(transaction=False) as pipe:
                for name, (keys, args) in calls.items():
                    await Script(r, SCRIPTS[name])(keys, args, client=pipe)
                await pipe.execute()
    finally:
        await r.aclose()


async def test_pattern_discovery_finds_queues_on_every_primary(
    valkey_cluster: Any, local_worker: Any
) -> None:
    """The reported bug: given one node's URL, only that node's queues were found."""
    valkey_cluster.heal()
    valkey_cluster.flushall()
    queues = [f"disc:{i}" for i in range(12)]
    owners = {valkey_cluster.node_of(q).port for q in queues}
    assert len(owners) == 3, "the queues should live on all three primaries"

    r = client(valkey_cluster.url)
    for n, queue in enumerate(queues):
        await r.lpush(queue, json.dumps({"n": n}))
    spec = QueueSpec(pattern="disc:*", handler=f"{H}:count_job", refresh_s=0.2, block_s=0.2)
    worker = await local_worker(WorkSpec(redis=redis_spec(valkey_cluster.url), queues=(spec,)))
    try:
        await wait_for(lambda: equals(r.hlen("test:handled"), len(queues)), what="a job of every queue")
    finally:
        await worker.stop()
    await r.aclose()


def test_one_queue_sharded_over_the_primaries_is_consumed_exactly_once(
    valkey_cluster: Any, consumer_pool: Any, run: Any
) -> None:
    valkey_cluster.heal()
    valkey_cluster.flushall()
    shards = queue_shards("big", 3)
    assert len({valkey_cluster.node_of(s).port for s in shards}) == 3, "one shard per primary"
    producer = valkey_cluster.client()
    with producer.pipeline(transaction=False) as pipe:
        for n in range(3000):
            enqueue(pipe, "big", {"n": n}, shards=3)
        pipe.execute()
    lengths = [producer.llen(s) for s in shards]
    assert lengths == [1000, 1000, 1000], lengths  # in turn: evenly

    async def body() -> None:
        r = client(valkey_cluster.url)
        cp = consumer_pool(
            2, queue_work(valkey_cluster.url, names=("big",), shards=3, handler=f"{H}:count_job")
        )
        try:
            assert await cp.pool.spawn_all()
            await wait_for(lambda: equals(r.hlen("test:handled"), 3000), timeout_s=30, what="every job")
        finally:
            await cp.pool.stop(10)
        counts = Counter(int(v) for v in (await r.hgetall("test:handled")).values())
        assert counts == {1: 3000}, counts
        assert [await r.llen(s) for s in shards] == [0, 0, 0]
        await r.aclose()

    run(body(), 60)


def handled_numbers(out: Path) -> list[int]:
    return [int(line) for path in out.iterdir() for line in path.read_text().split()]


@pytest.mark.parametrize("topology", ["cluster", "sentinel"])
def test_a_failover_under_a_busy_queue_loses_no_job(
    topology: str, request: pytest.FixtureRequest, consumer_pool: Any, run: Any, tmp_path: Path
) -> None:
    """SIGKILL the primary holding a busy queue; its replica is promoted; every job is handled
    (with ``wait_replicas = 1``: takes and acks reach the replica first), duplicates counted."""
    topo = request.getfixturevalue(f"valkey_{topology}")
    topo.heal()
    topo.flushall()
    total = 4000
    primary = topo.node_of("busy") if topology == "cluster" else topo.primary()
    out = tmp_path / "handled"
    out.mkdir()
    with primary.client().pipeline(transaction=False) as pipe:  # the producer's pushes, on a replica
        for start in range(0, total, 500):
            pipe.lpush("busy", *(json.dumps({"n": n, "out": str(out)}) for n in range(start, start + 500)))
        pipe.execute_command("WAIT", 1, 5000)
        assert pipe.execute()[-1] >= 1
    redis = RedisSpec(
        url=topo.url, wait_replicas=1, wait_timeout_ms=500, socket_timeout_s=2, connect_timeout_s=1
    )
    spec = QueueSpec(names=("busy",), handler=f"{H}:note_to_file", block_s=0.2, batch_size=20)

    async def body() -> dict[str, float]:
        cp = consumer_pool(2, WorkSpec(redis=redis, queues=(spec,)))
        try:
            assert await cp.pool.spawn_all()
            await wait_for(
                lambda: len(handled_numbers(out)) >= total // 4, timeout_s=30, what="work under way"
            )
            at_kill = len(handled_numbers(out))
            killed = time.monotonic()
            primary.kill()
            await asyncio.to_thread(topo.wait_failover, primary)
            promoted_s = time.monotonic() - killed
            # what an operator's systemd does: the old primary comes back, as a replica (until then
            # every WAIT for a replica times out: a batch per wait_timeout_ms)
            healing = asyncio.ensure_future(asyncio.to_thread(topo.heal))
            await wait_for(
                lambda: len(handled_numbers(out)) > at_kill + 50, timeout_s=30, what="work resumed"
            )
            resumed_s = time.monotonic() - killed
            await healing
            await wait_for(lambda: len(set(handled_numbers(out))) == total, timeout_s=60, what="every job")
        except AssertionError:
            print(cp.log())
            r = client(topo.url)
            missing = set(range(total)) - set(handled_numbers(out))
            where = {k.decode(): await r.llen(k) async for k in r.scan_iter(match="*busy*", _type="list")}
            print(f"missing {len(missing)} (e.g. {sorted(missing)[:5]}); lists: {where}")
            await r.aclose()
            raise
        finally:
            await cp.pool.stop(10)
        return {"promoted_s": promoted_s, "resumed_s": resumed_s}

    figures = run(body(), 120)
    handled = handled_numbers(out)
    duplicates = len(handled) - len(set(handled))
    print(f"{topology} failover: {total} jobs, lost 0, duplicates {duplicates}, "
          f"promoted after {figures['promoted_s']:.2f}s, work resumed after {figures['resumed_s']:.2f}s")  # fmt: skip
    assert set(handled) == set(range(total))
    assert duplicates <= 2 * 20 * 2, "more duplicates than two batches per worker"
    topo.heal()


def test_a_resharding_under_a_busy_queue_loses_no_job(
    valkey_cluster: Any, consumer_pool: Any, run: Any, tmp_path: Path
) -> None:
    """The busy queue's slot moves to another primary, key by key, while workers take and ack:
    ASK, TRYAGAIN (a script whose keys are split between the two) and MOVED are met and survived."""
    cluster = valkey_cluster
    cluster.heal()
    cluster.flushall()
    total = 3000
    out = tmp_path / "handled"
    out.mkdir()
    r = cluster.client()
    r.lpush("busy", *(json.dumps({"n": n, "out": str(out)}) for n in range(total)))
    source = cluster.node_of("busy")
    target = next(n for n in cluster.primaries() if n.port != source.port)
    spec = QueueSpec(names=("busy",), handler=f"{H}:note_to_file", block_s=0.2, batch_size=20)

    async def body() -> int:
        cp = consumer_pool(2, WorkSpec(redis=redis_spec(cluster.url), queues=(spec,)))
        try:
            assert await cp.pool.spawn_all()
            await wait_for(
                lambda: len(handled_numbers(out)) >= total // 5, timeout_s=30, what="work under way"
            )
            moved = await asyncio.to_thread(cluster.migrate_slot, "busy", target)
            await wait_for(lambda: len(set(handled_numbers(out))) == total, timeout_s=60, what="every job")
        except AssertionError:
            print(cp.log())
            raise
        finally:
            await cp.pool.stop(10)
        return moved

    moved = run(body(), 120)
    handled = handled_numbers(out)
    assert cluster.node_of("busy").port == target.port, "the slot did not move"
    assert moved >= 2, "the queue and a processing list, at least"
    print(f"resharding: {moved} keys moved mid-run; {total} jobs, lost 0, duplicates {len(handled) - total}")
    assert set(handled) == set(range(total))
    assert not [k for k in r.scan_iter(match="corral:*processing*") if r.llen(k)]
