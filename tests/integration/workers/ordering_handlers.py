"""Handlers for the partitioned-stream tests: record the order events of each key are seen in."""

from __future__ import annotations

import asyncio

from corral.workers.messages import HandlerContext, Message


async def record_order(message: Message, ctx: HandlerContext) -> None:
    key = message.fields["key"]
    await asyncio.sleep(0)  # a yield point, so that concurrent handling would show up
    await ctx.redis.rpush(f"test:order:{key}", message.fields["seq"])
