"""What the queue and stream consumers share: the handler (loaded once, called with or without a
``ctx``), running a batch's handlers in lanes, the error summary kept with a failure, and the one
shape of a dead letter.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import functools
import inspect
import json
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from corral.contract import LoadError, RedisSpec, load_object
from corral.workers import tracing
from corral.workers.consumers.batches import Collector, run_batched
from corral.workers.consumers.lanes import Refill, TakeSizer, run_all
from corral.workers.durability import Durability
from corral.workers.jobs.keys import Keys
from corral.workers.messages import HandlerContext

Handler = Callable[..., Any]


def load_handler(path: str) -> tuple[Handler, bool]:
    """A handler and whether it takes a second ``ctx`` argument; one that can be called neither as
    ``(job)`` nor as ``(job, ctx)`` is a ``LoadError`` (found by the import check, before any child)."""
    handler = load_object(path)
    if not callable(handler):
        raise LoadError(f"handler {path!r} is not callable")
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return handler, False
    params = [
        p for p in signature.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    takes_ctx = len(params) >= 2
    try:
        signature.bind(*(None,) * (2 if takes_ctx else 1))
    except TypeError:
        raise LoadError(f"handler {path!r} must take (job) or (job, ctx), not {signature}") from None
    return handler, takes_ctx


def error_summary(exc: BaseException, limit_chars: int = 2000) -> str:
    """The last frames of a failure's traceback, kept with its retry or dead letter."""
    text = "".join(traceback.format_exception(exc, limit=-3))
    return text[-limit_chars:]


@dataclass(frozen=True)
class DeadLetter:
    """Why a job or an entry was given up on; written as JSON beside the job (queues) or as extra
    ``_``-prefixed fields beside the entry's own (streams)."""

    source: str  # the queue, or the stream (shard) the entry was read from
    id: str | None  # the job's or entry's id (None: a job too broken to have one)
    attempts: int | None
    error: str
    worker: str  # the worker id that gave up on it
    failed_at: float = field(default_factory=time.time)

    def queue_record(self, raw: bytes) -> bytes:
        record: dict[str, Any] = {
            "queue": self.source,
            "id": self.id,
            "attempt": self.attempts,
            "error": self.error,
            "failed_at": self.failed_at,
            "worker": self.worker,
            "job": raw.decode("utf-8", "replace"),
        }
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:  # "job" above is lossy: keep the exact bytes too
            record["job_base64"] = base64.b64encode(raw).decode()
        return json.dumps(record).encode()

    def stream_record(self, raw_fields: dict[bytes, bytes], group: str) -> dict[bytes, bytes]:
        return {
            **raw_fields,
            b"_id": (self.id or "").encode(),
            b"_stream": self.source.encode(),
            b"_deliveries": str(self.attempts).encode(),
            b"_error": self.error.encode(),
            b"_group": group.encode(),
            b"_worker": self.worker.encode(),
            b"_failed_at": repr(self.failed_at).encode(),
        }


def is_coroutine_function(handler: Handler) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one."""
    call = type(handler).__call__ if not inspect.isroutine(handler) else None
    return inspect.iscoroutinefunction(handler) or (call is not None and inspect.iscoroutinefunction(call))


class HandlerTimeout(Exception):
    """A handler ran past its spec's ``timeout_s``: a failed attempt (retried, then dead-lettered)."""


