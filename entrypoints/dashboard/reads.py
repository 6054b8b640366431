"""The dashboard's read side: the page and its assets, the live snapshot (server-sent events), the
graphs' history, dead letters by search, and a slot's log tail (followed live)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from corral.entrypoints.dashboard.board import Board
from corral.workers.ops.catalog import UnknownName

STATIC = Path(__file__).parent / "static"
EVENT_EVERY_S = 1.0
LOG_LINES = 200
LETTER_FIELDS = ("id", "source", "failed_at", "attempts", "error", "worker", "payload")


def add_routes(app: web.Application, board: Board) -> None:
    async def page(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def snapshot(_request: web.Request) -> web.Response:
        return web.json_response(await board.snapshot())

    async def events(request: web.Request) -> web.StreamResponse:
        response = await sse(request)
        while request.transport is not None and not request.transport.is_closing():
            data = json.dumps(await board.snapshot(), default=str)
            await response.write(f"data: {data}\n\n".encode())
            await asyncio.sleep(EVENT_EVERY_S)
        return response

    async def history(_request: web.Request) -> web.Response:
        return web.json_response(await board.history.read() if board.history else [])

    async def dead(request: web.Request) -> web.Response:
        if board.ops is None:
            raise web.HTTPNotFound(text="this pool has no Redis")
        try:
            target = board.ops.resolve(request.query.get("name", ""))
        except UnknownName as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        grep = request.query.get("grep") or None
        limit = int(request.query.get("limit") or 100)
        letters = await board.ops.dead.list(target, grep=grep, limit=limit)
        total = await board.ops.dead.count(target)
        rows = [{name: getattr(letter, name) for name in LETTER_FIELDS} for letter in letters]
        return web.json_response({"name": target.name, "total": total, "letters": rows}, dumps=_dumps)

    async def logs(request: web.Request) -> web.StreamResponse:
        path = log_path(board, request.query.get("slot", "supervisor"))
        response = await sse(request)
        with path.open("rb") as handle:
            for line in await asyncio.to_thread(tail_of, handle):  # off the supervisor's loop
                await response.write(event_of(line))
            while request.transport is not None and not request.transport.is_closing():
                chunk = await asyncio.to_thread(handle.readline)  # followed live, as `tail -f`
                if chunk:
                    await response.write(event_of(chunk))
                else:
                    await asyncio.sleep(0.25)
        return response

    app.router.add_get("/", page)
    app.router.add_static("/static", STATIC)
    app.router.add_get("/api/snapshot", snapshot)
    app.router.add_get("/api/events", events)
    app.router.add_get("/api/history", history)
    app.router.add_get("/api/dead", dead)
    app.router.add_get("/api/logs", logs)


def log_path(board: Board, slot: str) -> Path:
    if slot != "supervisor" and not slot.isdigit():
        raise web.HTTPBadRequest(text=f"a slot number or 'supervisor', got {slot!r}")
    path = board.console.log_dir / ("supervisor.log" if slot == "supervisor" else f"worker-{slot}.log")
    if not path.exists():
        raise web.HTTPNotFound(text=f"no log file for {slot}")
    return path


def tail_of(handle: Any, max_bytes: int = 65536) -> list[bytes]:
    """The last ``LOG_LINES`` lines of an open log file, reading at most its last ``max_bytes``."""
    size = handle.seek(0, 2)
    handle.seek(max(0, size - max_bytes))
    lines = handle.read().splitlines(keepends=True)
    if size > max_bytes and lines:
        lines = lines[1:]  # the first one is cut
    return list(lines[-LOG_LINES:])


def event_of(line: bytes) -> bytes:
    return b"data: " + json.dumps(line.decode("utf-8", "replace").rstrip("\n")).encode() + b"\n\n"


async def sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    return response


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)
