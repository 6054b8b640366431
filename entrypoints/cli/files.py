"""The commands that do not need a running supervisor: ``logs`` (the log files) and ``enqueue`` /
``publish`` (straight to Redis)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import redis as redis_py

from corral.entrypoints.cli.say import fail
from corral.supervisor.actions import SupervisorExit
from corral.supervisor.config import Config, redacted
from corral.workers.keys import queue_shards
from corral.workers.producer import enqueue, publish
from corral.workers.topology import connect_sync


def produce(config: Config, args: argparse.Namespace) -> int:
    try:
        data = json.loads(args.data)
    except ValueError as exc:
        return fail(f"{args.command}: DATA is not valid JSON: {exc}", SupervisorExit.CONFIG)
    try:
        client = redis_client(config)
    except redis_py.RedisError as exc:
        return fail(f"cannot reach Redis at {redacted(config.redis_url)}: {exc}", SupervisorExit.NOT_RUNNING)
    try:
        if args.command == "enqueue":
            shards = declared_shards(config, args.queue)
            print(enqueue(client, args.queue, data, front=args.front, shards=shards, key=args.key))
        else:
            declared = {s.stream: s.partitions for s in config.work.streams}
            print(publish(client, args.stream, data, key=args.key, partitions=declared.get(args.stream, 0)))
    except ValueError as exc:
        return fail(f"{args.command}: {exc}", SupervisorExit.CONFIG)
    except redis_py.RedisError as exc:
        return fail(f"cannot reach Redis at {redacted(config.redis_url)}: {exc}", SupervisorExit.NOT_RUNNING)
    finally:
        client.close()
    return 0


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


def show_logs(log_dir: Path, slot: str, lines: int, follow: bool) -> int:
    name = "supervisor.log" if slot == "supervisor" else f"worker-{slot}.log"
    if slot != "supervisor" and not slot.isdigit():
        return fail(f"logs takes a slot number or 'supervisor', got {slot!r}", SupervisorExit.CONFIG)
    path = log_dir / name
    if not path.exists():
        return fail(f"no log file {path}", SupervisorExit.FAILED)
    with path.open("rb") as handle:
        tail = handle.readlines()[-lines:] if lines > 0 else []
        sys.stdout.buffer.write(b"".join(tail))
        sys.stdout.flush()
        if follow:
            _follow(path, handle)
    return 0


def _follow(path: Path, handle: Any) -> None:
    """Like ``tail -F``: keeps going across rotation (the file replaced by a new one)."""
    inode = path.stat().st_ino
    while True:
        chunk = handle.read()
        if chunk:
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            continue
        try:
            if path.stat().st_ino != inode:
                handle.close()
                handle = path.open("rb")
                inode = path.stat().st_ino
                continue
        except FileNotFoundError:
            pass
        time.sleep(0.2)