class HandlerRunner:
    """Where a child's handlers run. A coroutine runs on the child's event loop and is cancelled at
    ``timeout_s``. A plain function runs in the child's thread pool, never on the loop (so heartbeats,
    leases and other units keep going); one that overruns ``timeout_s`` cannot be stopped: its attempt
    fails at once, and ``on_stuck`` is told, so that the child is recycled (replacement first)."""

    def __init__(self, threads: int = 8, on_stuck: Callable[[str], None] | None = None) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="handler")
        self.on_stuck = on_stuck or (lambda _reason: None)
        self.stuck = 0  # sync handlers still running past their timeout
        self.threads_busy = 0  # sync handlers running in the pool now

    async def run(
        self, handler: Handler, args: tuple[Any, ...], is_async: bool, timeout_s: float | None
    ) -> Any:
        if is_async:
            if timeout_s is None:
                return await handler(*args)
            deadline = asyncio.timeout(timeout_s)
            try:
                async with deadline:
                    return await handler(*args)
            except TimeoutError:
                if deadline.expired():
                    raise HandlerTimeout(f"timed out after {timeout_s:g}s") from None
                raise
        call = functools.partial(contextvars.copy_context().run, handler, *args)  # the span goes along
        future = asyncio.get_running_loop().run_in_executor(self.executor, call)
        self.threads_busy += 1
        future.add_done_callback(self._thread_done)
        try:
            result = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            if future.done():
                raise  # the handler's own TimeoutError
            self.stuck += 1
            self.on_stuck(f"a sync handler ran past its timeout_s ({timeout_s:g}s)")
            raise HandlerTimeout(
                f"timed out after {timeout_s:g}s (a sync handler: its thread runs on)"
            ) from None
        if inspect.isawaitable(result):  # a plain function that returned a coroutine
            awaited: Awaitable[Any] = result
            return await awaited
        return result

    def _thread_done(self, _future: asyncio.Future[Any]) -> None:
        self.threads_busy -= 1

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class HandlerUnit:
    """What every consumer has: its spec, client, keys and logger, and its handler (loaded once,
    with the ``HandlerContext`` it is called with), run by the child's ``HandlerRunner``."""

    def __init__(self, spec: Any, *, redis: Any, keys: Keys, worker_id: str, log: Any) -> None:
        self.spec = spec
        self.redis: Any = redis  # redis-py's annotations do not match its RESP2 replies
        self.keys = keys
        self.worker_id = worker_id
        self.log = log
        self.handler, self.takes_ctx = load_handler(spec.handler)
        self.is_async = is_coroutine_function(self.handler)
        self.ctx = HandlerContext(redis=redis, worker_id=worker_id, log=log)
        self.runner = HandlerRunner(threads=1)  # replaced by the child's shared one (Consumers)
        self.durable = Durability(redis, RedisSpec())  # off; Consumers sets the [redis] one
        self.collector: Collector | None = None  # a batch handler's round in progress
        self.batch_fallbacks = 0  # batches that failed and were retried one item at a time
        self.sizer = TakeSizer(spec.batch_size, spec.concurrency, spec.prefetch_ms)
        self.may_take: Callable[[], bool] = lambda: True  # Consumers: a valid lease, not stopping

    async def call(self, item: Any) -> Any:
        """Run the handler on one job or message (sync or async, with or without ``ctx``); a batch
        handler's call is collected with the round's others (``batches.py``)."""
        if self.collector is not None:
            return await self.collector.call(item)
        if self.spec.batch:  # a batch handler outside a collected round: a list of one
            return await self.invoke([item])
        args = (item, self.ctx) if self.takes_ctx else (item,)
        started_s = time.monotonic()
        try:
            if not tracing.enabled():  # the common case: no span, no context manager per job
                return await self.runner.run(self.handler, args, self.is_async, self.spec.timeout_s)
            with tracing.handling(item, self.worker_id):
                return await self.runner.run(self.handler, args, self.is_async, self.spec.timeout_s)
        finally:
            self.sizer.observe(time.monotonic() - started_s)

    async def invoke(self, items: list[Any]) -> Any:
        """A batch handler on ``items``."""
        args = (items, self.ctx) if self.takes_ctx else (items,)
        return await self.runner.run(self.handler, args, self.is_async, self.spec.timeout_s)

    async def run_round(
        self,
        items: list[Any],
        handle: Callable[..., Awaitable[None]],
        concurrency: int,
        *,
        collect: bool = True,
        refill: Refill | None = None,
    ) -> None:
        """``handle(*item)`` for each item of a round: in ``concurrency`` lanes (refilled as they
        free, with ``refill``: see ``lanes.py``), or (a batch handler, unless ``collect`` is off) with
        the handler called once for the whole round."""
        if not (self.spec.batch and collect):
            await run_all(items, handle, concurrency, refill)
            return
        self.collector = Collector(len(items), self.invoke, self.log)
        try:
            await run_batched(items, handle, self.collector)
        finally:
            self.batch_fallbacks += self.collector.fallbacks
            self.collector = None
