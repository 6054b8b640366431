"""Match pairing: the atomic lobby (create + notify, or nothing), its rollback and the recovery of a
dead worker's pair against a real Redis; then the invariants under the real CLI while players join,
leave and miss notifications, children are SIGKILLed and the pool is reloaded."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import psutil
import pytest
import redis.asyncio as aioredis

from corral.entrypoints.pairing import (
    Outcome,
    Pairer,
    PairingOptions,
    PairingUnit,
    aheartbeat,
    ajoin,
    heartbeat,
    join,
)
from corral.entrypoints.pairing.lua import (
    LEASES,
    LOBBIES,
    LOBBY_PREFIX,
    OWNERS,
    STATS,
    inflight_key,
    lobby_key,
    lobby_pointer,
    presence_key,
    queue_key,
)
from tests.conftest import RedisServer
from tests.e2e.conftest import Corral, WaitTimeout, wait_until

QUEUE = queue_key("blitz")
HOST = "test-host"


@pytest.fixture
def client(redis_clean: RedisServer) -> Callable[[], aioredis.Redis]:
    """A factory of asyncio clients on the (emptied) session server, for use inside ``run``."""

    def make() -> aioredis.Redis:
        return aioredis.Redis(unix_socket_path=str(redis_clean.socket_path), socket_timeout=5)

    return make


async def pairer(redis: Any, name: str = "w0", **options: Any) -> Pairer:
    made = Pairer(redis, f"{HOST}:pairing:0:{name}", HOST, options=PairingOptions(**options))
    await made.renew()
    return made


async def queued(redis: Any, *players: str) -> None:
    """Connected players join, in this order (the first is at the front)."""
    for player in players:
        await aheartbeat(redis, player, 30)
        await ajoin(redis, "blitz", player, ticket_id=f"t-{player}")


async def front_to_back(redis: Any) -> list[str]:
    return [json.loads(raw)["player_id"] for raw in reversed(await redis.lrange(QUEUE, 0, -1))]


async def no_trace(redis: Any, *players: str) -> None:
    """No lobby key, no pointer, nothing indexed, nothing in flight."""
    assert [k async for k in redis.scan_iter(match="pairing:lobby:*")] == []
    assert [k async for k in redis.scan_iter(match="pairing:inflight:*")] == []
    assert await redis.zcard(LOBBIES) == 0
    for player in players:
        assert not await redis.exists(lobby_pointer(player))


async def counters(redis: Any) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in (await redis.hgetall(STATS)).items()}


class Inbox:
    """Every message published on ``player:*``, read up to a sentinel (no waiting on silence)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self.pubsub = redis.pubsub()

    async def start(self) -> Inbox:
        await self.pubsub.psubscribe("player:*")
        assert await self.pubsub.get_message(timeout=2.0) is not None  # the subscription is live
        return self

    async def drain(self) -> list[tuple[str, str, str]]:
        """(player, type, lobby id) of everything published so far."""
        await self.redis.publish("player:~end", "{}")
        got: list[tuple[str, str, str]] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            player = message["channel"].decode().removeprefix("player:")
            if player == "~end":
                return got
            data = json.loads(message["data"])
            got.append((player, data["type"], data["lobby_id"]))
        raise AssertionError("the sentinel message never arrived")

    async def close(self) -> None:
        await self.pubsub.aclose()


async def test_two_present_players_get_one_lobby_and_both_are_told(client: Any) -> None:
    redis = client()
    inbox = await Inbox(redis).start()
    worker = await pairer(redis)
    await queued(redis, "ann", "bob", "cid")
    outcome = await worker.next_pair(QUEUE)
    assert outcome is not None and outcome.kind == "lobby" and outcome.lobby_id
    lobby = {k.decode(): v.decode() for k, v in (await redis.hgetall(lobby_key(outcome.lobby_id))).items()}
    assert lobby["status"] == "ready" and json.loads(lobby["players"]) == ["ann", "bob"]
    assert json.loads(lobby["tickets"]) == ["t-ann", "t-bob"] and lobby["category"] == "blitz"
    assert await redis.get(lobby_pointer("ann")) == await redis.get(lobby_pointer("bob"))
    assert await redis.zscore(LOBBIES, outcome.lobby_id) == float(lobby["created_us"])
    assert not await redis.exists(inflight_key(worker.worker_id))
    assert await front_to_back(redis) == ["cid"]
    assert await inbox.drain() == [("ann", "lobby", outcome.lobby_id), ("bob", "lobby", outcome.lobby_id)]
    assert await worker.next_pair(QUEUE) is None  # one ticket left: nothing taken
    assert await front_to_back(redis) == ["cid"]
    assert (await counters(redis))["lobbies"] == 1
    await inbox.close()
    await redis.aclose()


