"""Trivia rooms: the fenced progress scripts against a real Redis, then rooms under the real CLI with a
SIGKILLed child and a rolling reload — every question shown exactly once, in order, per room."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from corral.entrypoints.trivia.app import (
    QUEUE,
    Outcome,
    Room,
    RoomListener,
    Timings,
    TriviaWorker,
    astart_room,
    parse_job,
    play,
    room_key,
    run_room,
    start_room,
)
from corral.workers.keys import Keys
from corral.workers.messages import HandlerContext, Reject, Requeue, decode_job
from tests.conftest import RedisServer
from tests.e2e.conftest import Corral, wait_until
from tests.servers import async_client

FAST = Timings(countdown_s=0.05, question_s=0.2, lease_s=0.6)
LONG_LEASE = Timings(countdown_s=0.05, question_s=0.2, lease_s=3.0)


class Log:
    def info(self, *_args: Any) -> None:
        pass


def never() -> asyncio.Event:
    """A worker's ``stopping`` event that is never set."""
    return asyncio.Event()


def aclient(server: Any) -> Any:
    """An asyncio client of a standalone server, a cluster or a Sentinel-watched primary."""
    return async_client(server.url)


def check_screen(screen: RoomListener, room_id: str, questions: int) -> list[dict[str, Any]]:
    """What one room's screen showed: every question once, in order, countdowns only within the
    current question and going down, then one ``completed`` last."""
    events = screen.events(room_id)
    assert screen.questions(room_id) == list(range(questions)), events
    assert [e["type"] for e in events].count("completed") == 1 and events[-1]["type"] == "completed"
    current, last_remaining = -1, float("inf")
    for event in events:
        if event["type"] == "question":
            current, last_remaining = event["question"], float("inf")
        elif event["type"] == "countdown":
            assert event["question"] == current, f"countdown of another question: {event} in {events}"
            assert 0 < event["remaining_s"] < last_remaining, events
            last_remaining = event["remaining_s"]
    return events


def wait_events(screen: RoomListener, room_id: str, count: int, kind: str = "question") -> None:
    wait_until(
        lambda: len([e for e in screen.events(room_id) if e["type"] == kind]) >= count,
        timeout_s=10,
        what=f"{count} {kind} events of {room_id}",
    )


# -- the progress scripts, against the real server ---------------------------------------------------


def test_a_room_plays_every_question_once_then_completes(redis_any: Any, run: Any) -> None:
    """On each topology: a room's scripts touch its one key, its events go out by PUBLISH."""
    with RoomListener(redis_any.client(), ["r1"]) as screen:
        outcome = run(play(Room(aclient(redis_any), "r1", FAST), "w1", 4, never(), Log()))
        assert outcome is Outcome.COMPLETED
        wait_events(screen, "r1", 1, "completed")
        events = check_screen(screen, "r1", 4)
    assert {e["worker"] for e in events if e["type"] == "question"} == {"w1"}
    assert sum(e["type"] == "countdown" for e in events) >= 4  # most of the 3 per question
    state = redis_any.client().hgetall(room_key("r1"))
    assert state[b"status"] == b"completed" and state[b"resumes"] == b"0" and state[b"owner"] == b""
    # a job of a completed room (a duplicate, a redelivery) publishes nothing more
    assert run(play(Room(aclient(redis_any), "r1", FAST), "w2", 4, never(), Log())) is Outcome.COMPLETED


