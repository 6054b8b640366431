"""What the control socket answers (``corral status|reload|scale|stop|request|send``): requests
that change the pool only enqueue an ``Action`` for the supervisor's loop; ``request`` and ``send``
go to one child."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from corral.supervisor import health
from corral.supervisor.actions import Action
from corral.supervisor.connection import WorkerConnection
from corral.supervisor.pool import WorkerPool
from corral.supervisor.status import Status

Actions = asyncio.Queue[tuple[Action, Any]]


def control_handlers(
    pool: WorkerPool, actions: Actions, status: Callable[[], Status], redis_url: str | None = None
) -> dict[str, Callable[[Any], Any]]:
    def enqueue(action: Action) -> Callable[[Any], str]:
        def handler(_data: Any) -> str:
            actions.put_nowait((action, None))
            return action.value

        return handler

    def scale(data: Any) -> str:
        if type(data) is not int or data < 0:
            raise ValueError(f"scale needs a whole number >= 0, got {data!r}")
        actions.put_nowait((Action.SCALE, data))
        return f"scaling to {data}"

    async def reload(_data: Any) -> str:
        """``corral reload``: answered with the outcome once every slot's replacement is ready (old
        children may still drain), or an error with the reason the reload was refused."""
        outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        actions.put_nowait((Action.RELOAD, outcome))
        return await outcome

    def recycle(data: Any) -> str:
        if type(data) is not int or data not in pool.slots:
            raise ValueError(f"recycle needs a slot of the pool, got {data!r}")
        actions.put_nowait((Action.RECYCLE, data))
        return f"recycling slot {data}: its replacement starts first"

    async def request(data: Any) -> Any:
        """``corral request SLOT EVENT [JSON]``: a request to one child, its reply."""
        conn, event, payload = _child(pool, data)
        return await conn.request(event, payload, float(data.get("timeout_s") or 10.0))

    def send(data: Any) -> str:
        """``corral send SLOT EVENT [JSON]``: fire-and-forget to one child."""
        conn, event, payload = _child(pool, data)
        conn.send(event, payload)
        return f"sent {event} to slot {conn.slot} (pid {conn.pid})"

    return {
        "status": lambda _data: status(),
        "health": lambda _data: _health(status, redis_url),
        "request": request,
        "send": send,
        "reload": reload,
        "stop": enqueue(Action.STOP),
        "quit": enqueue(Action.QUIT),
        "reopen": enqueue(Action.REOPEN),
        "scale": scale,
        "recycle": recycle,
    }


async def _health(status: Callable[[], Status], redis_url: str | None) -> dict[str, Any]:
    """``corral health``: live (it answered), and ready or why not (``health.py``)."""
    return (await health.check(status(), redis_url)).to_json()


def _child(pool: WorkerPool, data: Any) -> tuple[WorkerConnection, str, Any]:
    if not isinstance(data, dict) or type(data.get("slot")) is not int or not data.get("event"):
        raise ValueError(f"needs {{slot, event, data}}, got {data!r}")
    conn = pool.get(data["slot"])
    if conn is None or not conn.alive:
        raise ValueError(f"slot {data['slot']} has no running child")
    return conn, str(data["event"]), data.get("data")


class ReloadRefused(Exception):
    """What ``corral reload`` is answered with when the reload did not happen (or stopped early)."""


def refuse(outcome: asyncio.Future[str] | None, reason: str) -> None:
    """Tell a waiting ``corral reload`` (if any: a SIGHUP has none) why its reload did not happen."""
    if outcome is not None and not outcome.done():
        outcome.set_exception(ReloadRefused(reason))