@pytest.mark.parametrize("gone", [["ann"], ["bob"], ["ann", "bob"]])
async def test_a_gone_player_means_no_lobby_and_the_healthy_one_back_at_the_front(
    client: Any, gone: list[str]
) -> None:
    redis = client()
    inbox = await Inbox(redis).start()
    worker = await pairer(redis)
    await queued(redis, "ann", "bob", "cid")
    for player in gone:
        await redis.delete(f"presence:{player}")
    outcome = await worker.next_pair(QUEUE)
    expected = tuple("gone" if p in gone else "requeued" for p in ("ann", "bob"))
    assert outcome == Outcome("aborted", None, expected)
    await no_trace(redis, "ann", "bob")
    healthy = [p for p in ("ann", "bob") if p not in gone]
    assert await front_to_back(redis) == [*healthy, "cid"]  # priority: before those who waited less
    assert await inbox.drain() == []  # nobody was told anything
    figures = await counters(redis)
    assert figures["dropped_gone"] == len(gone) and figures.get("requeued", 0) == len(healthy)
    await inbox.close()
    await redis.aclose()


async def test_a_player_already_in_a_lobby_is_never_put_in_another(client: Any) -> None:
    redis = client()
    worker = await pairer(redis)
    await queued(redis, "ann", "bob")
    await redis.set(lobby_pointer("bob"), "earlier-lobby")
    outcome = await worker.next_pair(QUEUE)
    assert outcome == Outcome("aborted", None, ("requeued", "busy"))
    assert await redis.get(lobby_pointer("bob")) == b"earlier-lobby"
    assert not await redis.exists(lobby_pointer("ann"))
    assert await front_to_back(redis) == ["ann"]
    # the same player queued twice in two categories: paired once, the other ticket dropped
    await queued(redis, "bob2", "cid")
    await ajoin(redis, "rapid", "cid", ticket_id="t-cid-rapid")
    await ajoin(redis, "rapid", "dan", ticket_id="t-dan")
    await aheartbeat(redis, "dan", 30)
    first = await worker.next_pair(QUEUE)  # ann + bob2
    second = await worker.next_pair(QUEUE)  # nothing: cid alone
    third = await worker.next_pair(queue_key("rapid"))  # cid + dan
    assert first is not None and first.kind == "lobby" and second is None
    assert third is not None and third.kind == "lobby"
    await ajoin(redis, "rapid", "cid", ticket_id="t-cid-again")
    await ajoin(redis, "rapid", "eve", ticket_id="t-eve")
    await aheartbeat(redis, "eve", 30)
    fourth = await worker.next_pair(queue_key("rapid"))
    assert fourth == Outcome("aborted", None, ("busy", "requeued"))
    assert await redis.get(lobby_pointer("cid")) == third.lobby_id.encode()  # type: ignore[union-attr]
    await redis.aclose()


@pytest.mark.parametrize("failing", ["ann", "bob"])
async def test_a_failed_notification_rolls_the_lobby_back_and_requeues_both_at_the_front(
    client: Any, failing: str
) -> None:
    redis = client()
    inbox = await Inbox(redis).start()
    worker = await pairer(redis, notify_fail_players=[failing])
    await queued(redis, "ann", "bob", "cid")
    outcome = await worker.next_pair(QUEUE)
    assert outcome is not None and outcome.kind == "rolled_back" and outcome.lobby_id
    await no_trace(redis, "ann", "bob")
    assert await front_to_back(redis) == ["ann", "bob", "cid"]  # both back, in their order, first
    # whoever was told about the lobby is told it is cancelled: lobby + notification as one unit
    told = [("ann", "lobby", outcome.lobby_id)] if failing == "bob" else []
    cancelled = [(p, "lobby_cancelled", outcome.lobby_id) for p in ("ann", "bob")]
    assert await inbox.drain() == told + cancelled
    figures = await counters(redis)
    assert figures["rollbacks"] == 1 and figures["requeued"] == 2 and "lobbies" not in figures
    # once notifications work again the same two get their lobby
    healthy = await pairer(redis, name="w1")
    second = await healthy.next_pair(QUEUE)
    assert second is not None and second.kind == "lobby"
    assert sorted(await inbox.drain()) == [
        ("ann", "lobby", second.lobby_id),
        ("bob", "lobby", second.lobby_id),
    ]
    await inbox.close()
    await redis.aclose()