def test_a_stopping_worker_hands_the_room_back_and_the_next_resumes_it_at_once(
    redis_clean: RedisServer, run: Any
) -> None:
    async def body(screen: RoomListener) -> float:
        stopping = asyncio.Event()
        first = asyncio.create_task(
            play(Room(aclient(redis_clean), "r2", LONG_LEASE), "w1", 5, stopping, Log())
        )
        await asyncio.to_thread(wait_events, screen, "r2", 2)
        stopping.set()
        assert await first is Outcome.HANDED_BACK
        state = redis_clean.client().hgetall(room_key("r2"))
        assert state[b"owner"] == b"" and state[b"current"] == b"1"
        began = time.monotonic()
        second = play(Room(aclient(redis_clean), "r2", LONG_LEASE), "w2", 5, never(), Log())
        assert await second is Outcome.COMPLETED
        return time.monotonic() - began

    with RoomListener(redis_clean.client(), ["r2"]) as screen:
        took_s = run(body(screen))
        wait_events(screen, "r2", 1, "completed")
        events = check_screen(screen, "r2", 5)
    assert [e["worker"] for e in events if e["type"] == "question"] == ["w1", "w1", "w2", "w2", "w2"]
    assert took_s < LONG_LEASE.lease_s  # resumed at once (~0.8 s of questions): no lease waited out
    assert redis_clean.client().hget(room_key("r2"), "resumes") == b"1"


def test_a_dead_owners_room_resumes_after_its_lease_and_the_old_owner_is_fenced(
    redis_clean: RedisServer, run: Any
) -> None:
    async def body() -> None:
        dead = Room(aclient(redis_clean), "r3", FAST)
        claim = await dead.claim("w1", 4)
        assert (claim.kind, claim.detail) == ("claimed", -1)
        assert (await dead.step(claim.value))[0] == "question"  # question 0, then w1 "dies"
        began = time.monotonic()
        assert (
            await play(Room(aclient(redis_clean), "r3", FAST), "w2", 4, never(), Log()) is Outcome.COMPLETED
        )
        assert time.monotonic() - began >= FAST.lease_s * 0.5  # it waited for w1's lease to run out
        assert (await dead.step(claim.value))[0] == "fenced"  # w1 wakes up: publishes nothing
        assert not await dead.release(claim.value)

    with RoomListener(redis_clean.client(), ["r3"]) as screen:
        run(body())
        wait_events(screen, "r3", 1, "completed")
        events = check_screen(screen, "r3", 4)
    assert [e["worker"] for e in events if e["type"] == "question"] == ["w1", "w2", "w2", "w2"]


def test_a_duplicate_job_of_a_live_room_is_dropped_and_claims_race_safely(
    redis_clean: RedisServer, run: Any
) -> None:
    async def body() -> list[Any]:
        owner = asyncio.create_task(play(Room(aclient(redis_clean), "r4", FAST), "w1", 6, never(), Log()))
        await asyncio.sleep(0)  # w1 claims first
        await asyncio.to_thread(wait_events, screen, "r4", 1)
        duplicate = await play(Room(aclient(redis_clean), "r4", FAST), "w2", 6, never(), Log())
        # ten workers claiming a fresh room at once: exactly one gets it
        claims = await asyncio.gather(
            *(Room(aclient(redis_clean), "r5", FAST).claim(f"c{i}", 3) for i in range(10))
        )
        return [duplicate, await owner, sorted(c.kind for c in claims)]

    with RoomListener(redis_clean.client(), ["r4"]) as screen:
        duplicate, finished, kinds = run(body())
        wait_events(screen, "r4", 1, "completed")
        events = check_screen(screen, "r4", 6)
    assert (duplicate, finished) == (Outcome.DUPLICATE, Outcome.COMPLETED)
    assert {e["worker"] for e in events if e["type"] == "question"} == {"w1"}
    assert kinds == ["busy"] * 9 + ["claimed"]


