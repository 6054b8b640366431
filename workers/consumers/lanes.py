"""Running a round's handlers in lanes, refilled as they free, and how much a refill takes.

A round starts with what its consumer took. With a ``refill``, a lane that frees when nothing is
left in hand asks for more (one lane at a time; the others wait for what it finds) instead of
idling until the round's slowest job ends: a long job never holds others back while a lane is free.
While other lanes still run, a refill that finds nothing is tried again every ``POLL_MAX_S`` at
most; once every lane is idle and nothing is found, the round is over (the consumer then blocks on
its queues as usual).

How much a take asks for (``TakeSizer``): a free lane's worth, plus what the lanes are expected to
start within ``prefetch_ms`` going by the recent handling times, up to ``batch_size``. Short jobs
are taken in whole batches (one round trip for many); long ones a lane's worth at a time, so a job
never waits in one worker's hands while another worker, or another lane, is free. Before anything
was handled the estimate is unknown and a take asks for the free lanes only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

Refill = Callable[[int], Awaitable[list[Any]]]

POLL_MIN_S = 0.02  # a refill that found nothing while lanes run: tried again after this, doubling
POLL_MAX_S = 0.25  # up to this (the longest a free lane waits for a job that just arrived)
EWMA_WEIGHT = 0.3  # the weight of the latest handling time in the estimate


class TakeSizer:
    """How many items a take asks for: ``free`` lanes plus the expected starts within the prefetch."""

    def __init__(self, batch_size: int, concurrency: int, prefetch_ms: int) -> None:
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.prefetch_s = prefetch_ms / 1000
        self.average_s: float | None = None  # handling time per item (EWMA); None: nothing seen yet

    def observe(self, seconds: float) -> None:
        if self.average_s is None:
            self.average_s = seconds
        else:
            self.average_s += EWMA_WEIGHT * (seconds - self.average_s)

    def size(self, free: int) -> int:
        extra = 0
        if self.average_s is not None and self.prefetch_s > 0:
            starts_per_s = self.concurrency / max(self.average_s, 1e-6)
            extra = int(self.prefetch_s * starts_per_s)
        return max(1, min(self.batch_size, free + extra))


async def run_all(
    items: list[Any],
    handle: Callable[..., Awaitable[None]],
    concurrency: int,
    refill: Refill | None = None,
) -> None:
    """``await handle(*item)`` for every item (and, with ``refill``, for what it brings while lanes
    free): one after another (in order) when ``concurrency`` is 1, else in ``concurrency`` lanes
    that each take the next item when free. The first exception (the consumer's Redis going away)
    stops the lanes from taking more, lets the items in hand finish (a sync handler's thread cannot
    be cancelled: its job must not be put back while it runs), and propagates as itself; a
    cancellation (a fast stop) cancels every lane."""
    if concurrency <= 1:
        queue = deque(items)
        while queue:
            await handle(*queue.popleft())
            if not queue and refill is not None:
                queue.extend(await refill(1))
        return
    await Lanes(items, handle, concurrency, refill).run()


class Lanes:
    """``concurrency`` lanes over one round's items (see ``run_all``)."""

    def __init__(
        self,
        items: list[Any],
        handle: Callable[..., Awaitable[None]],
        concurrency: int,
        refill: Refill | None,
    ) -> None:
        self.pending = deque(items)
        self.handle = handle
        self.concurrency = concurrency
        self.refill = refill
        self.busy = 0  # lanes handling an item now
        self.looking = False  # a lane is asking for more
        self.over = False  # nothing more to take, nobody busy: the round is over
        self.failed: list[BaseException] = []
        self.changed = asyncio.Event()  # something to look at: items came, a lane freed, it is over

    async def run(self) -> None:
        count = self.concurrency if self.refill is not None else min(self.concurrency, len(self.pending))
        lanes = [asyncio.ensure_future(self._lane()) for _ in range(count)]
        try:
            await asyncio.gather(*lanes)
        except BaseException:
            for task in lanes:
                task.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
            raise
        if self.failed:
            raise self.failed[0]

    async def _lane(self) -> None:
        while (item := await self._next()) is not None:
            self.busy += 1
            try:
                await self.handle(*item)
            except Exception as exc:
                self.failed.append(exc)
                return
            finally:
                self.busy -= 1
                self._notify()

    async def _next(self) -> Any:
        delay_s = POLL_MIN_S
        while not (self.failed or self.over):
            if self.pending:
                return self.pending.popleft()
            if self.refill is None:
                return None
            if self.looking:  # another lane asks: wait for what it finds
                await self.changed.wait()
                continue
            self.looking = True
            try:
                more = await self.refill(self.concurrency - self.busy)
            except Exception as exc:  # Redis went away: the lanes in hand finish, nothing more
                self.failed.append(exc)
                return None
            finally:
                self.looking = False
                self._notify()
            self.pending.extend(more)
            self.over = not more and not self.busy
            if not more and not self.over:  # lanes still run: look again soon, or when one frees
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), delay_s)
                delay_s = min(delay_s * 2, POLL_MAX_S)
        return None

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()
