"""Handlers used by the Redis consumer tests (imported by the children, by import path)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from corral.workers.messages import HandlerContext, Job, Message, Reject, Requeue


async def count_job(job: Job, ctx: HandlerContext) -> None:
    """Record every handled job id in a Redis hash (id -> times handled): duplicates are visible."""
    await ctx.redis.hincrby("test:handled", job.id, 1)


async def count_entry(message: Message, ctx: HandlerContext) -> None:
    await ctx.redis.hincrby("test:handled_entries", message.fields.get("n", message.id), 1)


def fail_always(job: Job) -> None:
    raise ValueError(f"cannot handle {job.data!r}")


def fail_entry(message: Message) -> None:
    raise RuntimeError(f"cannot handle entry {message.id}")


def noop(_item: Any) -> None:
    return None


# -- queues -----------------------------------------------------------------------------------------


async def record_job(job: Job, ctx: HandlerContext) -> None:
    """``count_job`` plus what the handler saw: the attempt and the data, by job id."""
    await ctx.redis.hset("test:attempt", job.id, job.attempt)
    await ctx.redis.hset("test:data", job.id, json.dumps(job.data))
    await ctx.redis.hincrby("test:handled", job.id, 1)


async def fail_recording(job: Job, ctx: HandlerContext) -> None:
    """Always fails, after recording ``{id, attempt, t}`` in the list ``test:attempts``."""
    await ctx.redis.rpush(
        "test:attempts", json.dumps({"id": job.id, "attempt": job.attempt, "t": time.time()})
    )
    raise ValueError(f"cannot handle {job.data!r}")


async def fail_first(job: Job, ctx: HandlerContext) -> None:
    """Fails on the first attempt, then counts the job as handled."""
    if job.attempt == 1:
        raise ValueError("first attempt fails")
    await ctx.redis.hincrby("test:handled", job.id, 1)


async def requeue_once(job: Job, ctx: HandlerContext) -> None:
    """A job whose data says ``requeue: "front"|"back"`` is requeued the first time it is seen;
    every handled job appends its ``n`` to ``test:order``."""
    where = job.data.get("requeue")
    if where and await ctx.redis.hincrby("test:requeues", job.id, 1) == 1:
        raise Requeue(front=where == "front")
    await ctx.redis.rpush("test:order", job.data["n"])


async def _wait_released(ctx: HandlerContext, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await ctx.redis.exists("test:release") and time.monotonic() < deadline:  # noqa: ASYNC110 - a Redis key
        await asyncio.sleep(0.02)


async def block_first(job: Job, ctx: HandlerContext) -> None:
    """The first attempt of a job announces itself in ``test:blocked:<id>`` (pid, worker id) and
    blocks until ``test:release`` exists; later attempts are counted in ``test:handled``."""
    if await ctx.redis.hincrby("test:attempts", job.id, 1) == 1:
        info = {"pid": os.getpid(), "worker": ctx.worker_id}
        await ctx.redis.set(f"test:blocked:{job.id}", json.dumps(info))
        await _wait_released(ctx)
    await ctx.redis.hincrby("test:handled", job.id, 1)


async def block_all(job: Job, ctx: HandlerContext) -> None:
    """Announces every job in ``test:started`` and blocks until ``test:release`` exists."""
    await ctx.redis.rpush("test:started", job.id)
    await _wait_released(ctx)
    await ctx.redis.hincrby("test:handled", job.id, 1)


async def spin_all(job: Job, ctx: HandlerContext) -> None:
    """Like ``block_all``, but polls Redis back to back: a cancellation most likely arrives while
    redis-py is inside a command (on Python 3.11 it may be swallowed there, CPython gh-86296)."""
    await ctx.redis.rpush("test:started", job.id)
    deadline = time.monotonic() + 30.0
    while not await ctx.redis.exists("test:release") and time.monotonic() < deadline:
        pass
    await ctx.redis.hincrby("test:handled", job.id, 1)


async def slow_count(job: Job, ctx: HandlerContext) -> None:
    """``count_job`` after a short pause (``data["sleep"]`` seconds, default 2 ms)."""
    pause = job.data.get("sleep", 0.002) if isinstance(job.data, dict) else 0.002
    await asyncio.sleep(pause)
    await ctx.redis.hincrby("test:handled", job.id, 1)


# -- streams ----------------------------------------------------------------------------------------


async def fail_entry_recording(message: Message, ctx: HandlerContext) -> None:
    """Always fails, after recording ``{id, attempt, t, worker}`` in ``test:entry_attempts``."""
    record = {"id": message.id, "attempt": message.attempt, "t": time.time(), "worker": ctx.worker_id}
    await ctx.redis.rpush("test:entry_attempts", json.dumps(record))
    raise RuntimeError(f"cannot handle entry {message.id}")


async def block_first_entry(message: Message, ctx: HandlerContext) -> None:
    """Like ``block_first`` for stream entries (keyed by the field ``n``)."""
    n = message.fields["n"]
    if await ctx.redis.hincrby("test:entry_attempts", n, 1) == 1:
        info = {"pid": os.getpid(), "worker": ctx.worker_id}
        await ctx.redis.set(f"test:blocked:{n}", json.dumps(info))
        await _wait_released(ctx)
    await ctx.redis.hincrby("test:handled_entries", n, 1)


CAPTURED: list[Message] = []  # in-process tests only


def capture(message: Message) -> None:
    CAPTURED.append(message)


def reject_odd(job: Job) -> None:
    """Rejects (dead-letter at once, no retry) jobs whose data has an odd ``n``."""
    if job.data["n"] % 2:
        raise Reject(f"odd n={job.data['n']}")


def reject_entry(message: Message) -> None:
    raise Reject(f"cannot ever handle {message.fields.get('n')}")


async def _side_by_side(ctx: HandlerContext) -> None:
    """0.2 s of (asynchronous) work; how many handlers run at once is recorded in ``test:levels``."""
    await ctx.redis.rpush("test:levels", await ctx.redis.incr("test:running"))
    await asyncio.sleep(0.2)
    await ctx.redis.decr("test:running")


async def sleepy_count(job: Job, ctx: HandlerContext) -> None:
    """``_side_by_side``, then counted."""
    await _side_by_side(ctx)
    await ctx.redis.hincrby("test:handled", job.id, 1)


async def sleepy_entry(message: Message, ctx: HandlerContext) -> None:
    await _side_by_side(ctx)
    await ctx.redis.hincrby("test:handled_entries", message.fields["n"], 1)


async def hold_each_delivery(job: Job, ctx: HandlerContext) -> None:
    """Delivery n of any job (counted in ``test:seen``) waits until ``test:release:<n>`` exists."""
    seen = await ctx.redis.incr("test:seen")
    deadline = time.monotonic() + 30.0
    while not await ctx.redis.exists(f"test:release:{seen}") and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    await ctx.redis.hincrby("test:handled", job.id, 1)


async def redis_away_on_poison(job: Job, ctx: HandlerContext) -> None:
    """A job whose data is ``"poison"`` raises what a dropped Redis connection raises (the round is
    interrupted, not failed); the others are counted."""
    if job.data == "poison":
        raise RedisConnectionError("simulated: the connection dropped")
    await ctx.redis.hincrby("test:handled", job.id, 1)


async def fail_first_entry_then_record(message: Message, ctx: HandlerContext) -> None:
    """An entry's first delivery fails; later ones append its fields (JSON) to ``test:fields``."""
    if await ctx.redis.hincrby("test:deliveries", message.id, 1) == 1:
        raise RuntimeError("first delivery fails")
    await ctx.redis.rpush("test:fields", json.dumps(message.fields))


