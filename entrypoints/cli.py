"""The ``corral`` command line: run a pool in the foreground, and control a running one.

Every command takes ``-c CONFIG`` (default ``./corral.toml``). User mistakes (bad config, no
supervisor running, bad arguments) print one clear line on stderr and a named exit code, never a
traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from loguru import logger

from corral.ipc import IPCError
from corral.supervisor import config as config_module
from corral.supervisor.actions import SupervisorExit
from corral.supervisor.config import Config, ConfigError
from corral.supervisor.control import NotRunning, call
from corral.supervisor.main import Supervisor
from corral.supervisor.status import render


def _version() -> str:
    try:
        return version("corral")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corral", description="A supervised worker pool for Redis work.")
    parser.add_argument("--version", action="version", version=f"corral {_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default="corral.toml", help="config file (default: ./corral.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="run the supervisor in the foreground")
    status = sub.add_parser("status", parents=[common], help="show every slot of the running pool")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    sub.add_parser("reload", parents=[common], help="rolling reload with new code and re-read config")
    scale = sub.add_parser("scale", parents=[common], help="change the number of slots")
    scale.add_argument("workers", type=int, help="the new number of slots")
    stop = sub.add_parser("stop", parents=[common], help="graceful stop of the running pool")
    stop.add_argument("--no-wait", action="store_true", help="return without waiting for it to exit")
    stop.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the exit")
    enqueue = sub.add_parser("enqueue", parents=[common], help="push a job (JSON) onto a queue")
    enqueue.add_argument("queue", help="the queue (list key)")
    enqueue.add_argument("data", help="the job's data, as JSON")
    enqueue.add_argument("--front", action="store_true", help="next to be taken (priority)")
    publish = sub.add_parser("publish", parents=[common], help="add an entry (a JSON object) to a stream")
    publish.add_argument("stream", help="the stream (its shard is chosen by --key when partitioned)")
    publish.add_argument("data", help='the entry\'s fields, as a JSON object: {"type": "x", "id": "1"}')
    publish.add_argument("--key", help="partition key (e.g. a game id): one key, one shard, in order")
    logs = sub.add_parser("logs", parents=[common], help="print (or follow) a slot's log file")
    logs.add_argument("slot", help="a slot number, or 'supervisor'")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("-n", "--lines", type=int, default=50, help="how many last lines to print first")
    return parser


def fail(message: str, code: int) -> int:
    print(f"corral: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logger.remove()  # `run` sets up its own logging; the control commands only print results
    if args.command != "run":
        logger.add(sys.stderr, level="WARNING", format="corral: {message}")
    try:
        config = config_module.load(args.config)
    except ConfigError as exc:
        return fail(str(exc), SupervisorExit.CONFIG)
    try:
        if args.command == "run":
            return asyncio.run(Supervisor(config).run())
        if args.command == "logs":
            return show_logs(config, args.slot, args.lines, args.follow)
        if args.command in ("enqueue", "publish"):
            return produce(config, args)
        return asyncio.run(control(config, args))
    except NotRunning as exc:
        return fail(str(exc), SupervisorExit.NOT_RUNNING)
    except IPCError as exc:
        return fail(f"the supervisor did not answer properly: {exc}", SupervisorExit.NOT_RUNNING)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `corral status | head`: the reader went away, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


async def control(config: Config, args: argparse.Namespace) -> int:
    path = config.control_socket
    if args.command == "status":
        status = await call(path, "status")
        print(json.dumps(status, indent=2) if args.json else render(status))
    elif args.command == "reload":
        print(await call(path, "reload"))
    elif args.command == "scale":
        if args.workers < 0:
            return fail(f"scale needs a number of slots >= 0, got {args.workers}", SupervisorExit.CONFIG)
        print(await call(path, "scale", args.workers))
    elif args.command == "stop":
        pid: int = (await call(path, "status"))["pid"]
        await call(path, "stop")
        if not args.no_wait and not await _wait_gone(pid, args.timeout):
            return fail(f"supervisor pid {pid} still running after {args.timeout:g}s", 1)
        print("stopped")
    return 0


async def _wait_gone(pid: int, timeout_s: float) -> bool:
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        await asyncio.sleep(0.1)
    return False


def produce(config: Config, args: argparse.Namespace) -> int:
    import redis as redis_py

    from corral.workers.producer import enqueue, publish

    try:
        data = json.loads(args.data)
    except ValueError as exc:
        return fail(f"{args.command}: DATA is not valid JSON: {exc}", SupervisorExit.CONFIG)
    client = redis_py.Redis.from_url(config.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        if args.command == "enqueue":
            print(enqueue(client, args.queue, data, front=args.front))
        else:
            declared = {s.stream: s.partitions for s in config.work.streams}
            print(publish(client, args.stream, data, key=args.key, partitions=declared.get(args.stream, 0)))
    except ValueError as exc:
        return fail(f"{args.command}: {exc}", SupervisorExit.CONFIG)
    except redis_py.RedisError as exc:
        return fail(f"cannot reach Redis at {config.redis_url}: {exc}", SupervisorExit.NOT_RUNNING)
    finally:
        client.close()
    return 0


def show_logs(config: Config, slot: str, lines: int, follow: bool) -> int:
    name = "supervisor.log" if slot == "supervisor" else f"worker-{slot}.log"
    if slot != "supervisor" and not slot.isdigit():
        return fail(f"logs takes a slot number or 'supervisor', got {slot!r}", SupervisorExit.CONFIG)
    path = config.log_dir / name
    if not path.exists():
        return fail(f"no log file {path}", 1)
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


if __name__ == "__main__":
    sys.exit(main())
