"""Handlers of the throughput bench (``bench/throughput.py``), imported by corral's children as
``bench.handlers:add`` and ``bench.handlers:add_entry``: the trivial job of every system in the
bench — compute a+b, then one INCR of the shared counter."""

from __future__ import annotations

from corral.workers.messages import HandlerContext, Job, Message

COUNTER = "bench:count"


async def add(job: Job, ctx: HandlerContext) -> None:
    _ = job.data["a"] + job.data["b"]
    await ctx.redis.incr(COUNTER)


async def add_entry(message: Message, ctx: HandlerContext) -> None:
    _ = int(message.fields["a"]) + int(message.fields["b"])
    await ctx.redis.incr(COUNTER)
