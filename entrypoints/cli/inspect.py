"""``corral inspect``: the work in Redis that no live member holds, and whether a sweep will pick it
up (``corral.workers.ops.audit``). Straight to the pool's Redis: no running supervisor needed.

Exit 0 when nothing is stranded, 1 when something is, 5 when Redis cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from corral.entrypoints.cli.call import Call
from corral.entrypoints.cli.say import fail, unreachable
from corral.supervisor.actions import SupervisorExit
from corral.supervisor.config import Config, redacted
from corral.workers.jobs.keys import Keys
from corral.workers.ops.audit import Report, audit
from corral.workers.producer import shard_name
from corral.workers.topology import connect


def audited_streams(config: Config) -> list[tuple[str, str]]:
    """``(stream key, group)`` of every declared stream; a partitioned one as its shards."""
    pairs: list[tuple[str, str]] = []
    for spec in config.work.streams:
        group = spec.group or config.pool_name
        if spec.partitions:
            pairs.extend((shard_name(spec.stream, shard), group) for shard in range(spec.partitions))
        else:
            pairs.append((spec.stream, group))
    return pairs


async def inspect(config: Config, args: argparse.Namespace) -> int:
    url = config.redis_url
    spec = dataclasses.replace(config.work.redis, url=url, socket_timeout_s=5.0, connect_timeout_s=5.0)
    client = await connect(spec)
    try:
        keys = Keys(config.work.redis.key_prefix)
        report = await audit(client, keys, config.pool_name, audited_streams(config))
    except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
        return fail(unreachable(config, exc), SupervisorExit.NOT_RUNNING)
    except RedisError as exc:
        return fail(f"inspect: Redis at {redacted(url)} answered with an error: {exc}", SupervisorExit.FAILED)
    finally:
        await client.aclose()
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        show(report)
    return SupervisorExit.OK if report.ok else SupervisorExit.FAILED


def show(report: Report) -> None:
    console = Console()
    if not console.is_terminal:  # piped or captured: one line per row, never wrapped at 80 columns
        console = Console(width=200)
    print(f"pool {report.pool}: {report.live_count} live members")
    if report.holdings:
        console.print(table(report))
    if report.ok:
        print("nothing stranded")
        return
    print(f"{len(report.stranded)} stranded:")
    for item in report.stranded:
        print(f"  {item.kind} {item.where}: {item.count} held by {item.holder}; {item.detail}")


def table(report: Report) -> Table:
    grid = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("KIND", "WHERE", "ITEMS", "HOLDER", "FATE"):
        grid.add_column(name, justify="right" if name == "ITEMS" else "left")
    for item in report.holdings:
        fate = f"{item.fate}: {item.detail}" if item.detail else item.fate
        cells = (item.kind, item.where, str(item.count), item.holder or "-", fate)
        grid.add_row(*(Text(cell) for cell in cells), style="bold red" if item.stranded else None)
    return grid


def command(call: Call) -> int:
    return asyncio.run(inspect(call.valid_config, call.args))