def test_the_failure_rate_option_fails_notifications_and_options_are_checked(client: Any, run: Any) -> None:
    async def body() -> None:
        redis = client()
        always = await pairer(redis, notify_fail_rate=1.0)
        await queued(redis, "ann", "bob")
        outcome = await always.next_pair(QUEUE)
        assert outcome is not None and outcome.kind == "rolled_back"
        assert await front_to_back(redis) == ["ann", "bob"]
        await redis.aclose()

    run(body())
    assert PairingOptions.from_options({"notify_fail_players": ["p*"], "lease_ttl_s": 3}).lease_ttl_s == 3
    for bad in (
        {"notify_fail_rate": 2},
        {"lease_ttl_s": 0},
        {"idle_sleep_s": "x"},
        {"notify_fail_players": "p"},
    ):
        with pytest.raises(ValueError, match="options"):
            PairingOptions.from_options(bad)


def hold_notifications(worker: Pairer) -> tuple[asyncio.Event, asyncio.Event]:
    """The worker's notifications wait (its lobby stays pending): returns (reached, release)."""
    reached, release = asyncio.Event(), asyncio.Event()
    original = worker.notify

    async def held(lobby_id: str, category: str, players: list[str]) -> None:
        reached.set()
        await release.wait()
        await original(lobby_id, category, players)

    worker.notify = held  # type: ignore[method-assign]
    return reached, release


def exited_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    return proc.pid


async def pending_lobby(redis: Any, worker: Pairer) -> str:
    lobby_id = await redis.hget(inflight_key(worker.worker_id), "lobby")
    assert lobby_id is not None, "no pending lobby"
    assert await redis.hget(lobby_key(lobby_id.decode()), "status") == b"pending"
    return str(lobby_id.decode())


async def test_a_dead_workers_pending_lobby_is_rolled_back_and_its_pair_requeued(client: Any) -> None:
    redis = client()
    inbox = await Inbox(redis).start()
    victim = await pairer(redis, "victim")
    reached, _ = hold_notifications(victim)
    await queued(redis, "ann", "bob", "cid")
    task = asyncio.create_task(victim.next_pair(QUEUE))
    await asyncio.wait_for(reached.wait(), 5)
    task.cancel()  # the victim stops dead between its lobby and its notifications
    with pytest.raises(asyncio.CancelledError):
        await task
    lobby_id = await pending_lobby(redis, victim)
    assert await redis.get(lobby_pointer("ann")) == lobby_id.encode()
    # the registration of a process that has exited, on this host, with a lease still running
    await redis.hset(
        OWNERS, victim.worker_id, json.dumps({"host": HOST, "pid": exited_pid(), "started": 1.0})
    )
    alive = await pairer(redis, "alive")  # this very process: alive, never recovered
    helper = await pairer(redis, "helper")
    assert await helper.sweep() == 1
    await no_trace(redis, "ann", "bob")
    assert await front_to_back(redis) == ["ann", "bob", "cid"]
    assert await redis.zscore(LEASES, victim.worker_id) is None
    assert not await redis.hexists(OWNERS, victim.worker_id)
    assert await redis.zscore(LEASES, alive.worker_id) is not None
    assert await inbox.drain() == [
        ("ann", "lobby_cancelled", lobby_id),
        ("bob", "lobby_cancelled", lobby_id),
    ]
    figures = await counters(redis)
    assert figures["recovered_lobbies"] == 1 and figures["recovered_tickets"] == 2
    assert await helper.sweep() == 0
    outcome = await helper.next_pair(QUEUE)
    assert outcome is not None and outcome.kind == "lobby"
    await inbox.close()
    await redis.aclose()


