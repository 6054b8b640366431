"""Producing for match pairing: tickets onto a category's queue, and players' presence (clients,
tests, the demo's traffic)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from corral.entrypoints.pairing.lua import (
    presence_key,
    queue_key,
)


def new_ticket(category: str, player_id: str, ticket_id: str | None = None) -> dict[str, Any]:
    return {
        "ticket_id": ticket_id or uuid.uuid4().hex,
        "player_id": player_id,
        "category": category,
        "joined_at": time.time(),
    }


def join(redis: Any, category: str, player_id: str, *, ticket_id: str | None = None) -> dict[str, Any]:
    """Queue a player for ``category`` (at the back); returns the ticket. ``redis``: a redis-py
    client or pipeline. The player is paired only while ``heartbeat`` keeps them present."""
    ticket = new_ticket(category, player_id, ticket_id)
    redis.lpush(queue_key(category), json.dumps(ticket, separators=(",", ":")))
    return ticket


async def ajoin(redis: Any, category: str, player_id: str, *, ticket_id: str | None = None) -> dict[str, Any]:
    ticket = new_ticket(category, player_id, ticket_id)
    await redis.lpush(queue_key(category), json.dumps(ticket, separators=(",", ":")))
    return ticket


def heartbeat(redis: Any, player_id: str, ttl_s: float) -> None:
    """The player is connected for ``ttl_s`` more seconds (clients call this periodically)."""
    redis.set(presence_key(player_id), b"1", px=max(1, int(ttl_s * 1000)))


async def aheartbeat(redis: Any, player_id: str, ttl_s: float) -> None:
    await redis.set(presence_key(player_id), b"1", px=max(1, int(ttl_s * 1000)))
