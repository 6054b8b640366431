"""``enqueue`` and ``publish``: produce work straight to Redis (no running supervisor needed), and
``shards`` (the lists of a sharded queue)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from datetime import datetime
from typing import Any

import redis as redis_py

from corral.entrypoints.cli.call import Call
from corral.entrypoints.cli.say import fail, unreachable
from corral.supervisor.actions import SupervisorExit
from corral.supervisor.config import Config
from corral.workers.jobs.keys import queue_shards
from corral.workers.producer import DuplicateJob, enqueue, publish
from corral.workers.topology import connect_sync


def produce(config: Config, args: argparse.Namespace) -> int:
    try:
        data = json.loads(args.data)
    except ValueError as exc:
        return fail(f"{args.command}: DATA is not valid JSON: {exc}", SupervisorExit.CONFIG)
    try:
        delay_s, at_s = when_of(args) if args.command == "enqueue" else (None, None)
        unique_for_s = duration_s("--unique-for", args.unique_for) if args.command == "enqueue" else 0.0
        if args.command == "enqueue" and args.queue in {s.stream for s in config.work.streams}:
            raise ValueError(f"{args.queue!r} is a stream of this pool, not a queue (corral publish)")
    except ValueError as exc:
        return fail(f"enqueue: {exc}", SupervisorExit.CONFIG)
    try:
        client = redis_client(config)
    except redis_py.RedisError as exc:
        return fail(unreachable(config, exc), SupervisorExit.NOT_RUNNING)
    try:
        if args.command == "enqueue":
            shards = declared_shards(config, args.queue)
            options = {"shards": shards, "key": args.key, "key_prefix": config.work.redis.key_prefix}
            unique = {"unique_key": args.unique, "unique_for_s": unique_for_s}
            print(
                enqueue(
                    client,
                    args.queue,
                    data,
                    front=args.front,
                    delay_s=delay_s,
                    at_s=at_s,
                    **options,
                    **unique,
                )
            )
        else:
            declared = {s.stream: s.partitions for s in config.work.streams}
            print(publish(client, args.stream, data, key=args.key, partitions=declared.get(args.stream, 0)))
    except DuplicateJob as exc:
        return fail(f"enqueue: not enqueued: {exc}", SupervisorExit.FAILED)
    except ValueError as exc:
        return fail(f"{args.command}: {exc}", SupervisorExit.CONFIG)
    except redis_py.RedisError as exc:
        return fail(unreachable(config, exc), SupervisorExit.NOT_RUNNING)
    finally:
        client.close()
    return 0


DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration_s(option: str, text: str) -> float:
    """``30s``, ``250ms``, ``5m``, ``2h``, ``1d`` in seconds; ValueError names the option."""
    match = DURATION.match(text)
    if not match:
        raise ValueError(f"{option}: {text!r} is not a duration like 30s, 250ms, 5m, 2h or 1d")
    return float(match.group(1)) * UNIT_S[match.group(2)]


def when_of(args: argparse.Namespace) -> tuple[float | None, float | None]:
    """``--delay`` or ``--at`` as ``enqueue``'s ``delay_s`` / ``at_s``; ValueError names the problem."""
    if args.delay is not None:
        return duration_s("--delay", args.delay), None
    if args.at is not None:
        at_s = iso_time_s(args.at, "--at")
        if at_s is None:
            raise ValueError(f"--at: {args.at!r} is not an ISO 8601 time like 2026-12-01T10:00:00Z")
        if at_s <= time.time():
            raise ValueError(f"--at: {args.at} is in the past")
        return None, at_s
    return None, None


def iso_time_s(text: str, what: str) -> float | None:
    """An ISO 8601 time with a time zone, as unix seconds; None when ``text`` is no ISO time;
    ValueError (naming ``what``) when it has no zone."""
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if at.tzinfo is None:
        raise ValueError(f"{what}: {text!r} has no time zone (add Z or an offset like +01:00)")
    return at.timestamp()


def declared_shards(config: Config, queue: str) -> int:
    """How many lists ``queue`` is spread over (1 unless a [[queues]] table says so)."""
    return next((spec.shards for spec in config.work.queues if queue in spec.names), 1)


def show_shards(config: Config, queue: str) -> int:
    shards = declared_shards(config, queue)
    if shards <= 1:
        return fail(f"shards: {queue!r} is not a queue declared with shards > 1", SupervisorExit.CONFIG)
    print("\n".join(queue_shards(queue, shards)))
    return 0


def redis_client(config: Config) -> Any:
    """A blocking client for the CLI's own reads and writes, whatever the deployment."""
    spec = dataclasses.replace(
        config.work.redis, url=config.redis_url, socket_timeout_s=5.0, connect_timeout_s=5.0
    )
    return connect_sync(spec)


def command(call: Call) -> int:
    """``enqueue`` and ``publish``."""
    return produce(call.valid_config, call.args)


def shards(call: Call) -> int:
    return show_shards(call.valid_config, call.args.queue)