async def test_a_worker_whose_pair_was_recovered_is_fenced_off(client: Any) -> None:
    redis = client()
    inbox = await Inbox(redis).start()
    victim = await pairer(redis, "victim")
    reached, release = hold_notifications(victim)
    await queued(redis, "ann", "bob", "cid")
    task = asyncio.create_task(victim.next_pair(QUEUE))
    await asyncio.wait_for(reached.wait(), 5)
    lobby_id = await pending_lobby(redis, victim)
    helper = await pairer(redis, "helper")
    assert await helper.recover(victim.worker_id, "expired") == -1  # its lease still runs: untouched
    assert await pending_lobby(redis, victim) == lobby_id
    await redis.zadd(LEASES, {victim.worker_id: 0})  # a long pause: the lease ran out
    assert await helper.sweep() == 1
    release.set()  # the victim wakes up, notifies, and cannot commit
    assert await task == Outcome("lost", lobby_id)
    await no_trace(redis, "ann", "bob")
    assert await front_to_back(redis) == ["ann", "bob", "cid"]  # each ticket exactly once
    messages = await inbox.drain()
    assert messages[-2:] == [("ann", "lobby_cancelled", lobby_id), ("bob", "lobby_cancelled", lobby_id)]
    assert await victim.next_pair(QUEUE) is None  # no lease: nothing taken, the lease renewed
    outcome = await victim.next_pair(QUEUE)
    assert outcome is not None and outcome.kind == "lobby"
    await inbox.close()
    await redis.aclose()


async def test_expired_leases_are_swept_whatever_the_host(client: Any) -> None:
    redis = client()
    far = Pairer(redis, "elsewhere:pairing:0:far", "elsewhere", options=PairingOptions(lease_ttl_s=0.3))
    await far.renew()
    reached, _ = hold_notifications(far)
    await queued(redis, "ann", "bob")
    task = asyncio.create_task(far.next_pair(QUEUE))
    await asyncio.wait_for(reached.wait(), 5)
    task.cancel()  # another host goes silent with a pending lobby
    with pytest.raises(asyncio.CancelledError):
        await task
    helper = await pairer(redis, "helper")
    assert await helper.sweep() == 0  # its lease still runs, and its pid is not ours to check
    deadline = time.monotonic() + 5
    while not await helper.sweep():  # until its lease runs out
        assert time.monotonic() < deadline, "the expired lease was never swept"
        await asyncio.sleep(0.02)
    await no_trace(redis, "ann", "bob")
    assert await front_to_back(redis) == ["ann", "bob"]  # the oldest ticket frontmost
    assert await redis.zrange(LEASES, 0, -1) == [helper.worker_id.encode()]
    await redis.aclose()


async def test_invalid_and_duplicate_tickets_are_settled(client: Any) -> None:
    redis = client()
    worker = await pairer(redis)
    await redis.lpush(QUEUE, b"not json")
    await queued(redis, "ann")
    assert await worker.next_pair(QUEUE) == Outcome("settled", None, ("dead", "requeued"))
    assert await front_to_back(redis) == ["ann"]
    dead = json.loads(await redis.lindex("pairing:dead", 0))
    assert dead["ticket"] == "not json" and "JSON" in dead["error"] and dead["queue"] == QUEUE
    await ajoin(redis, "blitz", "ann", ticket_id="t-ann-again")  # one player queued twice
    assert await worker.next_pair(QUEUE) == Outcome("settled", None, ("requeued", "duplicate"))
    tickets = [json.loads(raw)["ticket_id"] for raw in await redis.lrange(QUEUE, 0, -1)]
    assert tickets == ["t-ann"]
    raw = await redis.lindex(QUEUE, 0)
    await redis.lpush(QUEUE, raw)  # the very same ticket pushed twice: one copy is kept
    assert await worker.next_pair(QUEUE) == Outcome("settled", None, ("requeued", "duplicate"))
    assert await redis.lrange(QUEUE, 0, -1) == [raw]
    assert not await redis.exists(inflight_key(worker.worker_id))
    figures = await counters(redis)
    assert figures["dead"] == 1 and figures["dropped_duplicate"] == 1  # identical bytes: one hash field
    await redis.aclose()


