"""Handlers used by the Redis consumer tests (imported by the children, by import path)."""

from __future__ import annotations

from typing import Any

from workers.messages import HandlerContext, Job, Message


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
