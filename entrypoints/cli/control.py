"""The commands that talk to a running supervisor over its control socket: ``status`` (and
``--watch``), ``reload``, ``scale``, ``recycle``, ``stop``, and ``request`` / ``send`` to one child."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
from typing import Any

import psutil
from rich.console import Console, RenderableType
from rich.live import Live

from corral.entrypoints.cli.call import Call
from corral.entrypoints.cli.fleet import fleet_of, fleet_parts
from corral.entrypoints.cli.say import fail
from corral.entrypoints.cli.view import render
from corral.ipc import RemoteError
from corral.supervisor.actions import SupervisorExit
from corral.supervisor.config import Config, Where
from corral.supervisor.control import call

RELOAD_TIMEOUT_S = 600.0  # every slot's replacement ready (a slot's import check and start)


async def control(where: Where, args: argparse.Namespace, config: Config | None) -> int:
    """``config``: the config on disk, when it validates (None: it does not)."""
    path = where.control_socket
    command = args.command
    if command == "status":
        return await status(where, args, config)
    if command in ("request", "send"):
        return await to_child(where, args)
    if command == "reload":  # waits for the outcome: every slot's replacement ready, or why not
        try:
            print(await call(path, "reload", timeout_s=RELOAD_TIMEOUT_S))
        except RemoteError as exc:
            return fail(f"reload refused: {exc.remote_message}", SupervisorExit.FAILED)
    elif command == "scale":
        if args.workers < 0:
            return fail(f"scale needs a number of slots >= 0, got {args.workers}", SupervisorExit.CONFIG)
        print(await call(path, "scale", args.workers))
    elif command == "recycle":
        try:
            print(await call(path, "recycle", args.slot))
        except RemoteError as exc:
            return fail(f"recycle: {exc.remote_message}", SupervisorExit.CONFIG)
    elif command == "stop":
        pid = (
            int(where.pid_file.read_text())
            if where.pid_file.exists()
            else (await call(path, "status"))["pid"]
        )
        await call(path, "stop")
        if not args.no_wait and not await _wait_gone(pid, args.timeout):
            return fail(f"supervisor pid {pid} still running after {args.timeout:g}s", SupervisorExit.FAILED)
        print("stopped")
    return SupervisorExit.OK


def config_note(status: dict[str, Any], digest: str | None) -> str:
    if digest is None:
        return "note: the config file on disk does not validate; the pool runs the one it loaded"
    if status.get("config_digest") and status["config_digest"] != digest:
        return f"note: {status['config']} changed since the pool loaded it (corral reload applies it)"
    return ""


async def status(where: Where, args: argparse.Namespace, config: Config | None) -> int:
    digest = config.digest if config is not None else None
    if args.json:
        current = await call(where.control_socket, "status")
        fleet = await fleet_of(config)
        print(as_json({**current, "fleet": fleet} if fleet is not None else current, indent=2))
        return SupervisorExit.OK
    console = Console()
    if not console.is_terminal:  # piped or captured: one line per row, never wrapped at 80 columns
        console = Console(width=200)

    async def view() -> RenderableType:
        current = await call(where.control_socket, "status")
        return render(current, config_note(current, digest), fleet_parts(await fleet_of(config)))

    if not args.watch:
        console.print(await view())
        return SupervisorExit.OK
    with Live(await view(), console=console, auto_refresh=False) as live:
        while True:
            await asyncio.sleep(args.interval)
            live.update(await view(), refresh=True)


async def to_child(where: Where, args: argparse.Namespace) -> int:
    try:
        data = json.loads(args.data)
    except ValueError as exc:
        return fail(f"{args.command}: DATA is not valid JSON: {exc}", SupervisorExit.CONFIG)
    message = {"slot": args.slot, "event": args.event, "data": data}
    try:
        if args.command == "send":
            print(await call(where.control_socket, "send", message))
            return SupervisorExit.OK
        timeout_s = args.timeout
        reply = await call(
            where.control_socket, "request", {**message, "timeout_s": timeout_s}, timeout_s + 5
        )
    except RemoteError as exc:
        return fail(f"{args.command}: {exc.remote_message}", SupervisorExit.FAILED)
    print(as_json(reply))
    return SupervisorExit.OK


def as_json(value: Any, indent: int | None = None) -> str:
    """JSON of what came over IPC (msgpack: bytes stay bytes; shown as text, or base64 if not UTF-8)."""

    def text(obj: Any) -> Any:
        if isinstance(obj, bytes):
            try:
                return obj.decode("utf-8")
            except UnicodeDecodeError:
                return {"base64": base64.b64encode(obj).decode()}
        raise TypeError(f"{type(obj).__name__} is not JSON")

    return json.dumps(value, indent=indent, default=text)


async def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        await asyncio.sleep(0.1)
    return False


def command(call: Call) -> int:
    """``status``, ``reload``, ``scale``, ``recycle``, ``stop``, ``request``, ``send``."""
    return asyncio.run(control(call.where, call.args, call.config))


def health(invocation: Call) -> int:
    """``corral health [--ready]``, for exec probes: exit 0 while the supervisor answers (with
    ``--ready``: while every slot is ready and Redis answers, else 1 with the reasons); no supervisor
    running is exit 5 (``main``)."""
    args = invocation.args
    found = asyncio.run(call(invocation.where.control_socket, "health", timeout_s=args.timeout))
    if args.json:
        print(as_json(found, indent=2))
    elif not args.ready or found["ready"]:
        print("ready" if found["ready"] else "live")
    if args.ready and not found["ready"]:
        return fail("not ready: " + "; ".join(found["reasons"]), SupervisorExit.FAILED)
    return SupervisorExit.OK