def test_the_unit_hands_its_pair_back_when_interrupted_or_cancelled(client: Any, run: Any) -> None:
    async def body() -> None:
        redis = client()
        worker = await pairer(redis)
        unit = PairingUnit(worker, worker.options)
        await queued(redis, "ann", "bob", "cid")

        async def gateway_down(lobby_id: str, category: str, players: list[str]) -> None:
            raise ConnectionError("push gateway down")

        worker.notify = gateway_down  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await unit.run()
        await pending_lobby(redis, worker)  # left as it was: the next round deals with it
        del worker.notify
        assert await unit.run() == 1  # hands the pair back (rolled back), then pairs it again
        lobbies = await redis.zrange(LOBBIES, 0, -1)
        assert len(lobbies) == 1 and await front_to_back(redis) == ["cid"]
        assert json.loads(await redis.hget(lobby_key(lobbies[0].decode()), "players")) == ["ann", "bob"]
        assert (await counters(redis))["recovered_lobbies"] == 1
        # a fast stop cancels the round: the pair in hand goes back at once
        await queued(redis, "dan")
        reached, _ = hold_notifications(worker)
        task = asyncio.create_task(unit.run())
        await asyncio.wait_for(reached.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await front_to_back(redis) == ["cid", "dan"]
        assert not await redis.exists(inflight_key(worker.worker_id))
        assert await redis.zcard(LOBBIES) == 1
        await worker.leave()
        assert await redis.zcard(LEASES) == 0 and await redis.hlen(OWNERS) == 0
        await redis.aclose()

    run(body())


def replay_once(worker: Pairer, script: str) -> None:
    """The next call of one of the worker's scripts runs twice, as when a reply is lost and the
    client sends the command again: the caller gets the second reply."""
    original = getattr(worker, script)

    async def twice(**kwargs: Any) -> Any:
        setattr(worker, script, original)
        await original(**kwargs)
        return await original(**kwargs)

    setattr(worker, script, twice)


async def test_every_step_is_safe_to_run_twice(client: Any) -> None:
    redis = client()
    inbox = await Inbox(redis).start()
    worker = await pairer(redis)
    await queued(redis, "ann", "bob", "cid", "dan")
    replay_once(worker, "_take")
    assert await worker.next_pair(QUEUE) is None  # the second take finds the first's pair: back
    assert await front_to_back(redis) == ["ann", "bob", "cid", "dan"]
    replay_once(worker, "_create")
    replay_once(worker, "_commit")
    outcome = await worker.next_pair(QUEUE)
    assert outcome is not None and outcome.kind == "lobby" and outcome.lobby_id
    assert await redis.hget(lobby_key(outcome.lobby_id), "status") == b"ready"
    assert await inbox.drain() == [("ann", "lobby", outcome.lobby_id), ("bob", "lobby", outcome.lobby_id)]
    worker.options = PairingOptions(notify_fail_players=("dan",))
    replay_once(worker, "_rollback")
    await worker.next_pair(QUEUE)
    assert [k async for k in redis.scan_iter(match="pairing:lobby:*")] == [
        lobby_key(outcome.lobby_id).encode()
    ]
    assert not await redis.exists(lobby_pointer("cid"), lobby_pointer("dan"), inflight_key(worker.worker_id))
    assert await front_to_back(redis) == ["cid", "dan"]  # each once
    assert await redis.zcard(LOBBIES) == 1
    figures = await counters(redis)
    assert figures["lobbies"] == 1 and figures["rollbacks"] == 1 and figures["requeued"] == 2
    await inbox.close()
    await redis.aclose()


# -- end to end: the real CLI, 3 children, kills and a reload ----------------------------------------

CATEGORIES = ("blitz", "rapid", "classic", "bullet")
WAVES = 12
KILL_WAVES = (2, 5, 10)
RELOAD_WAVE = 7
PRESENCE_TTL_S = 2.0
EXPIRE_MS = 150  # a leaver's last heartbeat


class Clients(threading.Thread):
    """The players' clients: connected players stay present (heartbeats with a TTL) until they
    leave, by deleting their presence or by letting it expire; when that happened is recorded on
    the Redis clock (microseconds) to compare with the lobbies' creation time."""

    def __init__(self, client: Any) -> None:
        super().__init__(name="presence", daemon=True)
        self.client = client
        self.connected: set[str] = set()
        self.gone_us: dict[str, int] = {}
        self.lock = threading.Lock()
        self.halt = threading.Event()

    def connect(self, players: list[str]) -> None:
        with self.lock:
            self.connected.update(players)
            self._beat(players)

    def leave(self, player: str, expire: bool) -> None:
        with self.lock, self.client.pipeline(transaction=True) as pipe:
            self.connected.discard(player)
            if expire:
                pipe.set(presence_key(player), b"1", px=EXPIRE_MS)
            else:
                pipe.delete(presence_key(player))
            pipe.time()
            seconds, micros = pipe.execute()[-1]
            # an expiring key is still there during its last millisecond: 2 ms of slack
            self.gone_us[player] = seconds * 1_000_000 + micros + ((EXPIRE_MS + 2) * 1000 if expire else 0)

    def run(self) -> None:
        while not self.halt.wait(0.3):
            with self.lock:
                self._beat(list(self.connected))

    def _beat(self, players: list[str]) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            for player in players:
                heartbeat(pipe, player, PRESENCE_TTL_S)
            pipe.execute()

    def stop(self) -> None:
        self.halt.set()
        self.join(5)


class Listener(threading.Thread):
    """Every message on ``player:*``: (player, type, lobby id)."""

    def __init__(self, client: Any) -> None:
        super().__init__(name="listener", daemon=True)
        self.client = client
        self.pubsub = client.pubsub()
        self.pubsub.psubscribe("player:*")
        assert self.pubsub.get_message(timeout=2.0) is not None  # subscribed before any traffic
        self.messages: list[tuple[str, str, str]] = []
        self.ended = threading.Event()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            message = self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is None:
                continue
            player = message["channel"].decode().removeprefix("player:")
            if player == "~end":
                self.ended.set()
                continue
            data = json.loads(message["data"])
            self.messages.append((player, data["type"], data["lobby_id"]))

    def drain(self) -> list[tuple[str, str, str]]:
        self.client.publish("player:~end", "{}")
        wait_until(self.ended.is_set, 10, what="the listener reading everything published")
        return list(self.messages)

    def stop(self) -> None:
        self.halt.set()
        self.join(5)
        self.pubsub.close()


def worker_of(client: Any, pid: int) -> str:
    for worker_id, owner in client.hgetall(OWNERS).items():
        if json.loads(owner)["pid"] == pid:
            return str(worker_id.decode())
    raise AssertionError(f"pid {pid} is not registered in {OWNERS}")


def unchanged(
    client: Any, key: str, window_s: float = 0.02
) -> Callable[[], tuple[dict[bytes, bytes]] | None]:
    """A predicate for ``wait_until``: the hash, once it has not changed for ``window_s``."""
    last: dict[bytes, bytes] = client.hgetall(key)
    since = time.monotonic()

    def check() -> tuple[dict[bytes, bytes]] | None:
        nonlocal last, since
        now = client.hgetall(key)
        if now != last:
            last, since = now, time.monotonic()
        return (now,) if time.monotonic() - since >= window_s else None

    return check


def victim(sup: Corral, client: Any, slot: int) -> tuple[int, str]:
    """The pid of ``slot``'s child and its in-flight hash."""
    pid = sup.slot(sup.wait_all_ready(3, timeout_s=20), slot)["pid"]
    return pid, inflight_key(worker_of(client, pid))


def kill_holding_a_pair(pid: int, key: str, client: Any) -> tuple[int, float]:
    """SIGKILL a child while it holds tickets in flight: stop it (SIGSTOP) when its in-flight hash
    ``key`` is not empty, wait until the hash stays unchanged for 20 ms, then kill it. Returns how
    many tickets it held (0 if the queues ran dry first) and how long until they were recovered."""
    deadline = time.monotonic() + 5
    held = 0
    while time.monotonic() < deadline:
        try:
            wait_until(lambda: client.hlen(key) > 0, 1, interval_s=0.001, what="a pair in flight")
        except WaitTimeout:
            break
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, 5, what="stopped")
        settled = wait_until(unchanged(client, key), 2, what="its in-flight hash unchanged for 20 ms")
        still = settled[0] if settled else {}
        if still:  # a command it sent before it stopped has landed by now
            held = sum(1 for field in still if field.startswith(b"t:"))
            break
        os.kill(pid, signal.SIGCONT)
    os.kill(pid, signal.SIGKILL)
    if not held:
        return held, 0.0
    killed_at = time.monotonic()  # the survivors' sweep sees the process gone: no lease to wait for
    wait_until(lambda: not client.exists(key), 5, interval_s=0.005, what="the dead child's pair recovered")
    return held, time.monotonic() - killed_at


