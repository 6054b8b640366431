"""The matchmaker: transitions and curation against a real Redis, then the invariant "no game in
two sets at once" under the real CLI with worker kills and a rolling reload."""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Callable
from typing import Any

import pytest

from corral.entrypoints.matchmaker.app import (
    SETS,
    Expiry,
    GameCuration,
    GameEvent,
    GameEventWorker,
    game_keys,
    send_event,
)
from corral.workers.messages import Reject
from tests.conftest import RedisServer
from tests.e2e.conftest import Corral, wait_until
from tests.servers import async_client


def where(client: Any, product: str, game: str) -> list[str]:
    keys = game_keys(product, game)
    return [name for name, key in zip(SETS, keys, strict=False) if client.zscore(key, game) is not None]


async def test_events_move_a_game_through_the_sets(redis_any: Any) -> None:
    """Every script of the app, on each topology (its keys share one hash tag per product)."""

    client = async_client(redis_any.url)
    events = GameEventWorker(client)
    sync = redis_any.client()
    for state, expected in [
        ("created", ["pending"]),
        ("creator_joined", ["lobby"]),
        ("all_players_joined", ["active"]),
        ("in_progress", ["active"]),
    ]:
        await events.apply(GameEvent("state_change", "chess", "g1", new_state=state), now=100.0)
        assert where(sync, "chess", "g1") == expected
        assert sync.hget(game_keys("chess", "g1")[3], "state") == state.encode()
    await events.apply(GameEvent("player_disconnect", "chess", "g1", player_id="p2"), now=101.0)
    assert where(sync, "chess", "g1") == ["lobby"]  # back to the lobby so someone can join
    await events.apply(GameEvent("player_disconnect", "chess", "g1", player_id="p2"), now=102.0)
    assert where(sync, "chess", "g1") == ["lobby"]  # not active: nothing to do
    await events.apply(GameEvent("state_change", "chess", "g1", new_state="ended"), now=103.0)
    assert where(sync, "chess", "g1") == []
    assert 0 < sync.ttl(game_keys("chess", "g1")[3]) <= 3600
    await events.apply(GameEvent("state_change", "chess", "g2", new_state="created"), now=104.0)
    await events.apply(GameEvent("game_removed", "chess", "g2"), now=105.0)
    assert where(sync, "chess", "g2") == [] and not sync.exists(game_keys("chess", "g2")[3])
    assert events.events == {"state_change": 6, "player_disconnect": 2, "game_removed": 1}
    await client.aclose()


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"type": "explode", "product_id": "p", "game_id": "g"}, "unknown event type"),
        ({"type": "state_change", "product_id": "p", "game_id": "g"}, "without new_state"),
        ({"type": "state_change", "product_id": "p", "game_id": "g", "new_state": "flying"}, "unknown state"),
        ({"type": "player_disconnect", "game_id": "g", "player_id": "x"}, "without product_id"),
        ({}, "unknown event type ''"),
    ],
)
def test_malformed_events_are_rejected(fields: dict[str, str], reason: str) -> None:
    with pytest.raises(Reject, match=reason):
        GameEvent.parse(fields)


def test_curation_purges_expired_games_oldest_first_in_batches(redis_any: Any, run: Any) -> None:
    async def body() -> None:
        client = async_client(redis_any.url)
        events = GameEventWorker(client)
        for i in range(5):  # pending games created at t=0..4
            await events.apply(GameEvent("state_change", "go", f"p{i}", new_state="created"), now=float(i))
        await events.apply(GameEvent("state_change", "go", "l1", new_state="creator_joined"), now=0.0)
        curation = GameCuration(client, Expiry(pending_s=60, lobby_s=600, active_s=7200), batch=2)
        assert await curation.run(now=62.5) == 2  # expired: p0, p1, p2 (older than 2.5); batch of 2
        assert await curation.run(now=62.5) == 1  # the next batch: p2
        assert await curation.run(now=62.5) == 0
        sync = redis_any.client()
        assert [m.decode() for m in sync.zrange(game_keys("go", "")[0], 0, -1)] == ["p3", "p4"]
        assert where(sync, "go", "l1") == ["lobby"]  # 62.5 s in the lobby is not 600
        assert curation.purged == {"pending": 3}
        assert curation.sizes["go"] == {"pending": 2, "lobby": 1, "active": 0}
        assert await curation.run(now=700.0) == 3  # p3, p4 and the lobby game
        assert curation.sizes["go"] == {"pending": 0, "lobby": 0, "active": 0}
        await client.aclose()

    run(body())


