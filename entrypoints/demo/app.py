"""The demo: every example app in one pool, driven by random but realistic traffic.

``corral run -c entrypoints/demo/corral.toml`` starts the supervisor on the embedded Redis; slot 0 also
runs ``DemoTraffic``, which plays game servers (matchmaker events), contestants (submissions),
players looking for a match (pairing) and trivia hosts (a room now and then). Watch it with
``corral status -c entrypoints/demo/corral.toml`` and ``corral logs 0 -f -c entrypoints/demo/corral.toml``.
"""

from __future__ import annotations

import random
import time
from typing import Any

from corral.entrypoints.contest import ContestWorker, asubmit, random_submission
from corral.entrypoints.matchmaker.app import LIFECYCLE, GameEvent, MatchmakerWorker, asend_event
from corral.entrypoints.pairing import PairingWorker, aheartbeat, ajoin
from corral.entrypoints.trivia.app import TriviaWorker, astart_room
from corral.workers.base import BaseWorker

PRODUCTS = ("chess", "go", "poker")
CONTESTS = ("spring", "summer")
USERS = tuple(f"user-{i}" for i in range(40))
PROBLEMS = tuple(f"p{i}" for i in range(8))
CATEGORIES = ("ranked", "casual", "blitz")


class GameServers:
    """Plays game servers: games are created, filled, played, ended; some are abandoned (curation
    purges them), some players leave mid-game, some games are removed."""

    def __init__(self, rng: random.Random, partitions: int) -> None:
        self.rng = rng
        self.partitions = partitions
        self.live: dict[str, tuple[str, int]] = {}  # game id -> (product, lifecycle step)
        self.count = 0

    def next_event(self) -> GameEvent:
        rng = self.rng
        if not self.live or rng.random() < 0.15:
            self.count += 1
            game, product = f"game-{self.count}", rng.choice(PRODUCTS)
            self.live[game] = (product, 1)
            return GameEvent("state_change", product, game, new_state="created")
        game = rng.choice(list(self.live))
        product, step = self.live[game]
        roll = rng.random()
        if roll < 0.1:  # abandoned: left for curation to purge
            del self.live[game]
            return GameEvent("state_change", product, game, new_state="created")
        if roll < 0.15:
            del self.live[game]
            return GameEvent("game_removed", product, game)
        if roll < 0.25 and step >= 3:
            self.live[game] = (product, 2)
            return GameEvent("player_disconnect", product, game, player_id=f"player-{rng.randrange(1000)}")
        if step + 1 >= len(LIFECYCLE):
            del self.live[game]
        else:
            self.live[game] = (product, step + 1)
        return GameEvent("state_change", product, game, new_state=LIFECYCLE[step])


class DemoTraffic:
    """A unit of work (slot 0 only): ``rate_per_s`` events a second, spread over the apps."""

    name = "demo-traffic"

    def __init__(self, worker: BaseWorker, rate_per_s: float, partitions: int, room_every_s: float) -> None:
        self.worker = worker
        self.rng = random.Random()
        self.idle_sleep_s = 1.0 / rate_per_s
        self.games = GameServers(self.rng, partitions)
        self.room_every_s = room_every_s
        self.next_room_at = time.monotonic()
        self.rooms = 0
        self.players = 0
        self.sent = 0

    async def run(self) -> int:
        redis = self.worker.redis
        roll = self.rng.random()
        if roll < 0.25:  # contestants submitting answers
            await asubmit(redis, random_submission(self.rng, CONTESTS, USERS, PROBLEMS))
        elif roll < 0.35:  # a player looking for a match; one in ten is gone before being paired
            self.players += 1
            player = f"player-{self.players}"
            if self.rng.random() > 0.1:
                await aheartbeat(redis, player, ttl_s=30.0)
            await ajoin(redis, self.rng.choice(CATEGORIES), player)
        else:  # game servers reporting
            await asend_event(redis, self.games.next_event(), self.games.partitions)
        if time.monotonic() >= self.next_room_at:  # a trivia room starts now and then
            self.rooms += 1
            await astart_room(redis, f"room-{int(time.time())}-{self.rooms}", self.rng.randint(3, 6))
            self.next_room_at = time.monotonic() + self.room_every_s
        self.sent += 1
        if self.sent % 500 == 0:
            self.worker.log.info("demo traffic: {} events sent", self.sent)
        return 0  # sleep idle_sleep_s: the pace of the traffic


class DemoWorker(MatchmakerWorker, ContestWorker, TriviaWorker, PairingWorker):
    """Every example app's worker in one (their start/stop/stats chain through super())."""

    async def start(self) -> None:
        await super().start()
        options: dict[str, Any] = self.context.options
        if self.slot == int(options.get("traffic_slot", 0)):
            self.traffic = DemoTraffic(
                self,
                float(options.get("traffic_rate_per_s", 50)),
                int(options.get("game_partitions", 8)),
                float(options.get("room_every_s", 20)),
            )
            self.manager.register_worker(self.traffic)
