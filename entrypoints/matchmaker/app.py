"""Matchmaker: games move between ``pending``, ``lobby`` and ``active`` on game-server events.

Per product, three sorted sets (game id -> last activity, unix seconds) and one hash per game
(the matchmaker's own state: created, creator_joined, all_players_joined, in_progress, ended),
all under the product's hash tag ``mm:{<product>}:...``. Every move is one Lua script that takes
the game out of all three sets and puts it in its new one, so a game is never in two sets.

- ``handle_event`` (the ``[[streams]]`` handler) applies ``state_change``, ``game_removed`` and
  ``player_disconnect`` events. The stream is partitioned by game id: the events of one game are
  handled in order, by one worker at a time. Unknown or malformed events are rejected (logged and
  dead-lettered at once; they never block the game's partition nor crash the worker).
- ``curate`` (the handler of the ``curate-games`` schedule, ``[[schedules]]``) purges expired
  games, oldest first, in batches (``GameCuration``); the schedule fires each tick once across
  every host and never while the previous run is still going, and the purge re-checks the game's
  score atomically, so it would also be safe if several ran.

Run: ``corral run -c entrypoints/matchmaker/corral.toml``; publish: ``corral publish mm:game-events
--key g1 '{"type": "state_change", "product_id": "chess", "game_id": "g1", "new_state": "created"}'``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from corral.workers import BaseWorker
from corral.workers.messages import HandlerContext, Job, Message, Reject
from corral.workers.producer import apublish, publish

STREAM = "mm:game-events"
SET_OF_STATE = {
    "created": "pending",
    "creator_joined": "lobby",
    "all_players_joined": "active",
    "in_progress": "active",
    "ended": None,
}
SETS = ("pending", "lobby", "active")
EVENT_FIELDS = {
    "state_change": ("product_id", "game_id", "new_state"),
    "game_removed": ("product_id", "game_id"),
    "player_disconnect": ("product_id", "game_id", "player_id"),
}
LIFECYCLE = ("created", "creator_joined", "all_players_joined", "in_progress", "ended")
ENDED_TTL_S = 3600  # an ended game's record stays this long (for late events), then Redis drops it

# KEYS: pending, lobby, active, game; ARGV: game id, target set ("" for none), state, now, product
MOVE = """
for i = 1, 3 do redis.call('ZREM', KEYS[i], ARGV[1]) end
local target = ({pending = 1, lobby = 2, active = 3})[ARGV[2]]
if target then redis.call('ZADD', KEYS[target], ARGV[4], ARGV[1]) end
redis.call('HSET', KEYS[4], 'state', ARGV[3], 'product_id', ARGV[5], 'updated_at', ARGV[4])
redis.call('HSETNX', KEYS[4], 'created_at', ARGV[4])
if not target then redis.call('EXPIRE', KEYS[4], ARGV[6]) else redis.call('PERSIST', KEYS[4]) end
return 1
"""
# KEYS: pending, lobby, active, game; ARGV: game id, now — a non-host left an active game: back to the lobby
DISCONNECT = """
if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 0 end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[4], 'state', 'creator_joined', 'updated_at', ARGV[2])
return 1
"""
# KEYS: pending, lobby, active, game; ARGV: game id
REMOVE = """
for i = 1, 3 do redis.call('ZREM', KEYS[i], ARGV[1]) end
return redis.call('DEL', KEYS[4])
"""
# KEYS: the set, game; ARGV: game id, oldest activity kept — purge only if still expired (re-checked)
PURGE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""


def game_keys(product: str, game_id: str) -> list[str]:
    """pending, lobby, active (sorted sets) and the game's hash: one hash tag per product."""
    return [f"mm:{{{product}}}:{name}" for name in SETS] + [f"mm:{{{product}}}:game:{game_id}"]


PRODUCTS = "mm:products"  # the products seen, for curation


@dataclass(frozen=True)
class GameEvent:
    type: str
    product_id: str
    game_id: str
    new_state: str = ""
    player_id: str = ""

    @classmethod
    def parse(cls, fields: dict[str, str]) -> GameEvent:
        """The event in a stream entry; ``Reject`` (dead-letter at once) when it cannot be one."""
        kind = fields.get("type", "")
        required = EVENT_FIELDS.get(kind)
        if required is None:
            raise Reject(f"unknown event type {kind!r}")
        missing = [name for name in required if not fields.get(name)]
        if missing:
            raise Reject(f"{kind} event without {', '.join(missing)}")
        if kind == "state_change" and fields["new_state"] not in SET_OF_STATE:
            raise Reject(f"unknown state {fields['new_state']!r}")
        return cls(
            kind,
            fields["product_id"],
            fields["game_id"],
            fields.get("new_state", ""),
            fields.get("player_id", ""),
        )