CONFIG = """
[pool]
name = "mm"
workers = 3
worker = "corral.entrypoints.matchmaker:MatchmakerWorker"
graceful_timeout_s = 5
[paths]
state_dir = "run"
log_dir = "logs"
[redis]
url = "{url}"
[[streams]]
stream = "mm:game-events"
partitions = 8
handler = "corral.entrypoints.matchmaker:handle_event"
block_ms = 100
[[schedules]]
name = "curate-games"
every_s = 0.2
handler = "corral.entrypoints.matchmaker:curate"
[options]
expiry_pending_s = 3600
"""
LIFECYCLE = ["created", "creator_joined", "all_players_joined", "in_progress", "ended"]


@pytest.mark.e2e
def test_no_game_in_two_sets_under_kills_and_reload(
    redis_clean: RedisServer, corral: Callable[..., Corral]
) -> None:
    sup = corral(worker="corral.entrypoints.matchmaker:MatchmakerWorker", workers=3)
    sup.config.write_text(CONFIG.format(url=redis_clean.url))
    sup.start()
    sup.wait_all_ready(3, timeout_s=20)
    client = redis_clean.client()
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    games = [f"g{i}" for i in range(300)]
    expected: dict[str, str] = {}  # game -> the set its last event puts it in ("" for none)
    violations: list[str] = []
    stop = threading.Event()

    def watch() -> None:  # samples the invariant while the events flow
        watcher = redis_clean.client()
        while not stop.is_set():
            pipe = watcher.pipeline(transaction=True)  # one consistent snapshot of the three sets
            for key in game_keys("chess", "")[:3]:
                pipe.zrange(key, 0, -1)
            members = [set(m) for m in pipe.execute()]
            both = (members[0] & members[1]) | (members[0] & members[2]) | (members[1] & members[2])
            if both:
                violations.append(f"in two sets: {sorted(both)[:5]}")
            stop.wait(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    kills = 0
    progress = dict.fromkeys(games, 0)
    try:
        for step in range(1500):
            game = rng.choice(games)
            kind = rng.random()
            if kind < 0.05:
                event = GameEvent("game_removed", "chess", game)
                expected[game] = ""
            elif kind < 0.12 and expected.get(game) == "active":
                event = GameEvent("player_disconnect", "chess", game, player_id="p2")
                expected[game] = "lobby"
                progress[game] = 2
            else:
                state = LIFECYCLE[progress[game] % len(LIFECYCLE)]
                progress[game] += 1
                event = GameEvent("state_change", "chess", game, new_state=state)
                expected[game] = {"created": "pending", "creator_joined": "lobby"}.get(state, "active")
                if state == "ended":
                    expected[game] = ""
            send_event(client, event, partitions=8)
            if step in (400, 900):
                victim = rng.choice(sup.status()["slots"])["pid"]
                os.kill(victim, signal.SIGKILL)
                kills += 1
            if step == 650:
                before_reload = {row["pid"] for row in sup.status()["slots"]}
                sup.send(signal.SIGHUP)
        send_event(client, GameEvent("state_change", "chess", "bogus", new_state="exploded"), partitions=8)

        def settled() -> bool:
            return all(where(client, "chess", g) == ([want] if want else []) for g, want in expected.items())

        wait_until(settled, timeout_s=30, what="every game in the set its last event says")
        # the faults happened: the reload replaced every child (and the kills hit children)
        wait_until(lambda: "reload finished" in sup.log(), 30, what="the reload finished")
        after_reload = {row["pid"] for row in sup.status()["slots"]}
        assert not before_reload & after_reload, "the reload replaced no child"
        # and nothing is left pending on any shard: every handover drained the previous owner
        pending = {s: client.xpending(f"mm:game-events:{s}", "mm")["pending"] for s in range(8)}
        assert not any(pending.values()), pending
    finally:
        stop.set()
        watcher.join(timeout=5)
    assert violations == []
    # a partitioned stream's dead letters are kept per shard (in the shard's cluster slot)
    dead = [e for s in range(8) for e in client.xrange(f"corral:{{mm:game-events:{s}}}:dead")]
    assert len(dead) == 1 and b"unknown state" in dead[0][1][b"_error"]
    counts = {name: client.zcard(key) for name, key in zip(SETS, game_keys("chess", ""), strict=False)}
    print(
        f"\nmatchmaker: {len(expected)} games, 1500 events, {kills} kills, 1 reload, sets {counts}, "
        f"violations {len(violations)}"
    )
    sup.send(signal.SIGTERM)
    assert sup.wait_exit(30) == 0