async def kill_own_worker(job: Job, ctx: HandlerContext) -> None:
    """A job whose data is ``"deadly"`` SIGKILLs the process handling it (as an OOM kill or a
    segfault would), after counting the delivery and its attempt in ``test:deadly``; others are counted."""
    if job.data == "deadly":
        await ctx.redis.rpush("test:deadly", job.attempt)
        os.kill(os.getpid(), signal.SIGKILL)
    await ctx.redis.hincrby("test:handled", job.id, 1)


async def sleep_async(job: Job) -> None:
    """Sleeps ``job.data["s"]`` seconds on the loop (a handler that overruns its timeout_s)."""
    await asyncio.sleep(job.data["s"])


def sleep_sync(job: Job) -> None:
    """Sleeps ``job.data["s"]`` seconds in its thread: it would block a loop it ran on."""
    time.sleep(job.data["s"])


async def slow_entry(message: Message, ctx: HandlerContext) -> None:
    """Takes ``fields["s"]`` seconds, then counts the entry (by its ``n``) and who handled it."""
    await asyncio.sleep(float(message.fields["s"]))
    await ctx.redis.hincrby("test:handled_entries", message.fields["n"], 1)
    await ctx.redis.rpush("test:handlers", ctx.worker_id)


async def fail_entry_one(message: Message, ctx: HandlerContext) -> None:
    """Entry ``n=1`` always fails; every delivery's attempt is recorded in ``test:attempts:<n>``."""
    await ctx.redis.rpush(f"test:attempts:{message.fields['n']}", message.attempt)
    if message.fields["n"] == "1":
        raise RuntimeError("entry 1 always fails")


def note_to_file(job: Job) -> None:
    """Append the job's ``n`` to a file of this process in ``job.data["out"]``: a record of what was
    handled that no Redis failover can lose (the failover tests count from these files)."""
    with open(os.path.join(job.data["out"], str(os.getpid())), "a") as handle:
        handle.write(f"{job.data['n']}\n")
    time.sleep(0.0005)  # a busy queue, not a drained one, when its primary is killed


async def note_time(job: Job, ctx: HandlerContext) -> None:
    """When each job was handled (``test:handled_at``: id -> unix seconds), and counted."""
    await ctx.redis.hset("test:handled_at", job.id, time.time())
    await ctx.redis.hincrby("test:handled", job.id, 1)


async def record_order(job: Job, ctx: HandlerContext) -> None:
    """The queue each job was taken from, in the order handled (``test:order``)."""
    await ctx.redis.rpush("test:order", job.queue)
    await ctx.redis.hincrby("test:handled", job.id, 1)


