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
``entrypoints/pairing.md`` for the design and why the corral queue consumer is not used here.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import psutil
from loguru import logger
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from entrypoints.pairing_lua import (
    COMMIT,
    CREATE,
    DEAD,
    LEASES,
    LOBBIES,
    OWNERS,
    QUEUE_PREFIX,
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
    queue_key,
)
from workers import BaseWorker
from workers.consumers import connect
from workers.membership import redis_now_ms
from workers.specs import RedisSpec

# Redis away (restart, dropped connection): a round is interrupted, not failed; the manager retries
REDIS_AWAY: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
)


class BadTicket(ValueError):
    """Not a JSON ticket with a string ticket_id, player_id and category."""


class NotifyFailed(Exception):
    """Telling a player about their lobby failed: the lobby is rolled back."""


@dataclass(frozen=True)
class Ticket:
    ticket_id: str
    player_id: str
    category: str
    joined_at: float
    raw: bytes = field(repr=False, compare=False)

    @classmethod
    def parse(cls, raw: bytes) -> Ticket:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadTicket(f"not a JSON ticket: {exc}") from None
        if not isinstance(data, dict):
            raise BadTicket("a ticket must be a JSON object")
        for name in ("ticket_id", "player_id", "category"):
            if not isinstance(data.get(name), str) or not data[name]:
                raise BadTicket(f"{name}: must be a non-empty string")
        joined_at = data.get("joined_at", 0.0)
        if not isinstance(joined_at, int | float) or isinstance(joined_at, bool):
            raise BadTicket("joined_at: must be a number")
        return cls(data["ticket_id"], data["player_id"], data["category"], float(joined_at), raw)


@dataclass(frozen=True)
class Outcome:
    """What became of one pair: a lobby, nothing (aborted: someone gone or busy), a lobby rolled
    back (notification failed), invalid/duplicate tickets settled, or lost (recovered by another)."""

    kind: Literal["lobby", "aborted", "rolled_back", "settled", "lost"]
    lobby_id: str | None = None
    verdicts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pair:
    """Two tickets in our in-flight hash, and the lobby they are to become."""

    queue: str
    raws: tuple[bytes, bytes]
    players: tuple[str, str]
    lobby_id: str

    @property
    def category(self) -> str:
        return self.queue.removeprefix(QUEUE_PREFIX)


@dataclass(frozen=True)
class PairingOptions:
    """``[options]`` of a pairing pool; ``notify_*`` inject notification failures and latency."""

    redis_url: str = ""  # used when the pool declares no [[queues]]/[[streams]] (see pairing.md)
    refresh_s: float = 1.0  # how often categories are discovered (SCAN pairing:queue:*)
    idle_sleep_s: float = 0.05  # after a round that found no pair
    lease_ttl_s: float = 10.0  # a worker silent this long is dead: its in-flight pair is recovered
    sweep_interval_s: float = 1.0  # how often each child looks for dead workers
    notify_fail_rate: float = 0.0  # probability that notifying one player fails
    notify_fail_players: tuple[str, ...] = ()  # fnmatch patterns of players whose notification fails
    notify_delay_s: float = 0.0  # simulated delivery latency per player

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> PairingOptions:
        values: dict[str, Any] = {}
        for spec in fields(cls):
            if spec.name not in options:
                continue
            value = options[spec.name]
            if spec.name == "redis_url":
                ok = isinstance(value, str)
            elif spec.name == "notify_fail_players":
                ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
                value = tuple(value) if ok else value
            else:
                ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
            if not ok:
                raise ValueError(f"options.{spec.name}: invalid value {value!r}")
            values[spec.name] = value
        made = cls(**values)
        if made.notify_fail_rate > 1 or made.lease_ttl_s <= 0 or made.sweep_interval_s <= 0:
            raise ValueError("options: notify_fail_rate must be <= 1, lease_ttl_s and sweep_interval_s > 0")
        return made


def process_alive(pid: int, started: float) -> bool:
    """The process that registered (pid + start time, so a recycled pid does not count) still runs."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - started) < 0.1
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


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

    # -- one pair -------------------------------------------------------------------------------

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

    # -- leases and recovery ------------------------------------------------------------------------

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
    """``pool.worker = "entrypoints.pairing:PairingWorker"``; options: see ``PairingOptions``."""

    pairer: Pairer
    _own_redis = False  # no [[queues]]/[[streams]]: corral made no client, we did

    async def start(self) -> None:
        options = PairingOptions.from_options(self.context.options)
        self._own_redis = self.redis is None
        if self.redis is None:
            url = os.environ.get("CORRAL_REDIS_URL") or options.redis_url
            if not url:
                raise ValueError("options.redis_url (or CORRAL_REDIS_URL) is required")
            self.redis = connect(RedisSpec(url=url))
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


# -- producers (clients, tests, the demo's traffic) --------------------------------------------------


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
