"""Handlers of the throughput bench (``bench/throughput.py``), imported by corral's children as
``bench.handlers:add`` and ``bench.handlers:add_entry``: the trivial job of every system in the
bench — compute a+b, then one INCR of the shared counter."""

from __future__ import annotations

import asyncio
import time

from corral.workers.messages import HandlerContext, Job, Message

COUNTER = "bench:count"


async def add(job: Job, ctx: HandlerContext) -> None:
    _ = job.data["a"] + job.data["b"]
    await ctx.redis.incr(COUNTER)


async def add_entry(message: Message, ctx: HandlerContext) -> None:
    _ = int(message.fields["a"]) + int(message.fields["b"])
    await ctx.redis.incr(COUNTER)


async def add_batch(jobs: list[Job], ctx: HandlerContext) -> None:
    """The same job as a batch handler: the sums, then every INCR in one pipelined round trip."""
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for job in jobs:
            _ = job.data["a"] + job.data["b"]
            pipe.incr(COUNTER)
        await pipe.execute()


async def add_entries(messages: list[Message], ctx: HandlerContext) -> None:
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for message in messages:
            _ = int(message.fields["a"]) + int(message.fields["b"])
            pipe.incr(COUNTER)
        await pipe.execute()


async def mark_done(job: Job, ctx: HandlerContext) -> None:
    """``bench/startup.py``: the first job done writes the time it was done."""
    await ctx.redis.set("bench:done", repr(time.time()))


async def timed_sleep(job: Job, ctx: HandlerContext) -> None:
    """``bench/makespan.py``: sleep ``job.data["s"]``, then note the start and end of the run."""
    started = time.time()
    await asyncio.sleep(job.data["s"])
    await ctx.redis.rpush("bench:runs", f"{job.data['n']} {started!r} {time.time()!r}")
    await ctx.redis.incr(COUNTER)
