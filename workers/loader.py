"""Resolve ``package.module:attr`` import paths (workers, handlers) with clear errors."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from workers.keys import Keys
from workers.messages import HandlerContext


class LoadError(Exception):
    """An import path that does not resolve to what it should."""


def load_object(path: str) -> Any:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise LoadError(f"{path!r} is not of the form 'package.module:attr'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:
        raise LoadError(f"cannot import {path!r}: {exc!r}") from exc
    return obj


Handler = Callable[..., Any]


def load_handler(path: str) -> tuple[Handler, bool]:
    """A handler and whether it takes a second ``ctx`` argument."""
    handler = load_object(path)
    if not callable(handler):
        raise LoadError(f"handler {path!r} is not callable")
    try:
        params = [
            p
            for p in inspect.signature(handler).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return handler, False
    return handler, len(params) >= 2


async def call_handler(handler: Handler, takes_ctx: bool, item: Any, ctx: Any) -> Any:
    result = handler(item, ctx) if takes_ctx else handler(item)
    if inspect.isawaitable(result):
        awaited: Awaitable[Any] = result
        return await awaited
    return result


async def run_all(items: list[Any], handle: Callable[..., Awaitable[None]], concurrency: int) -> None:
    """``await handle(*item)`` for every item: one after another (in order) when ``concurrency`` is 1,
    else in ``concurrency`` lanes that each take the next item when free. The first exception (a
    Redis outage, a cancellation) cancels the other lanes and propagates as itself."""
    if concurrency <= 1 or len(items) <= 1:
        for item in items:
            await handle(*item)
        return
    pending = iter(items)

    async def lane() -> None:
        for item in pending:
            await handle(*item)

    lanes = [asyncio.ensure_future(lane()) for _ in range(min(concurrency, len(items)))]
    try:
        await asyncio.gather(*lanes)
    except BaseException:
        for task in lanes:
            task.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
        raise


class HandlerUnit:
    """What every consumer has: its spec, client, keys and logger, and its handler (loaded once,
    with the ``HandlerContext`` it is called with)."""

    def __init__(self, spec: Any, *, redis: Any, keys: Keys, worker_id: str, log: Any) -> None:
        self.spec = spec
        self.redis: Any = redis  # redis-py's annotations do not match its RESP2 replies
        self.keys = keys
        self.worker_id = worker_id
        self.log = log
        self.handler, self.takes_ctx = load_handler(spec.handler)
        self.ctx = HandlerContext(redis=redis, worker_id=worker_id, log=log)
