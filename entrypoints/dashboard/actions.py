"""The dashboard's actions: pause and resume, retry and delete dead letters (one, a selection, or
all that match a search, with progress), scale, rolling reload, recycle a slot.

Every action is a POST with a JSON body and ``Authorization: Bearer <token>`` (``[dashboard] token``
or ``CORRAL_DASHBOARD_TOKEN``, compared in constant time). No cookie carries it, so another site
cannot make a browser send it (CSRF); an ``Origin`` that is not this page's is refused as well.
``read_only = true``, or no token configured, refuses every action.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from corral.entrypoints.dashboard.board import Board
from corral.supervisor.config import LOOPBACK
from corral.workers.ops.catalog import UnknownName
from corral.workers.ops.dead_letters import CannotRetry

PROGRESS_EVERY_S = 0.2
Action = Callable[[Board, dict[str, Any], web.Request], Awaitable[web.StreamResponse]]


def token_of(request: web.Request) -> str:
    """The token a request carries: its Authorization header, or (an EventSource cannot send
    headers) its ``token`` query parameter."""
    header = request.headers.get("Authorization", "")
    return header.removeprefix("Bearer ").strip() if header else request.query.get("token", "")


def has_token(board: Board, request: web.Request) -> bool:
    token = board.console.token
    return bool(token) and hmac.compare_digest(token_of(request).encode(), str(token).encode())


def guard(board: Board) -> Any:
    """Every request: on a loopback address, a ``Host`` that is not this server's is refused (a
    page of another site resolving its name to 127.0.0.1: DNS rebinding); on any other address,
    every ``/api`` read needs the token too (payloads, errors and logs are not for the network)."""
    listen = board.console.config.dashboard.listen or ""
    host, _, port = listen.rpartition(":")
    loopback = host in LOOPBACK
    allowed = {listen, *(f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]"))}

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        if loopback and request.host not in allowed:
            raise web.HTTPForbidden(text=f"this dashboard answers as {listen}, not {request.host}")
        if not loopback and request.path.startswith("/api/") and not has_token(board, request):
            raise web.HTTPUnauthorized(text="a wrong or missing token: enter the dashboard's token")
        response: web.StreamResponse = await handler(request)
        return response

    return check


def refusal(board: Board, request: web.Request) -> web.HTTPException | None:
    """Why this request may not act, or None."""
    if board.console.read_only:
        return web.HTTPForbidden(text="this dashboard is read-only ([dashboard] read_only = true)")
    if not board.console.token:
        return web.HTTPForbidden(text="actions need a token: set [dashboard] token or CORRAL_DASHBOARD_TOKEN")
    origin = request.headers.get("Origin")
    if origin is not None and origin.split("://", 1)[-1] != request.host:
        return web.HTTPForbidden(text="an action from another site is refused")
    if not has_token(board, request):
        return web.HTTPUnauthorized(text="a wrong or missing token: enter the dashboard's token")
    return None


async def pause(board: Board, body: dict[str, Any], _request: web.Request) -> web.StreamResponse:
    target = await ops(board).pause(str(body.get("name", "")))
    return web.json_response({"done": f"paused {target.kind} {target.name}"})


async def resume(board: Board, body: dict[str, Any], _request: web.Request) -> web.StreamResponse:
    target = await ops(board).resume(str(body.get("name", "")))
    return web.json_response({"done": f"resumed {target.kind} {target.name}"})


async def dead(board: Board, body: dict[str, Any], request: web.Request) -> web.StreamResponse:
    """Retry or delete (``body["do"]``) dead letters: ``ids``, or every one matching ``grep`` (all
    when empty). The answer streams one JSON line per batch done, then the total."""
    operations = ops(board)
    target = operations.resolve(str(body.get("name", "")))
    if body.get("do") not in ("retry", "delete"):
        raise ValueError(f"do: 'retry' or 'delete', got {body.get('do')!r}")
    if "ids" in body and not (isinstance(body["ids"], list) and body["ids"]):
        raise ValueError("nothing selected")  # never "all" by accident
    ids = [str(i) for i in body["ids"]] if "ids" in body else None
    grep = str(body["grep"]) if body.get("grep") and ids is None else None
    total = len(ids) if ids else None if grep else await operations.dead.count(target)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n

    async def report() -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            await response.write(line({"n": done, "total": total}))

    retrying = body.get("do") == "retry"
    verb = operations.dead.retry if retrying else operations.dead.purge
    reporter = asyncio.create_task(report())
    try:
        moved = await verb(target, ids=ids, grep=grep, on_progress=progress)
    except (CannotRetry, RedisError, OSError) as exc:  # the answer has begun: said in its last line
        await response.write(line({"error": f"{type(exc).__name__}: {exc}", "n": done, "total": total}))
        await response.write_eof()
        return response
    finally:
        reporter.cancel()
    word = "retried" if retrying else "deleted"
    await response.write(
        line({"done": f"{word} {moved} dead letters of {target.name}", "n": moved, "total": total})
    )
    await response.write_eof()
    return response


def line(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode() + b"\n"


async def scale(board: Board, body: dict[str, Any], _request: web.Request) -> web.StreamResponse:
    return web.json_response({"done": board.console.control["scale"](body.get("workers"))})


async def reload(board: Board, _body: dict[str, Any], _request: web.Request) -> web.StreamResponse:
    board.console.control["reload"](None)
    return web.json_response({"done": "rolling reload started"})


async def recycle(board: Board, body: dict[str, Any], _request: web.Request) -> web.StreamResponse:
    return web.json_response({"done": board.console.control["recycle"](body.get("slot"))})


ACTIONS: dict[str, Action] = {
    "pause": pause,
    "resume": resume,
    "dead": dead,
    "scale": scale,
    "reload": reload,
    "recycle": recycle,
}


def ops(board: Board) -> Any:
    if board.ops is None:
        raise web.HTTPNotFound(text="this pool has no Redis")
    return board.ops


def add_routes(app: web.Application, board: Board) -> None:
    async def act(request: web.Request) -> web.StreamResponse:
        action = ACTIONS.get(request.match_info["action"])
        if action is None:
            raise web.HTTPNotFound(text="no such action")
        refused = refusal(board, request)
        if refused is not None:
            raise refused
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="the body must be a JSON object") from None
        try:
            return await action(board, body if isinstance(body, dict) else {}, request)
        except (UnknownName, ValueError, CannotRetry) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        except (RedisError, OSError) as exc:
            raise web.HTTPServiceUnavailable(text=f"Redis: {type(exc).__name__}: {exc}") from None

    app.router.add_post("/api/act/{action}", act)