async def timed_run(job: Job, ctx: HandlerContext) -> None:
    """A run that takes ``data["sleep"]`` seconds; its start and end go to ``test:runs``."""
    started = time.time()
    await asyncio.sleep(float(job.data.get("sleep", 0.0)))
    await ctx.redis.rpush("test:runs", json.dumps({"id": job.id, "start": started, "end": time.time()}))


async def fail_until_allowed(job: Job, ctx: HandlerContext) -> None:
    """Fails until ``test:allow`` is set (a dead letter to retry later), then counts the job."""
    if not await ctx.redis.get("test:allow"):
        raise ValueError(f"not allowed yet: {job.data!r}")
    await ctx.redis.hincrby("test:handled", job.id, 1)


async def batch_count(jobs: list[Job], ctx: HandlerContext) -> None:
    """A batch handler: every job's write in one pipeline (one round trip), the batch's size noted;
    a batch holding a job with ``"poison"`` fails whole, before writing anything."""
    if any(isinstance(job.data, dict) and job.data.get("poison") for job in jobs):
        raise ValueError("a poison job in the batch")
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for job in jobs:
            pipe.hincrby("test:handled", job.id, 1)
        pipe.rpush("test:batch_sizes", len(jobs))
        await pipe.execute()


async def batch_entries(messages: list[Message], ctx: HandlerContext) -> None:
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for message in messages:
            pipe.hincrby("test:handled_entries", message.fields.get("n", message.id), 1)
        pipe.rpush("test:batch_sizes", len(messages))
        await pipe.execute()


def batch_insert(jobs: list[Job]) -> None:
    """A sync batch handler (run in the child's thread pool): one multi-row INSERT per batch."""
    import sqlite3

    with sqlite3.connect(jobs[0].data["db"], timeout=10) as db:
        db.executemany("INSERT INTO rows (id, n) VALUES (?, ?)", [(job.id, job.data["n"]) for job in jobs])


def _mark(job: Job, what: str) -> None:
    """``start|end <job n> <attempt> <pid> <unix s>`` appended to the file ``job.data["out"]``: a
    record of every run that no Redis outage can lose, for tests that count overlaps of runs."""
    with open(job.data["out"], "a") as handle:
        handle.write(f"{what} {job.data['n']} {job.attempt} {os.getpid()} {time.time()}\n")


def mark_sync(job: Job) -> None:
    """Sleeps ``job.data["s"]`` in its thread between two marks."""
    _mark(job, "start")
    time.sleep(job.data["s"])
    _mark(job, "end")


async def mark_async(job: Job) -> None:
    """Sleeps ``job.data["s"]`` on the loop between two marks."""
    _mark(job, "start")
    await asyncio.sleep(job.data["s"])
    _mark(job, "end")


async def mark_blocking(job: Job) -> None:
    """An async handler that blocks its loop for ``job.data["s"]`` (a CPU loop, a blocking call)."""
    _mark(job, "start")
    time.sleep(job.data["s"])
    _mark(job, "end")


def mark_or_redis_error(job: Job) -> None:
    """Sleeps ``job.data["s"]`` between two marks; with ``redis_error``, raises what a dropped Redis
    connection raises instead (its own client's outage): on the first attempt, or ``"always"``."""
    _mark(job, "start")
    error = job.data.get("redis_error")
    if error == "always" or (error and job.attempt == 1):
        _mark(job, "end")
        raise RedisConnectionError("the handler's own Redis went away")
    time.sleep(job.data["s"])
    _mark(job, "end")


def mark_or_fail(job: Job) -> None:
    """Sleeps ``job.data["s"]`` between two marks; with ``fail``, fails (a plain error) instead."""
    _mark(job, "start")
    if job.data.get("fail") and job.attempt == 1:
        _mark(job, "end")
        raise ValueError("this job fails once")
    time.sleep(job.data["s"])
    _mark(job, "end")


def _step(job: Job, step: int) -> None:
    """``step <job n> <step> <attempt> <pid>`` appended to ``job.data["out"]``: one step done."""
    with open(job.data["out"], "a") as handle:
        handle.write(f"step {job.data['n']} {step} {job.attempt} {os.getpid()}\n")


def steps_sync(job: Job, ctx: HandlerContext) -> None:
    """``job.data["steps"]`` steps of ``job.data["s"]`` each, from the checkpoint of an earlier
    attempt on; each step done is marked, then checkpointed; asked to stop, it hands the job back."""
    for step in range((job.checkpoint or {}).get("next", 0), job.data["steps"]):
        if ctx.stopping:
            raise Requeue()
        time.sleep(job.data["s"])
        _step(job, step)
        ctx.checkpoint({"next": step + 1})


async def steps_async(job: Job, ctx: HandlerContext) -> None:
    """``steps_sync`` on the loop."""
    for step in range((job.checkpoint or {}).get("next", 0), job.data["steps"]):
        if ctx.stopping:
            raise Requeue()
        await asyncio.sleep(job.data["s"])
        _step(job, step)
        await ctx.checkpoint({"next": step + 1})
