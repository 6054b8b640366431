"""Batch handlers (``batch = true`` on a queue or stream): the handler takes the round's whole batch
(a list of jobs or messages) and does its writes in one pipeline or one database round trip.

Collect-then-batch, with nothing changed in how each item is settled: every item of the round
still goes through the consumer's own per-item path (decode, dead-letter what cannot be handled,
count, acknowledge, retry); only its handler call is collected. When every item still in the round
has asked for its call, the handler runs once on all of them, in the round's order. If that call
raises, the batch is retried one item at a time (the handler gets a list of one), so a poison job
fails alone and its neighbours succeed: each item's own outcome (success, failure, ``Reject``,
``Requeue``) is then its own. Redis going away fails every item of the round alike.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

Invoke = Callable[[list[Any]], Awaitable[Any]]

_index: contextvars.ContextVar[int] = contextvars.ContextVar("corral_batch_index", default=0)
_called: contextvars.ContextVar[bool] = contextvars.ContextVar("corral_batch_called", default=False)


class Collector:
    """One round's handler calls, collected; flushed when every item has asked or left."""

    def __init__(self, expected: int, invoke: Invoke, log: Any) -> None:
        self.expected = expected
        self.invoke = invoke
        self.log = log
        self.waiting: list[tuple[int, Any, asyncio.Future[None]]] = []
        self.task: asyncio.Task[None] | None = None
        self.fallbacks = 0  # batches that failed and were retried one item at a time

    async def call(self, item: Any) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append((_index.get(), item, future))
        _called.set(True)
        self._flush_if_complete()
        await future

    def left(self) -> None:
        """An item finished its path; one that never asked for its call is not waited for."""
        if not _called.get():
            self.expected -= 1
            self._flush_if_complete()

    def _flush_if_complete(self) -> None:
        if self.task is None and self.waiting and len(self.waiting) == self.expected:
            self.task = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        ordered = sorted(self.waiting, key=lambda entry: entry[0])
        try:
            await self.invoke([item for _, item, _ in ordered])
        except Exception as exc:  # the handler's failure, whatever it raised (its own Redis errors too)
            self.fallbacks += 1
            self.log.warning("batch of {} failed ({!r}): one item at a time", len(ordered), exc)
            for _, item, future in ordered:
                try:
                    await self.invoke([item])
                except Exception as one:
                    future.set_exception(one)
                else:
                    future.set_result(None)
            return
        for _, _, future in ordered:
            future.set_result(None)

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


async def run_batched(items: list[Any], handle: Callable[..., Awaitable[None]], collector: Collector) -> None:
    """``await handle(*item)`` for every item at once (each one's handler call collected)."""

    async def each(index: int, item: tuple[Any, ...]) -> None:
        _index.set(index)
        _called.set(False)
        try:
            await handle(*item)
        finally:
            collector.left()

    tasks = [asyncio.ensure_future(each(i, item)) for i, item in enumerate(items)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        collector.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
