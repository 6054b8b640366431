"""Batch handlers: the handler takes the round's batch; a batch that fails is retried one item at a
time, so a poison job fails alone and its neighbours are handled exactly once."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from corral.contract import StreamSpec, WorkSpec
from tests.integration.conftest import KEYS, H, client, equals, queue_work, redis_spec, wait_for


def test_a_batch_handler_gets_the_round_as_one_list(redis_any: Any, local_worker: Any, run: Any) -> None:
    async def body() -> list[int]:
        r = client(redis_any.url)
        await r.lpush("bq", *(json.dumps({"n": n}) for n in range(300)))
        work = queue_work(redis_any.url, names=("bq",), handler=f"{H}:batch_count", batch=True, batch_size=50)
        worker = await local_worker(work)
        try:
            await wait_for(lambda: equals(r.hlen("test:handled"), 300), what="every job")
        finally:
            await worker.stop()
        assert set(await r.hvals("test:handled")) == {b"1"}
        assert await r.llen("bq") == 0 and await r.llen(KEYS.processing("bq", worker.worker_id)) == 0
        sizes = [int(n) for n in await r.lrange("test:batch_sizes", 0, -1)]
        await r.aclose()
        return sizes

    sizes = run(body())
    assert sum(sizes) == 300 and max(sizes) == 50 and len(sizes) <= 12, sizes  # whole rounds, not one by one


async def test_a_poison_job_fails_alone_and_its_neighbours_succeed_once(
    redis_clean: Any, local_worker: Any
) -> None:
    r = client(redis_clean.url)
    jobs = [json.dumps({"n": n, "poison": n == 7}) for n in range(20)]
    await r.lpush("pq", *jobs)
    work = queue_work(
        redis_clean.url,
        names=("pq",),
        handler=f"{H}:batch_count",
        batch=True,
        batch_size=20,
        max_attempts=1,
    )
    worker = await local_worker(work)
    try:
        await wait_for(lambda: equals(r.llen(KEYS.dead("pq")), 1), what="the poison job dead-lettered")
        await wait_for(lambda: equals(r.hlen("test:handled"), 19), what="its 19 neighbours")
    finally:
        await worker.stop()
    assert set(await r.hvals("test:handled")) == {b"1"}, "a neighbour handled twice"
    letter = json.loads((await r.lrange(KEYS.dead("pq"), 0, 0))[0])
    assert json.loads(letter["job"])["poison"] is True and "poison job in the batch" in letter["error"]
    assert worker.consumers.queues[0].batch_fallbacks == 1
    assert [int(n) for n in await r.lrange("test:batch_sizes", 0, -1)] == [1] * 19  # one at a time
    await r.aclose()


async def test_a_stream_batch_handler_acknowledges_the_batch(redis_any: Any, local_worker: Any) -> None:
    r = client(redis_any.url)
    for n in range(120):
        await r.xadd("bs", {"n": str(n)})
    spec = StreamSpec(
        stream="bs", handler=f"{H}:batch_entries", group="g", batch=True, batch_size=40, block_ms=200
    )
    worker = await local_worker(WorkSpec(redis=redis_spec(redis_any.url), streams=(spec,)))
    try:
        await wait_for(lambda: equals(r.hlen("test:handled_entries"), 120), what="every entry")
        await wait_for(lambda: r.xpending("bs", "g"), what="the pending summary")
        await wait_for(lambda: equals(_pending(r), 0), what="every entry acknowledged")
    finally:
        await worker.stop()
    sizes = [int(n) for n in await r.lrange("test:batch_sizes", 0, -1)]
    assert sum(sizes) == 120 and max(sizes) == 40
    await r.aclose()


async def _pending(r: Any) -> int:
    return int((await r.xpending("bs", "g"))["pending"])


def test_a_sync_batch_handler_inserts_many_rows_at_once(
    redis_clean: Any, local_worker: Any, run: Any, tmp_path: Path
) -> None:
    db = tmp_path / "rows.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE rows (id TEXT PRIMARY KEY, n INTEGER)")

    async def body() -> None:
        r = client(redis_clean.url)
        await r.lpush("iq", *(json.dumps({"n": n, "db": str(db)}) for n in range(500)))
        work = queue_work(
            redis_clean.url, names=("iq",), handler=f"{H}:batch_insert", batch=True, batch_size=100
        )
        worker = await local_worker(work)
        try:
            await wait_for(lambda: equals(r.llen("iq"), 0), what="the queue drained")
            await wait_for(lambda: worker.consumers.queues[0].succeeded == 500, what="every job handled")
        finally:
            await worker.stop()
        await r.aclose()

    run(body())
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT n) FROM rows").fetchone() == (500, 500)
