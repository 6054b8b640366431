"""The timeouts of a channel's pending requests: a heap of deadlines served by one loop timer.

A ``call_later`` plus a ``cancel`` per request is a good part of a round trip's own cost, so one
timer, due at or before the earliest deadline, serves every pending request. An answered request
leaves its entry behind: dropped when it comes due, or in bulk once stale entries outnumber the
pending ones. An expired request's future fails with ``RequestTimeout``.
"""

from __future__ import annotations

import asyncio
import heapq
from typing import Any

from corral.ipc.errors import RequestTimeout


class Deadlines:
    """Fails the futures of ``pending`` (request id -> future, shared with the channel) when due."""

    __slots__ = ("_heap", "_loop", "_pending", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, pending: dict[int, asyncio.Future[Any]]) -> None:
        self._loop = loop
        self._pending = pending
        self._heap: list[tuple[float, int, str, float]] = []  # (when, id, what, timeout_s)
        self._timer: asyncio.TimerHandle | None = None  # due at or before the earliest deadline

    def add(self, rid: int, what: str, timeout_s: float) -> None:
        """Fail request ``rid`` (described as ``what`` in the error) unless answered in time."""
        heap = self._heap
        if len(heap) > 2 * len(self._pending) + 64:
            heap[:] = [entry for entry in heap if entry[1] in self._pending]
            heapq.heapify(heap)
        when = self._loop.time() + timeout_s
        heapq.heappush(heap, (when, rid, what, timeout_s))
        if self._timer is None or when < self._timer.when():
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(when, self._expire_due, when)

    def clear(self) -> None:
        """Forget every deadline and stop the timer (the channel closed)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()

    def _expire_due(self, due: float) -> None:
        self._timer = None
        heap, pending = self._heap, self._pending
        due = max(due, self._loop.time())
        while heap and (heap[0][0] <= due or heap[0][1] not in pending):
            _, rid, what, timeout_s = heapq.heappop(heap)
            self._expire(rid, what, timeout_s)  # does nothing for an answered request
        if heap:
            when = heap[0][0]
            self._timer = self._loop.call_at(when, self._expire_due, when)

    def _expire(self, rid: int, what: str, timeout_s: float) -> None:
        future = self._pending.pop(rid, None)
        if future is not None and not future.done():
            future.set_exception(RequestTimeout(f"{what}: no answer within {timeout_s}s"))
