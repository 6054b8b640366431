"""The Pairer: one pair at a time through TAKE -> CREATE -> notify -> COMMIT or ROLLBACK (see the
package's README.md)."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import random
import time
import uuid
from collections import Counter
from typing import Any

import psutil
from loguru import logger

from corral.entrypoints.pairing.lua import (
    COMMIT,
    CREATE,
    DEAD,
    LEASES,
    LOBBIES,
    OWNERS,
    RECOVER,
    ROLLBACK,
    SETTLE,
    STATS,
    TAKE,
    channel,
    inflight_key,
    lobby_key,
    lobby_pointer,
    presence_key,
)
from corral.entrypoints.pairing.model import (
    BadTicket,
    NotifyFailed,
    Outcome,
    Pair,
    PairingOptions,
    Ticket,
    process_alive,
)
from corral.workers.consumers.membership import redis_now_ms


class Pairer:
    """The pairing logic of one worker process (usable without corral: tests drive it directly)."""

    def __init__(
        self,
        redis: Any,
        worker_id: str,
        host: str,
        *,
        options: PairingOptions | None = None,
        log: Any = logger,
        rng: random.Random | None = None,
    ) -> None:
        self.redis = redis
        self.worker_id = worker_id
        self.host = host
        self.options = options or PairingOptions()
        self.log = log
        self.rng = rng or random.Random()
        self.inflight = inflight_key(worker_id)
        self.stats: Counter[str] = Counter()
        started = psutil.Process(os.getpid()).create_time()
        self._owner = json.dumps({"host": host, "pid": os.getpid(), "started": started})
        self._take = redis.register_script(TAKE)
        self._create = redis.register_script(CREATE)
        self._commit = redis.register_script(COMMIT)
        self._rollback = redis.register_script(ROLLBACK)
        self._settle = redis.register_script(SETTLE)
        self._recover = redis.register_script(RECOVER)

    async def next_pair(self, queue: str) -> Outcome | None:
        """Take the two front tickets of ``queue`` and pair them; None if it holds fewer than two."""
        reply = await self._take(keys=[queue, self.inflight, LEASES], args=[self.worker_id])
        if reply == [b"lease"]:
            self.log.warning("pairing: our lease ran out; renewing it before taking more tickets")
            await self.renew()
            return None
        if reply == [b"held"]:  # left from a round whose reply was lost: back to the queue first
            await self.hand_back()
            return None
        if not reply:
            return None
        return await self.pair(queue, reply[0], reply[1])

    async def pair(self, queue: str, raw_a: bytes, raw_b: bytes) -> Outcome:
        """Lobby and notifications as one unit, for two tickets held in our in-flight hash."""
        parsed = [self._parse(raw) for raw in (raw_a, raw_b)]
        a, b = parsed
        if not isinstance(a, Ticket) or not isinstance(b, Ticket) or a.player_id == b.player_id:
            return await self._settle_invalid(queue, (raw_a, raw_b), parsed)
        pair = Pair(queue, (raw_a, raw_b), (a.player_id, b.player_id), uuid.uuid4().hex)
        keys = [self.inflight, queue, *map(presence_key, pair.players), *map(lobby_pointer, pair.players)]
        players, tickets = json.dumps(pair.players), json.dumps([a.ticket_id, b.ticket_id])
        args = [raw_a, raw_b, pair.lobby_id, self.worker_id, pair.category, players, tickets]
        reply = await self._create(keys=[*keys, lobby_key(pair.lobby_id), STATS], args=args)
        kind = reply[0].decode()
        if kind == "created":
            return self._count(await self._notify_and_commit(pair, created_us=reply[1]))
        verdicts = tuple(v.decode() for v in reply[1:])
        return self._count(Outcome("lost" if kind == "lost" else "aborted", None, verdicts))

    async def _notify_and_commit(self, pair: Pair, created_us: bytes) -> Outcome:
        cancelled = json.dumps({"type": "lobby_cancelled", "lobby_id": pair.lobby_id})
        try:
            await self.notify(pair.lobby_id, pair.category, list(pair.players))
        except NotifyFailed as exc:
            self.log.info("pairing: lobby {} rolled back: {}", pair.lobby_id, exc)
            keys = [self.inflight, pair.queue, *map(lobby_pointer, pair.players), lobby_key(pair.lobby_id)]
            args = [*pair.raws, pair.lobby_id, *map(channel, pair.players), cancelled]
            done = await self._rollback(keys=[*keys, STATS], args=args)
            return Outcome("rolled_back" if done else "lost", pair.lobby_id)
        keys = [self.inflight, lobby_key(pair.lobby_id), LOBBIES, STATS]
        if await self._commit(keys=keys, args=[*pair.raws, pair.lobby_id, created_us]):
            return Outcome("lobby", pair.lobby_id)
        # recovered (and cancelled) by another worker while we were notifying: ours came after
        self.log.warning("pairing: lobby {} was recovered by another worker meanwhile", pair.lobby_id)
        for player in pair.players:
            await self.redis.publish(channel(player), cancelled)
        return Outcome("lost", pair.lobby_id)

    async def notify(self, lobby_id: str, category: str, players: list[str]) -> None:
        message = json.dumps(
            {"type": "lobby", "lobby_id": lobby_id, "category": category, "players": players}
        )
        for player in players:
            if self.options.notify_delay_s:
                await asyncio.sleep(self.options.notify_delay_s)
            if self._notify_fails(player):
                raise NotifyFailed(f"notifying player {player} failed")
            await self.redis.publish(channel(player), message)

    def _notify_fails(self, player: str) -> bool:
        if any(fnmatch.fnmatchcase(player, p) for p in self.options.notify_fail_players):
            return True
        return self.options.notify_fail_rate > 0 and self.rng.random() < self.options.notify_fail_rate

    def _parse(self, raw: bytes) -> Ticket | str:
        try:
            return Ticket.parse(raw)
        except BadTicket as exc:
            return str(exc)

    async def _settle_invalid(
        self, queue: str, raws: tuple[bytes, bytes], parsed: list[Ticket | str]
    ) -> Outcome:
        """Invalid tickets go to the dead letters; when both are one player's, the second is
        dropped; a valid ticket goes back to the front."""
        fronts: list[Any] = []
        others: list[Any] = []
        verdicts = []
        for index, (raw, ticket) in enumerate(zip(raws, parsed, strict=True)):
            if isinstance(ticket, Ticket):
                duplicate = index == 1 and isinstance(parsed[0], Ticket)  # the same player as ticket 0
                verdicts.append("duplicate" if duplicate else "requeued")
                if duplicate:
                    others += [raw, "drop", ""]
                else:
                    fronts[:0] = [raw, "front", ""]  # the second is pushed first: the first is frontmost
            else:
                self.log.warning("pairing: invalid ticket from {} dead-lettered: {}", queue, ticket)
                verdicts.append("dead")
                text = raw.decode("utf-8", "replace")
                record = {"queue": queue, "error": ticket, "ticket": text, "worker": self.worker_id}
                others += [raw, "dead", json.dumps({**record, "at": time.time()})]
        # fronts first: when both tickets are the very same bytes, the copy put back is the one kept
        args = fronts + others
        await self._settle(keys=[self.inflight, queue, DEAD, STATS], args=args)
        return self._count(Outcome("settled", None, tuple(verdicts)))

    def _count(self, outcome: Outcome) -> Outcome:
        self.stats[outcome.kind] += 1
        for verdict in outcome.verdicts:
            self.stats[verdict] += 1
        return outcome

    async def renew(self) -> None:
        """Register (or keep registered) this worker: its lease, and who it is for the sweep."""
        now_ms = await redis_now_ms(self.redis)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(LEASES, {self.worker_id: now_ms + int(self.options.lease_ttl_s * 1000)})
            pipe.hset(OWNERS, self.worker_id, self._owner)
            await pipe.execute()

    async def recover(self, worker_id: str, mode: str) -> int:
        """Roll back ``worker_id``'s pending lobby and put its in-flight tickets back at the front.
        ``mode``: 'expired' (only if its lease has run out: checked in the script), 'dead' (its
        process is gone), 'self' (our own, after an interrupted round), 'leave' (a clean stop)."""
        keys = [inflight_key(worker_id), LEASES, OWNERS, STATS]
        moved = int(await self._recover(keys=keys, args=[worker_id, mode]))
        if moved > 0 and mode != "self":
            self.log.warning("pairing: recovered worker {} ({}): {} tickets back", worker_id, mode, moved)
        self.stats["recovered_tickets"] += max(moved, 0)
        return moved

    async def sweep(self) -> int:
        """Recover every other worker whose lease ran out, or whose process on this host is gone;
        returns how many were recovered."""
        now_ms = await redis_now_ms(self.redis)
        leases = {m.decode(): score for m, score in await self.redis.zrange(LEASES, 0, -1, withscores=True)}
        owners = {k.decode(): v for k, v in (await self.redis.hgetall(OWNERS)).items()}
        recovered = 0
        for worker_id in sorted((set(leases) | set(owners)) - {self.worker_id}):
            if leases.get(worker_id, 0) <= now_ms:
                mode = "expired"
            elif self._died_here(owners.get(worker_id)):
                mode = "dead"
            else:
                continue
            if await self.recover(worker_id, mode) >= 0:
                recovered += 1
        return recovered

    def _died_here(self, owner: bytes | None) -> bool:
        try:
            info = json.loads(owner or b"{}")
            return bool(info["host"] == self.host and not process_alive(int(info["pid"]), info["started"]))
        except (ValueError, KeyError, TypeError):
            return False

    async def hand_back(self) -> int:
        """Our own in-flight pair back (after an interrupted round, or a fast stop)."""
        return await self.recover(self.worker_id, "self")

    async def leave(self) -> int:
        """A clean stop: hand back whatever is left and deregister."""
        return await self.recover(self.worker_id, "leave")