def test_a_cancelled_room_frees_its_lease_and_the_handler_requeues_on_stop(
    redis_clean: RedisServer, run: Any
) -> None:
    async def body(screen: RoomListener) -> None:
        task = asyncio.create_task(play(Room(aclient(redis_clean), "r6", FAST), "w1", 5, never(), Log()))
        await asyncio.to_thread(wait_events, screen, "r6", 1)
        task.cancel()  # a fast stop
        with pytest.raises(asyncio.CancelledError):
            await task
        assert redis_clean.client().hget(room_key("r6"), "owner") == b""
        # the queue handler: a worker that stops mid-room hands its job back to the front
        worker = TriviaWorker()
        worker.timings = FAST
        ctx = HandlerContext(redis=aclient(redis_clean), worker_id="w2", log=Log())
        ctx.worker = worker
        job = decode_job(b'{"room_id": "r6", "questions": 5}', QUEUE)
        handler = asyncio.create_task(run_room(job, ctx))
        await asyncio.to_thread(
            wait_until, lambda: "w2" in {e.get("worker") for e in screen.events("r6")}, 10
        )
        assert worker.rooms.playing == "r6"
        worker.stopping.set()
        with pytest.raises(Requeue) as requeue:
            await handler
        assert requeue.value.front and worker.rooms.outcomes == {"handed back": 1}
        state = redis_clean.client().hgetall(room_key("r6"))
        assert state[b"status"] == b"running" and state[b"owner"] == b"" and state[b"resumes"] == b"1"

    with RoomListener(redis_clean.client(), ["r6"]) as screen:
        run(body(screen))
    assert screen.questions("r6") == list(range(len(screen.questions("r6"))))  # nothing repeated


def test_rooms_start_once_and_bad_input_is_rejected(redis_clean: RedisServer, run: Any) -> None:
    client = redis_clean.client()
    assert start_room(client, "r7", 3) is True
    assert start_room(client, "r7", 3) is False  # the room exists: not queued twice
    assert run(astart_room(aclient(redis_clean), "r8", 2)) is True
    assert run(astart_room(aclient(redis_clean), "r8", 2)) is False
    assert client.llen(QUEUE) == 2
    assert client.hget(room_key("r7"), "status") == b"pending"
    for bad in ([1], {"room_id": "", "questions": 3}, {"room_id": "x", "questions": 0}, {"room_id": "x"}):
        with pytest.raises(Reject):
            parse_job(bad)
    with pytest.raises(ValueError):
        Timings.from_options({"countdown_s": 3, "question_s": 2})
    assert Timings.from_options({"question_s": 0.5, "countdown_s": 0.1}) == Timings(0.1, 0.5, 5.0)


# -- under the real CLI ----------------------------------------------------------------------------

CONFIG = """
[pool]
name = "trivia"
workers = 3
worker = "corral.entrypoints.trivia:TriviaWorker"
ready_timeout_s = 20
graceful_timeout_s = 5
kill_timeout_s = 2
[paths]
state_dir = "run"
log_dir = "logs"
[health]
heartbeat_interval_s = 0.2
heartbeat_timeout_s = 1.0
monitor_interval_s = 0.2
[restart]
backoff_initial_s = 0.2
[redis]
url = "{url}"
member_ttl_s = 2.0
[[queues]]
names = ["trivia:rooms"]
handler = "corral.entrypoints.trivia:run_room"
batch_size = 1
block_s = 0.2
[options]
countdown_s = 0.1
question_s = 0.5
lease_s = 1.0
"""
ROOMS = [f"room-{i}" for i in range(5)]
QUESTIONS = 10