def more_lobbies(client: Any, than: int) -> bool:
    return int(client.zcard(LOBBIES)) > than


def reload_all(sup: Corral) -> None:
    before = {s["pid"] for s in sup.wait_all_ready(3, timeout_s=20)["slots"]}
    sup.send(signal.SIGHUP)

    def reloaded() -> bool:
        status = sup.status_fast()
        slots = status["slots"] if status else []
        return len(slots) == 3 and all(s["state"] == "ready" and s["pid"] not in before for s in slots)

    wait_until(reloaded, 30, what="every slot reloaded")


@pytest.mark.e2e
def test_pairing_invariants_under_kills_reload_leavers_and_failed_notifications(
    corral: Callable[..., Corral], redis_clean: RedisServer
) -> None:
    started = time.monotonic()
    client = redis_clean.client()
    rng = random.Random(7)
    cast = Cast.make(rng)
    everyone = cast.regulars + cast.leavers + cast.ghosts
    rng.shuffle(everyone)
    sup = corral(
        worker="corral.entrypoints.pairing:PairingWorker",
        workers=3,
        pool={"name": "pairing"},
        restart={"backoff_initial_s": 0.1, "max_restarts": 10},
        # a pool without [[queues]]/[[streams]] is not handed [redis] url: options.redis_url is used
        redis={"url": redis_clean.url},
        options={
            "redis_url": redis_clean.url,
            "notify_fail_rate": 0.1,
            "notify_delay_s": 0.003,
            "lease_ttl_s": 3,
            "sweep_interval_s": 0.2,
            "refresh_s": 0.2,
            "idle_sleep_s": 0.01,
        },
    )
    clients, listener = Clients(client), Listener(redis_clean.client())
    clients.start()
    listener.start()
    kills: list[tuple[int, float]] = []
    try:
        sup.start()
        sup.wait_all_ready(3, timeout_s=20)
        leaving: list[str] = []
        for wave in range(WAVES):
            players = everyone[wave::WAVES]
            clients.connect([p for p in players if not p.startswith("g")])
            target = victim(sup, client, len(kills) % 3) if wave in KILL_WAVES else None
            lobbies_before = client.zcard(LOBBIES)
            with client.pipeline(transaction=False) as pipe:
                for player in players:
                    join(pipe, rng.choice(CATEGORIES), player, ticket_id=f"{player}-1")
                    if player in cast.twice:
                        join(pipe, rng.choice(CATEGORIES), player, ticket_id=f"{player}-2")
                pipe.execute()
            if target is not None:
                kills.append(kill_holding_a_pair(*target, client))
            for index, player in enumerate(leaving):  # last wave's leavers go now: some were paired
                clients.leave(player, expire=index % 2 == 0)
            leaving = [p for p in players if p.startswith("l")]
            if wave == RELOAD_WAVE:
                reload_all(sup)
            wait_until(partial(more_lobbies, client, lobbies_before), 15, what="pairing making progress")
        for index, player in enumerate(leaving):
            clients.leave(player, expire=index % 2 == 0)
        sup.wait_all_ready(3, timeout_s=20)

        def settled() -> bool:  # fewer than two tickets per queue and nothing in flight: final
            queues_done = all(client.llen(queue_key(c)) <= 1 for c in CATEGORIES)
            return queues_done and not list(client.scan_iter(match="pairing:inflight:*"))

        wait_until(settled, 30, what="every pair settled")
        check_invariants(client, listener.drain(), clients, cast)
        figures = {k.decode(): int(v) for k, v in client.hgetall(STATS).items()}
        assert figures["rollbacks"] > 0 and figures["dropped_gone"] > 0
        held = [tickets for tickets, _ in kills]
        assert sum(held) > 0, (
            f"no kill caught a worker holding tickets: {kills}"
        )  # else what follows is vacuous
        assert figures["recovered_tickets"] >= sum(held)
        latency_ms = max(seconds for _, seconds in kills) * 1000
        assert latency_ms < 3000  # well within the 3 s lease: the dead process was seen at once
        sup.send(signal.SIGTERM)
        assert sup.wait_exit(30) == 0
        assert client.zcard(LEASES) == 0 and client.hlen(OWNERS) == 0  # every worker left or was recovered
        lobbies = client.zcard(LOBBIES)
        queued = sum(client.llen(queue_key(c)) for c in CATEGORIES)
        print(
            f"\npairing e2e: {len(everyone)} players ({len(cast.regulars)} staying, {len(cast.leavers)} "
            f"leaving, {len(cast.ghosts)} never connected, {len(cast.twice)} queued twice), "
            f"{len(everyone) + len(cast.twice)} tickets -> {lobbies} lobbies, {queued} tickets left queued; "
            f"requeued {figures.get('requeued', 0)}, rollbacks {figures['rollbacks']} (notification failed) "
            f"+ {figures.get('recovered_lobbies', 0)} (pending lobby of a dead worker), dropped: "
            f"{figures['dropped_gone']} gone, {figures.get('dropped_busy', 0)} already in a lobby; "
            f"{len(kills)} SIGKILLs holding {held} tickets, {figures.get('recovered_tickets', 0)} tickets "
            f"recovered (at most {latency_ms:.0f} ms after the kill); 1 reload; "
            f"{time.monotonic() - started:.1f}s"
        )
    finally:
        clients.stop()
        listener.stop()


