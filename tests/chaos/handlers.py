"""Handlers of the chaos pool (imported by its children, by import path).

Each records what it handled in a Redis hash (item number -> times handled), so that a lost item
(missing) and a duplicate (count > 1) are both visible. The first call in each process also records
``pid -> worker id``, so the test can tell which worker a SIGKILLed pid was.
"""

from __future__ import annotations

import asyncio
import os

from corral.workers.messages import HandlerContext, Job, Message

JOBS_SEEN = "chaos:seen:jobs"
ENTRIES_SEEN = "chaos:seen:entries"
WORKER_IDS = "chaos:worker_ids"

_registered: set[int] = set()  # this process's pid, once recorded


async def _register(ctx: HandlerContext) -> None:
    if os.getpid() not in _registered:
        await ctx.redis.hset(WORKER_IDS, str(os.getpid()), ctx.worker_id)
        _registered.add(os.getpid())


async def count_job(job: Job, ctx: HandlerContext) -> None:
    await _register(ctx)
    await asyncio.sleep(0)  # a little work: a kill may land between handling and acknowledging
    await ctx.redis.hincrby(JOBS_SEEN, str(job.data["n"]), 1)


async def count_entry(message: Message, ctx: HandlerContext) -> None:
    await _register(ctx)
    await asyncio.sleep(0)
    await ctx.redis.hincrby(ENTRIES_SEEN, message.fields["n"], 1)
