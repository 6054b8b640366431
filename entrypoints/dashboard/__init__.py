"""The web dashboard, mounted on the supervisor's aiohttp server (``[dashboard] listen``): the
pool's slots and the other hosts' members, live graphs kept in Redis, queues and streams, dead
letters (search, retry, delete), schedules and log tails; actions behind a token. The supervisor is
handed ``corral.entrypoints.dashboard:mount`` by import path (``[dashboard] app``)."""

from __future__ import annotations

from aiohttp import web

from corral.entrypoints.dashboard import actions, reads
from corral.entrypoints.dashboard.board import Board
from corral.supervisor.web import Console


def mount(app: web.Application, console: Console) -> None:
    board = Board(console)
    app.middlewares.append(actions.guard(board))
    reads.add_routes(app, board)
    actions.add_routes(app, board)

    async def start(_app: web.Application) -> None:
        await board.start()

    async def close(_app: web.Application) -> None:
        await board.close()

    app.on_startup.append(start)
    app.on_cleanup.append(close)


__all__ = ["mount"]