@dataclass(frozen=True)
class Cast:
    """Who plays: staying players (some queued twice), leavers, and players never connected."""

    regulars: list[str]
    leavers: list[str]
    ghosts: list[str]
    twice: set[str]

    @classmethod
    def make(cls, rng: random.Random) -> Cast:
        regulars = [f"r{i:03d}" for i in range(360)]
        leavers = [f"l{i:02d}" for i in range(60)]
        ghosts = [f"g{i:02d}" for i in range(30)]
        return cls(regulars, leavers, ghosts, set(rng.sample(regulars, 30)))


def check_invariants(client: Any, messages: list[tuple[str, str, str]], clients: Clients, cast: Cast) -> None:
    regulars, leavers, ghosts, twice = cast.regulars, cast.leavers, cast.ghosts, cast.twice
    committed = {raw.decode() for raw in client.zrange(LOBBIES, 0, -1)}
    lobbies = {}
    for lobby_id in committed:
        lobbies[lobby_id] = {k.decode(): v.decode() for k, v in client.hgetall(lobby_key(lobby_id)).items()}
    # rolled back (and pending) lobbies leave no trace: only committed ones exist, all ready
    existing = {k.decode().removeprefix(LOBBY_PREFIX) for k in client.scan_iter(match=f"{LOBBY_PREFIX}*")}
    assert existing == committed
    assert all(lobby["status"] == "ready" for lobby in lobbies.values())
    # no player in two lobbies, and every pointer is exactly that lobby
    member_of: dict[str, list[str]] = defaultdict(list)
    for lobby_id, lobby in lobbies.items():
        for player in json.loads(lobby["players"]):
            member_of[player].append(lobby_id)
    assert {p: ids for p, ids in member_of.items() if len(ids) > 1} == {}
    pointers = {
        k.decode().removeprefix("player:").removesuffix(":lobby"): client.get(k).decode()
        for k in client.scan_iter(match="player:*:lobby")
    }
    assert pointers == {player: ids[0] for player, ids in member_of.items()}
    # every ticket is in one lobby, or still queued, never both nor twice
    queued = [json.loads(raw) for c in CATEGORIES for raw in client.lrange(queue_key(c), 0, -1)]
    in_lobbies = [t for lobby in lobbies.values() for t in json.loads(lobby["tickets"])]
    every_ticket = in_lobbies + [t["ticket_id"] for t in queued]
    assert len(every_ticket) == len(set(every_ticket))
    # whoever stayed connected is in exactly one lobby or still queued: never lost
    queued_players = {t["player_id"] for t in queued}
    for player in regulars:
        if player in twice:
            assert player in member_of or player in queued_players, player
        else:
            assert (player in member_of) != (player in queued_players), player
    # no lobby with a disconnected player: never connected, or gone before the lobby was created
    assert not set(ghosts) & set(member_of)
    for player in set(leavers) & set(member_of):
        assert int(lobbies[member_of[player][0]]["created_us"]) <= clients.gone_us[player], player
    # notifications: both players of a lobby were told; anyone told of a lobby that was rolled back
    # was told it is cancelled
    told = {(p, lobby_id) for p, kind, lobby_id in messages if kind == "lobby"}
    cancelled = {(p, lobby_id) for p, kind, lobby_id in messages if kind == "lobby_cancelled"}
    for lobby_id, lobby in lobbies.items():
        for player in json.loads(lobby["players"]):
            assert (player, lobby_id) in told and (player, lobby_id) not in cancelled
    assert {(p, lobby_id) for p, lobby_id in told if lobby_id not in committed} <= cancelled


@pytest.mark.e2e
def test_the_pairing_app_refuses_a_cluster_and_says_why(
    corral: Callable[..., Corral], valkey_cluster: Any
) -> None:
    """Its scripts move several players' keys at once, which a cluster cannot do across slots."""
    sup = corral(
        worker="corral.entrypoints.pairing:PairingWorker",
        workers=1,
        pool={"name": "pairing"},
        restart={"backoff_initial_s": 0.1, "max_restarts": 2},
        redis={"url": valkey_cluster.url},
        options={"redis_url": valkey_cluster.url},
    )
    sup.start()
    wait_until(lambda: "cannot run on a Redis Cluster" in sup.log("0"), timeout_s=20, what="the refusal")
    assert "several players" in sup.log("0")
    sup.send(signal.SIGTERM)
    sup.wait_exit(30)