@pytest.mark.e2e
def test_rooms_survive_a_killed_child_and_a_rolling_reload(
    corral: Callable[..., Corral], redis_clean: RedisServer
) -> None:
    sup = corral(workers=3)
    sup.config.write_text(CONFIG.format(url=redis_clean.url))
    sup.start()
    sup.wait_all_ready(3, timeout_s=20)
    client = redis_clean.client()

    def room(room_id: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in client.hgetall(room_key(room_id)).items()}

    def pid_of(worker_id: str) -> int:
        slot = int(worker_id.rsplit(":", 2)[1])
        return int(sup.slot(sup.status(), slot)["pid"])

    began = time.monotonic()
    with RoomListener(client, ROOMS) as screen:
        for room_id in ROOMS:
            assert start_room(client, room_id, QUESTIONS)

        # 3 workers, batch_size 1: three rooms play at once, two wait in the queue
        def three_playing() -> list[str]:  # 3 workers, batch_size 1: three rooms at once, two wait
            running = [r for r in ROOMS if room(r)["status"] == "running"]
            at_two = sorted((int(room(r)["current"]), r) for r in running if int(room(r)["current"]) >= 2)
            return [at_two[-1][1]] if len(running) == 3 and at_two else []

        [victim_room] = wait_until(three_playing, timeout_s=10, what="3 rooms playing, one at question 2")
        assert client.llen(QUEUE) == 2
        victim = room(victim_room)["owner"]
        victim_pid = pid_of(victim)
        killed_time = time.monotonic()
        os.kill(victim_pid, signal.SIGKILL)

        def resumed() -> bool:
            return any(e["type"] == "question" and e["worker"] != victim for e in screen.events(victim_room))

        wait_until(resumed, timeout_s=10, what=f"{victim_room} resumed after the kill")
        # heartbeats and the member set's leases are renewed while rooms play (units run side by side)
        members = Keys().members("trivia")
        before = {m: client.zscore(members, m) for m in client.zrange(members, 0, -1)}

        def renewed() -> list[bytes]:
            alive = [m for m in before if m != victim.encode()]
            done = [m for m in alive if (client.zscore(members, m) or 0) > (before[m] or 0)]
            return done if len(done) == len(alive) else []

        renewing = wait_until(renewed, timeout_s=5, what="member leases renewed while rooms play")
        sup.wait_all_ready(3, timeout_s=20)
        old_pids = {s["pid"] for s in sup.status()["slots"]}
        sup.send(signal.SIGHUP)

        def reloaded() -> bool:
            status = sup.status_fast()
            slots: list[dict[str, Any]] = status["slots"] if status else []
            return bool(slots) and all(s["state"] == "ready" and s["pid"] not in old_pids for s in slots)

        wait_until(reloaded, timeout_s=30, what="the rolling reload")
        wait_until(lambda: all(screen.completed(r) for r in ROOMS), timeout_s=40, what="every room completed")
        took_s = time.monotonic() - began

    states = {r: room(r) for r in ROOMS}
    questions_seen = 0
    for room_id in ROOMS:
        check_screen(screen, room_id, QUESTIONS)
        questions_seen += len(screen.questions(room_id))
        assert states[room_id]["status"] == "completed"
    # the killed room went on from where it was, on another worker: not restarted, nothing skipped
    shown_by = [e["worker"] for e in screen.events(victim_room) if e["type"] == "question"]
    killed_at = max(i for i, worker in enumerate(shown_by) if worker == victim)  # its last question
    assert killed_at >= 2
    assert shown_by[: killed_at + 1] == [victim] * (killed_at + 1) and victim not in shown_by[killed_at + 1 :]
    assert int(states[victim_room]["resumes"]) >= 1
    resumes = sum(int(s["resumes"]) for s in states.values())
    logs = "".join(sup.log(str(slot)) for slot in range(3))
    handed_back = len(re.findall(r"room \S+: handed back", logs))
    assert handed_back >= 1, "the reload stopped children mid-room: they hand their rooms back"
    assert resumes >= 1 + handed_back
    assert "no heartbeat answer" not in sup.log()
    for pid in old_pids:  # the reload's old children honoured the stop at once: exit 0, no SIGTERM
        assert re.search(rf"pid {pid}: stopping -> stopped \(exit 0\b", sup.log()), sup.log()
    pause_after_kill_s = next(t for t, _ in screen.timeline(victim_room) if t > killed_time) - killed_time
    longest_pause_s = max(
        b - a
        for r in ROOMS
        if r != victim_room
        for (a, _), (b, _) in zip(screen.timeline(r), screen.timeline(r)[1:], strict=False)
    )
    assert len(renewing) >= 2  # the membership unit runs beside the rooms in each child
    assert client.llen(QUEUE) == 0
    print(
        f"\ntrivia e2e: {len(ROOMS)} rooms x {QUESTIONS} questions = {questions_seen} questions shown once each, "
        f"1 child SIGKILLed ({victim_room} at question {killed_at}, its screen paused {pause_after_kill_s:.2f}s, "
        f"lease 1s), 1 rolling reload ({handed_back} rooms handed back; longest pause on another room's "
        f"screen {longest_pause_s:.2f}s), {resumes} resumes in all, {took_s:.1f}s"
    )
    sup.send(signal.SIGTERM)
    assert sup.wait_exit(30) == 0
