"""Trivia rooms: the room's steps on a fake clock, then rooms under the real CLI with a SIGKILLed
child and a rolling reload — every question shown exactly once, in order, per room, each room going
on from its job's checkpoint."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from corral.entrypoints.trivia.app import (
    QUEUE,
    Progress,
    RoomListener,
    Timings,
    parse_job,
    room_key,
    start_room,
    step,
)
from corral.workers.jobs.keys import Keys
from corral.workers.jobs.wire import decode_job
from corral.workers.messages import Reject
from tests.conftest import RedisServer
from tests.e2e.conftest import Corral, wait_until
from tests.servers import async_client

FAST = Timings(countdown_s=0.05, question_s=0.2)


def check_screen(screen: RoomListener, room_id: str, questions: int) -> list[dict[str, Any]]:
    """What one room's screen showed: every question once, in order, countdowns only within the
    current question and going down, then one ``completed`` last."""
    events = screen.events(room_id)
    return check_events(events, questions)


def check_events(events: list[dict[str, Any]], questions: int) -> list[dict[str, Any]]:
    assert [e["question"] for e in events if e["type"] == "question"] == list(range(questions)), events
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


def play_on_a_fake_clock(progress: Progress, now_ms: int, questions: int) -> list[dict[str, Any]]:
    """Every event a room shows from ``progress`` on, stepping the clock to each next step."""
    events = []
    while not progress.done:
        progress, event, due_s = step(progress, now_ms, FAST, questions)
        events += [event] if event else []
        now_ms += round(due_s * 1000)
    return events


# -- the room's steps (pure logic, a fake clock) ----------------------------------------------------


def test_a_room_shows_every_question_once_with_its_countdowns_then_completes() -> None:
    events = check_events(play_on_a_fake_clock(Progress(), 1_000_000, 4), 4)
    assert sum(e["type"] == "countdown" for e in events) == 4 * 3  # at 50, 100, 150 ms of each 200


def test_a_resumed_room_goes_on_in_the_same_question() -> None:
    """From a checkpoint 120 ms into question 2 (two countdowns shown): the rest of question 2's
    countdown, then questions 3 and 4; question 2 is not shown again, none is skipped."""
    saved = Progress(current=2, started_ms=1_000_000, tick=2)
    events = play_on_a_fake_clock(Progress.from_checkpoint(vars(saved)), 1_000_120, 5)
    assert [(e["type"], e.get("question")) for e in events][:2] == [("countdown", 2), ("question", 3)]
    assert [e["question"] for e in events if e["type"] == "question"] == [3, 4]
    assert Progress.from_checkpoint(None) == Progress() and Progress.from_checkpoint({"x": 1}) == Progress()


def test_a_room_resumed_after_its_question_ended_shows_the_next_at_once() -> None:
    progress, event, _ = step(Progress(current=1, started_ms=0, tick=3), 10_000, FAST, 3)
    assert event == {"type": "question", "question": 2, "duration_s": 0.2} and progress.started_ms == 10_000
    done, event, _ = step(progress, 10_200, FAST, 3)
    assert event == {"type": "completed"} and done.done


def test_rooms_start_once_and_bad_input_is_rejected(redis_clean: RedisServer, run: Any) -> None:
    from corral.entrypoints.trivia.app import astart_room

    client = redis_clean.client()
    assert start_room(client, "r7", 3) is True
    assert start_room(client, "r7", 3) is False  # the room exists: not queued twice
    assert run(astart_room(async_client(redis_clean.url), "r8", 2)) is True
    assert run(astart_room(async_client(redis_clean.url), "r8", 2)) is False
    jobs = [decode_job(raw, QUEUE) for raw in client.lrange(QUEUE, 0, -1)]
    assert sorted((job.id, job.unique) for job in jobs) == [("room:r7", "r7"), ("room:r8", "r8")]
    assert client.hget(room_key("r7"), "status") == b"pending"
    for bad in ([1], {"room_id": "", "questions": 3}, {"room_id": "x", "questions": 0}, {"room_id": "x"}):
        with pytest.raises(Reject):
            parse_job(bad)
    with pytest.raises(ValueError):
        Timings.from_options({"countdown_s": 3, "question_s": 2})
    assert Timings.from_options({"question_s": 0.5, "countdown_s": 0.1}) == Timings(0.1, 0.5)


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
block_s = 0.2
[options]
countdown_s = 0.1
question_s = 0.5
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

        def three_playing() -> list[str]:  # 3 workers, one room each: three rooms at once, two wait
            running = [r for r in ROOMS if room(r)["status"] == "running"]
            at_two = [r for r in running if len(screen.questions(r)) >= 3]
            return at_two[:1] if len(running) == 3 else []

        [victim_room] = wait_until(three_playing, timeout_s=10, what="3 rooms playing, one at question 2")
        assert client.llen(QUEUE) == 2
        victim = next(e["worker"] for e in reversed(screen.events(victim_room)) if e["type"] == "question")
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
        f"1 child SIGKILLed ({victim_room} at question {killed_at}, its screen paused {pause_after_kill_s:.2f}s), "
        f"1 rolling reload ({handed_back} rooms handed back; longest pause on another room's "
        f"screen {longest_pause_s:.2f}s), {resumes} resumes in all, {took_s:.1f}s"
    )
    sup.send(signal.SIGTERM)
    assert sup.wait_exit(30) == 0
