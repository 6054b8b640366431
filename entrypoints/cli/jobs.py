"""``corral pause NAME``, ``corral resume NAME`` and ``corral schedules``: job control straight in
Redis (``corral.workers.ops.operations``), no running supervisor needed.

A name that is neither a queue nor a stream of the pool is one line and exit 2, nothing changed;
Redis out of reach is one line and exit 5.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rich import box
from rich.console import Console
from rich.table import Table

from corral.entrypoints.cli.call import Call
from corral.entrypoints.cli.say import fail, unreachable
from corral.supervisor.actions import SupervisorExit
from corral.supervisor.config import Config, redacted
from corral.workers.ops.catalog import UnknownName
from corral.workers.ops.operations import Operations, ScheduleRow
from corral.workers.topology import connect


def command(call: Call) -> int:
    """``pause``, ``resume``, ``schedules``: straight to Redis."""
    config, args = call.valid_config, call.args
    actions: dict[str, Callable[[Operations, argparse.Namespace], Awaitable[int]]] = {
        "pause": _pause,
        "resume": _resume,
        "schedules": _schedules,
    }
    return with_operations(config, lambda ops: actions[args.command](ops, args))


@contextlib.asynccontextmanager
async def operations(config: Config) -> AsyncIterator[Operations]:
    """``Operations`` on a client of the pool's Redis (any topology), closed on the way out."""
    spec = dataclasses.replace(
        config.work.redis, url=config.redis_url, socket_timeout_s=5.0, connect_timeout_s=5.0
    )
    client = await connect(spec)
    try:
        yield Operations(client, config.work)
    finally:
        await client.aclose()


def with_operations(config: Config, action: Callable[[Operations], Awaitable[int]]) -> int:
    """Run ``action`` on the pool's Redis; user mistakes and Redis away are one line each."""

    async def go() -> int:
        async with operations(config) as ops:
            return await action(ops)

    try:
        return asyncio.run(go())
    except UnknownName as exc:
        return fail(str(exc), SupervisorExit.CONFIG)
    except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
        return fail(unreachable(config, exc), SupervisorExit.NOT_RUNNING)
    except RedisError as exc:
        return fail(
            f"Redis at {redacted(config.redis_url)} answered with an error: {exc}", SupervisorExit.FAILED
        )


async def _pause(ops: Operations, args: argparse.Namespace) -> int:
    target = await ops.pause(args.name)
    parts = f" ({len(target.keys)} lists)" if len(target.keys) > 1 else ""
    print(f"paused {target.kind} {target.name}{parts}: no worker takes from it within a second")
    return SupervisorExit.OK


async def _resume(ops: Operations, args: argparse.Namespace) -> int:
    target = await ops.resume(args.name)
    print(f"resumed {target.kind} {target.name}")
    return SupervisorExit.OK


async def _schedules(ops: Operations, args: argparse.Namespace) -> int:
    rows = await ops.schedules()
    if args.json:
        print(json.dumps([row.to_json() for row in rows], indent=2))
        return SupervisorExit.OK
    if not rows:
        print("no [[schedules]] in this config")
        return SupervisorExit.OK
    console = Console() if Console().is_terminal else Console(width=200)
    console.print(schedule_table(rows))
    return SupervisorExit.OK


def schedule_table(rows: list[ScheduleRow]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("NAME", "WHEN", "DOES", "LAST TICK", "NEXT TICK", "FIRED", "MISSED", "OVERLAPPED"):
        table.add_column(name, justify="right" if name in ("FIRED", "MISSED", "OVERLAPPED") else "left")
    for row in rows:
        cells: list[Any] = [row.name, row.when, row.target, _at(row.last_tick_s), _at(row.next_tick_s)]
        table.add_row(*cells, str(row.fired), str(row.missed), str(row.overlapped))
    return table


def _at(when_s: float | None) -> str:
    if when_s is None:
        return "-"
    return datetime.fromtimestamp(when_s, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