class GameEventWorker:
    """Applies game-server events to the sets; one instance per child, with its counters."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self.events: Counter[str] = Counter()
        self.moved: Counter[str] = Counter()
        self._move = redis.register_script(MOVE)
        self._disconnect = redis.register_script(DISCONNECT)
        self._remove = redis.register_script(REMOVE)

    async def apply(self, event: GameEvent, now: float | None = None) -> None:
        now = time.time() if now is None else now
        keys = game_keys(event.product_id, event.game_id)
        if event.type == "state_change":
            target = SET_OF_STATE[event.new_state] or ""
            args = [event.game_id, target, event.new_state, now, event.product_id, ENDED_TTL_S]
            await self._move(keys=keys, args=args)
            await self.redis.sadd(PRODUCTS, event.product_id)
            self.moved[target or "ended"] += 1
        elif event.type == "game_removed":
            await self._remove(keys=keys, args=[event.game_id])
        elif await self._disconnect(keys=keys, args=[event.game_id, now]):
            self.moved["lobby"] += 1
        self.events[event.type] += 1


async def handle_event(message: Message, ctx: HandlerContext) -> None:
    """The ``[[streams]]`` handler: one game-server event."""
    worker: MatchmakerWorker = ctx.worker
    await worker.game_events.apply(GameEvent.parse(message.fields))


@dataclass(frozen=True)
class Expiry:
    pending_s: float = 60.0  # created, the creator never joined
    lobby_s: float = 600.0  # in the lobby, nobody else joined
    active_s: float = 7200.0  # active, no news from the game server

    def of(self, name: str) -> float:
        return float(getattr(self, f"{name}_s"))


class GameCuration:
    """Purges expired games, oldest first, a batch per product and set each ``run``."""

    def __init__(self, redis: Any, expiry: Expiry, batch: int) -> None:
        self.redis = redis
        self.expiry = expiry
        self.batch = batch
        self.purged: Counter[str] = Counter()
        self.sizes: dict[str, dict[str, int]] = {}
        self._purge = self.redis.register_script(PURGE)

    async def run(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        purged = 0
        for raw in sorted(await self.redis.smembers(PRODUCTS)):
            purged += await self._curate(raw.decode(), now)
        return purged

    async def _curate(self, product: str, now: float) -> int:
        purged = 0
        sizes = self.sizes.setdefault(product, {})
        for name, key in zip(SETS, game_keys(product, "")[:3], strict=True):
            oldest_kept = now - self.expiry.of(name)
            expired = await self.redis.zrangebyscore(key, "-inf", oldest_kept, start=0, num=self.batch)
            for raw_id in expired:
                game = raw_id.decode()
                if await self._purge(keys=[key, game_keys(product, game)[3]], args=[game, oldest_kept]):
                    purged += 1
                    self.purged[name] += 1
            sizes[name] = int(await self.redis.zcard(key))
        return purged


async def curate(job: Job, ctx: HandlerContext) -> None:
    """The ``curate-games`` schedule's handler: purge batch after batch until none is expired."""
    curation: GameCuration = ctx.worker.curation
    purged = 0
    while batch := await curation.run():
        purged += batch
    if purged:
        ctx.log.info("curation {}: {} expired games purged", job.id, purged)


class MatchmakerWorker(BaseWorker):
    """Each child: the event handler's state, and the curation the schedule's handler runs.

    Options (``[options]``): ``expiry_pending_s``, ``expiry_lobby_s``, ``expiry_active_s``,
    ``curation_batch`` (100); how often: the ``curate-games`` schedule."""

    async def start(self) -> None:
        options = self.context.options
        expiry = Expiry(
            float(options.get("expiry_pending_s", 60.0)),
            float(options.get("expiry_lobby_s", 600.0)),
            float(options.get("expiry_active_s", 7200.0)),
        )
        self.game_events = GameEventWorker(self.redis)
        self.curation = GameCuration(self.redis, expiry, int(options.get("curation_batch", 100)))
        await super().start()

    def stats(self) -> dict[str, Any]:
        return {
            **super().stats(),
            "matchmaker": {
                "events": dict(self.game_events.events),
                "purged": dict(self.curation.purged),
                "sets": self.curation.sizes,
            },
        }


def event_fields(event: GameEvent) -> dict[str, str]:
    fields = {"type": event.type, "product_id": event.product_id, "game_id": event.game_id}
    if event.new_state:
        fields["new_state"] = event.new_state
    if event.player_id:
        fields["player_id"] = event.player_id
    return fields


def send_event(redis: Any, event: GameEvent, partitions: int) -> str:
    """Publish a game-server event (sync client) on its game's partition."""
    return publish(redis, STREAM, event_fields(event), key=event.game_id, partitions=partitions)


async def asend_event(redis: Any, event: GameEvent, partitions: int) -> str:
    return await apublish(redis, STREAM, event_fields(event), key=event.game_id, partitions=partitions)
