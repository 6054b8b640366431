"""What ``corral status`` adds from Redis: the live workers of every host, and where each declared
queue and stream lives (a cluster's primary for its slot). Redis being away is a note, not a failure:
the supervisor's own view is still worth showing."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from redis.exceptions import RedisError
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from corral.entrypoints.cli.say import unreachable
from corral.entrypoints.cli.view import table_of
from corral.supervisor.config import Config, redacted
from corral.workers.jobs.keys import Keys, queue_shards
from corral.workers.ops.fleet import snapshot
from corral.workers.producer import shard_name
from corral.workers.topology import connect

TIMEOUT_S = 3.0


def declared_keys(config: Config) -> list[str]:
    """Every list and stream the config consumes by name (a sharded queue's shards, a partitioned
    stream's shards)."""
    names = [
        shard
        for spec in config.work.queues
        for name in spec.names
        for shard in queue_shards(name, spec.shards)
    ]
    for stream in config.work.streams:
        if stream.partitions:
            names.extend(shard_name(stream.stream, shard) for shard in range(stream.partitions))
        else:
            names.append(stream.stream)
    return names


async def fleet_of(config: Config | None) -> dict[str, Any] | None:
    if config is None or not config.uses_redis:
        return None
    spec = dataclasses.replace(
        config.work.redis, url=config.redis_url, socket_timeout_s=TIMEOUT_S, connect_timeout_s=TIMEOUT_S
    )
    try:
        client = await connect(spec)
    except (RedisError, OSError, ValueError) as exc:
        return {"error": unreachable(config, exc)}
    try:
        keys = Keys(config.work.redis.key_prefix)
        fleet = await asyncio.wait_for(
            snapshot(client, keys, config.pool_name, declared_keys(config)), TIMEOUT_S * 2
        )
        return fleet.to_json()
    except (RedisError, OSError, TimeoutError) as exc:
        return {"error": f"cannot read the pool's members from Redis at {redacted(config.redis_url)}: {exc}"}
    finally:
        await client.aclose()


def fleet_parts(fleet: dict[str, Any] | None) -> list[RenderableType]:
    if not fleet:
        return []
    if "error" in fleet:
        return [Text(f"note: {fleet['error']}")]
    hosts: Table = table_of("HOST", "LIVE WORKERS", "WORKER IDS", title=f"hosts (Redis {fleet['topology']})")
    for host, workers in sorted(fleet["hosts"].items()):
        hosts.add_row(host, str(len(workers)), " ".join(w.split(":", 1)[1] for w in workers))
    parts: list[RenderableType] = [hosts]
    if fleet["placement"]:
        where: Table = table_of("KEY", "SERVER", title="where the work lives")
        for key, server in fleet["placement"].items():
            where.add_row(key, server)
        parts.append(where)
    return parts
