"""Is the pool alive, and ready? What a probe asks (``/health/live`` and ``/health/ready`` on the
supervisor's web server, ``corral health [--ready]`` over the control socket).

Live: the supervisor's loop answers at all. Ready: every slot has a ready child (not starting, in
backoff, fatal, cut off from Redis) and Redis answers a ``PING`` within ``PING_TIMEOUT_S``, asked
by the supervisor itself on each probe (a Sentinel URL is judged by the children's view instead:
a slot cut off from Redis is ``redis-down``). The reasons name the slots and the Redis (its
password as ``***``).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aredis

from corral.supervisor.config import redacted
from corral.supervisor.status import Status

PING_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Health:
    ready: bool
    reasons: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"live": True, "ready": self.ready, "reasons": list(self.reasons)}


async def check(status: Status, redis_url: str | None) -> Health:
    reasons = slot_problems(status)
    problem = await redis_problem(redis_url)
    if problem:
        reasons.append(problem)
    return Health(not reasons, tuple(reasons))


def slot_problems(status: Status) -> list[str]:
    """Each slot without a ready child, and why (the old children of a reload, draining, aside)."""
    problems = []
    for row in status["slots"]:
        if row["state"] not in ("ready", "draining"):
            why = f" ({row['reason']})" if row["reason"] else ""
            problems.append(f"slot {row['slot']}: {row['state']}{why}")
    return problems


async def redis_problem(url: str | None) -> str | None:
    """Why Redis does not answer a ``PING`` now, or None (no Redis, or a Sentinel URL: see above)."""
    if url is None or url.startswith("redis+sentinel://"):
        return None
    client = aredis.from_url(url, socket_connect_timeout=PING_TIMEOUT_S, socket_timeout=PING_TIMEOUT_S)
    try:
        await asyncio.wait_for(client.ping(), PING_TIMEOUT_S)
    except (OSError, TimeoutError, aredis.RedisError) as exc:
        return f"Redis at {redacted(url)} does not answer: {type(exc).__name__}"
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
    return None
