"""Match pairing: two queued players become one lobby, atomically, or nothing happens.

Players join a queue per category (``pairing:queue:<category>``, a list; tickets are JSON
``{"ticket_id", "player_id", "category", "joined_at"}``, LPUSHed at the back, taken from the front).
A player is connected while ``presence:<player_id>`` exists (clients refresh its TTL). Each pairing
worker runs a unit of work that, per pair, does:

1. TAKE (Lua): move the two front tickets into its own in-flight hash
   ``pairing:inflight:<worker id>`` (refused unless its lease is live).
2. CREATE (Lua): if both players are present and neither is in a lobby (``player:<id>:lobby``
   absent: SET NX semantics, checked and set in the same script), create the lobby
   ``pairing:lobby:<id>`` (status ``pending``) and both pointers; otherwise create nothing, put the
   healthy player back at the FRONT of the queue and drop the ticket of the one gone (or busy).
3. Notify both players (PUBLISH ``player:<id>`` ``{"type": "lobby", ...}``).
4. COMMIT (Lua): status ``ready``, index ``pairing:lobbies``, tickets leave the in-flight hash. If
   a notification failed instead, ROLLBACK (Lua): lobby and pointers deleted, both tickets back at
   the front, ``lobby_cancelled`` published to both.

Every script acts only on tickets still in the caller's in-flight hash, which fences off a worker
whose work was recovered meanwhile. Recovery (``RECOVER``: roll back the pending lobby, tickets
back at the front) runs for a worker whose lease in ``pairing:leases`` ran out, or at once for a
worker on this host whose process is gone (the ``pairing-lease`` unit of every child sweeps). See
``entrypoints/pairing/README.md`` for the design and why the corral queue consumer is not used here.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from corral.contract import RedisSpec
from corral.entrypoints.pairing.lua import (
    QUEUE_PREFIX,
)
from corral.entrypoints.pairing.model import PairingOptions
from corral.entrypoints.pairing.pairer import Pairer
from corral.workers import BaseWorker
from corral.workers.consumers.outages import TRANSIENT
from corral.workers.topology import Kind, connect, kind_of_client

# Redis away (restart, dropped connection): a round is interrupted, not failed; the manager retries
REDIS_AWAY = TRANSIENT


class PairingUnit:
    """A unit of work for the WorkerManager: one round tries one pair per category."""

    name = "pairing"
    transient_errors = REDIS_AWAY

    def __init__(self, pairer: Pairer, options: PairingOptions) -> None:
        self.pairer = pairer
        self.options = options
        self.idle_sleep_s = options.idle_sleep_s
        self.queues: list[str] = []
        self.interrupted = False  # the last round raised: our in-flight hash may hold a pair
        self._discovered_at = float("-inf")
        self._rr = 0

    async def run(self) -> int:
        if self.interrupted:
            await self.pairer.hand_back()
            self.interrupted = False
        try:
            return await self._round()
        except asyncio.CancelledError:  # a fast stop: the pair in hand goes back at once
            await asyncio.shield(self._hand_back_quietly())
            raise
        except Exception:
            self.interrupted = True
            raise

    async def _round(self) -> int:
        await self._discover()
        if not self.queues:
            return 0
        self._rr = (self._rr + 1) % len(self.queues)
        paired = 0
        for queue in self.queues[self._rr :] + self.queues[: self._rr]:
            if await self.pairer.next_pair(queue) is not None:
                paired += 1
        return paired

    async def _discover(self) -> None:
        now = time.monotonic()
        if now - self._discovered_at < self.options.refresh_s:
            return
        self._discovered_at = now
        found = self.pairer.redis.scan_iter(match=f"{QUEUE_PREFIX}*", count=1000, _type="list")
        self.queues = sorted({key.decode() async for key in found})

    async def _hand_back_quietly(self) -> None:
        try:
            await self.pairer.hand_back()
        except Exception:
            self.pairer.log.exception("pairing: handing the pair back failed; the next round or a sweep will")


class LeaseUnit:
    """Renews this worker's lease and sweeps for dead workers every ``sweep_interval_s``."""

    name = "pairing-lease"
    transient_errors = REDIS_AWAY

    def __init__(self, pairer: Pairer, options: PairingOptions) -> None:
        self.pairer = pairer
        self.renew_every_s = options.lease_ttl_s / 3
        self.idle_sleep_s = min(options.sweep_interval_s, self.renew_every_s)
        self._renewed_at = time.monotonic()

    async def run(self) -> int:
        if time.monotonic() - self._renewed_at >= self.renew_every_s:
            await self.pairer.renew()
            self._renewed_at = time.monotonic()
        return await self.pairer.sweep()


class PairingWorker(BaseWorker):
    """``pool.worker = "corral.entrypoints.pairing:PairingWorker"``; options: see ``PairingOptions``."""

    pairer: Pairer
    _own_redis = False  # no [[queues]]/[[streams]]: corral made no client, we did

    async def start(self) -> None:
        options = PairingOptions.from_options(self.context.options)
        self._own_redis = self.redis is None
        if self.redis is None:
            url = os.environ.get("CORRAL_REDIS_URL") or options.redis_url
            if not url:
                raise ValueError("options.redis_url (or CORRAL_REDIS_URL) is required")
            self.redis = await connect(RedisSpec(url=url))
        if kind_of_client(self.redis) is Kind.CLUSTER:
            raise ValueError(
                "the pairing app cannot run on a Redis Cluster: each pairing moves the tickets of "
                "several players in one script, and their keys live in different slots; use a "
                "standalone server or a Sentinel-watched primary"
            )
        self.pairer = Pairer(
            self.redis, self.context.worker_id, self.context.host, options=options, log=self.log
        )
        await self.pairer.renew()
        await self.pairer.sweep()  # what a SIGKILLed predecessor of this slot left goes back first
        self.manager.register_worker(PairingUnit(self.pairer, options))
        self.manager.register_worker(LeaseUnit(self.pairer, options))
        await super().start()

    async def stop(self) -> None:
        try:
            await self.pairer.leave()
        except REDIS_AWAY:
            self.log.warning("pairing: Redis unreachable at stop; our lease will run out instead")
        if self._own_redis:
            await self.redis.aclose()

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "pairing": dict(self.pairer.stats)}
