"""Delayed jobs: held in Redis (never in a worker's memory) until due, then taken first by whichever
consumer is alive; on every topology, from the producer API and from ``corral enqueue``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from corral.workers.producer import aenqueue, due_time
from tests.e2e.conftest import run_cli
from tests.integration.conftest import KEYS, H, client, equals, queue_work, wait_for

DELAY_S = 0.8


def test_delayed_jobs_wait_in_redis_and_run_when_due(redis_any: Any, local_worker: Any, run: Any) -> None:
    async def body() -> dict[str, float]:
        r = client(redis_any.url)
        worker = await local_worker(queue_work(redis_any.url, names=("dq",), handler=f"{H}:note_time"))
        try:
            due: dict[str, float] = {}
            for n in range(20):
                delay_s = DELAY_S + n * 0.05
                not_before = time.time() + delay_s  # the producer's due time is this or later
                job = await aenqueue(r, "dq", {"n": n}, delay_s=delay_s)
                due[job] = not_before
            now_id = await aenqueue(r, "dq", {"n": "now"})  # not delayed: taken at once
            assert await r.zcard(KEYS.delayed("dq")) == 20 and await r.llen("dq") <= 1
            await wait_for(lambda: r.hexists("test:handled", now_id), what="the undelayed job")
            stats = worker.consumers.queues[0].stats
            await wait_for(lambda: stats["dq"].delayed == 20, what="status counting the delayed jobs")
            assert await r.hlen("test:handled") == 1  # none of the delayed ones yet
            await wait_for(lambda: equals(r.hlen("test:handled"), 21), timeout_s=10, what="every job")
        finally:
            await worker.stop()
        handled_at = {k.decode(): float(v) for k, v in (await r.hgetall("test:handled_at")).items()}
        await r.aclose()
        return {job: handled_at[job] - due_s for job, due_s in due.items()}

    lateness = run(body())
    worst = max(lateness.values())
    print(f"delayed jobs on {redis_any.kind}: 20 jobs, late by at most {worst * 1000:.0f} ms")
    assert min(lateness.values()) >= 0, "a delayed job ran before it was due"
    assert worst < 0.3, lateness  # ~20 ms here; the bound leaves room for a loaded machine


async def test_a_pattern_queue_with_only_delayed_jobs_is_found(redis_any: Any, local_worker: Any) -> None:
    r = client(redis_any.url)
    job = await aenqueue(r, "later:1", {"n": 1}, delay_s=0.3)  # its list does not even exist
    work = queue_work(redis_any.url, pattern="later:*", handler=f"{H}:count_job", refresh_s=0.2)
    worker = await local_worker(work)
    try:
        await wait_for(lambda: r.hexists("test:handled", job), timeout_s=5, what="the delayed job")
    finally:
        await worker.stop()
    await r.aclose()


def test_bad_delays_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        due_time(1.0, time.time() + 5)
    with pytest.raises(ValueError, match="must be > 0"):
        due_time(0.0)
    with pytest.raises(ValueError, match="in the past"):
        due_time(at_s=time.time() - 5)


def test_corral_enqueue_delays_and_refuses_bad_times(redis_clean: Any, tmp_path: Path) -> None:
    config = tmp_path / "corral.toml"
    config.write_text(f'[redis]\nurl = "{redis_clean.url}"\n[[queues]]\nnames = ["q"]\nhandler = "a:b"\n')
    r = redis_clean.client()
    done = run_cli("enqueue", "q", '{"n": 1}', "--delay", "90s", "-c", str(config))
    assert done.returncode == 0, done.stderr
    [(raw, due)] = r.zrange(KEYS.delayed("q"), 0, -1, withscores=True)
    assert json.loads(raw)["id"] == done.stdout.strip() and 85 < due - time.time() <= 90
    at = "2100-01-01T00:00:00+00:00"
    assert run_cli("enqueue", "q", "2", "--at", at, "-c", str(config)).returncode == 0
    assert r.zscore(KEYS.delayed("q"), r.zrange(KEYS.delayed("q"), -1, -1)[0]) == 4102444800.0
    for args, message in [
        (["--delay", "fast"], "--delay: 'fast' is not a duration"),
        (["--delay", "0s"], "the delay must be > 0"),
        (["--at", "2020-01-01T00:00:00Z"], "is in the past"),
        (["--at", "2100-01-01T00:00:00"], "has no time zone"),
        (["--at", "tomorrow"], "is not an ISO 8601 time"),
        (["--delay", "1s", "--front"], "front does not apply"),
    ]:
        done = run_cli("enqueue", "q", "3", *args, "-c", str(config))
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, (
            args,
            done.stderr,
        )
    assert r.zcard(KEYS.delayed("q")) == 2 and r.llen("q") == 0  # nothing changed by the refused ones
