"""Handlers of the fault-sequence pool (imported by its children, by import path).

A job's data is ``{"n": <number>, "kind": "ok" | "poison" | "deadly" | "stall"}``: ``ok`` is counted,
``poison`` always fails (dead-lettered after max_attempts), ``deadly`` SIGKILLs the process handling
it (dead-lettered after max_attempts deaths), ``stall`` blocks the child's event loop for
``STALL_S`` (its lease holds: nobody takes its work over) and is then counted. Entries are counted. Counts are
hashes (number -> times handled), so a lost item (missing) and a duplicate (> 1) both show.
"""

from __future__ import annotations

import os
import signal
import time

from corral.contract import RedisSpec
from corral.workers.durability import Durability
from corral.workers.messages import HandlerContext, Job, Message
from corral.workers.topology import Kind, kind_of_client

JOBS_SEEN = "faults:seen:jobs"
ENTRIES_SEEN = "faults:seen:entries"
STALL_S = 2.5  # a blocked loop: it keeps its lease (renewed by a thread), below heartbeat_timeout_s


async def handle_job(job: Job, ctx: HandlerContext) -> None:
    kind = job.data["kind"]
    if kind == "poison":
        raise ValueError(f"poison job {job.data['n']}")
    if kind == "deadly":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "stall":
        time.sleep(STALL_S)  # on purpose: the loop stalls (its lease holds, renewed by a thread)
    await record(ctx, JOBS_SEEN, str(job.data["n"]))


async def handle_entry(message: Message, ctx: HandlerContext) -> None:
    await record(ctx, ENTRIES_SEEN, message.fields["n"])


async def record(ctx: HandlerContext, key: str, n: str) -> None:
    """Count ``n`` in ``key``; with replicas (cluster, Sentinel), only once one has it: a failover
    must not forget that the item was handled."""
    if kind_of_client(ctx.redis) is Kind.STANDALONE:
        await ctx.redis.hincrby(key, n, 1)
        return
    async with ctx.redis.pipeline(transaction=False) as pipe:
        pipe.hincrby(key, n, 1)
        await Durability(ctx.redis, RedisSpec(wait_replicas=1, wait_timeout_ms=5000)).execute(pipe, [key])
