"""Trivia rooms: a ``room_started`` job runs a room's questions, resumable across kills and reloads.

A producer pushes ``{"room_id": "r1", "questions": 10}`` onto the queue ``trivia:rooms``
(``start_room``). The job is long-running: the worker that takes it plays the room on the room's
pub/sub channel ``trivia:room:<id>:events`` — a ``question`` event every ``question_s``, a
``countdown`` event every ``countdown_s`` in between, then ``completed``.

All progress lives in the hash ``trivia:room:<id>`` (status, questions, current, question_started_at,
tick, owner, token, lease_until, resumes), and every event is published by a Lua script (``STEP``)
that checks the caller's fencing ``token``, decides from the stored progress and the server's clock
what is due, updates the hash and PUBLISHes in one atomic step. So question ``i`` is published exactly
once, whoever runs the room: a worker that lost the room (its lease ran out and another claimed it)
is fenced out and publishes nothing more.

Who plays a room: whoever holds its job. A claim takes the room (new token) if nobody holds a live
lease on it; a worker stopping gracefully (reload, scale down) releases the lease and hands the job
back to the front of the queue (``Requeue``), so the next worker resumes at once; a worker killed
outright leaves its lease to run out (``lease_s``) while corral redelivers its job. A job whose room
is held by a live owner (its lease is renewed while we wait) is a duplicate and is dropped.

Run: ``corral run -c entrypoints/trivia/corral.toml``, then ``corral enqueue trivia:rooms -c
entrypoints/trivia/corral.toml '{"room_id": "r1", "questions": 5}'`` and ``redis-cli PSUBSCRIBE
'trivia:room:*:events'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from corral.workers import BaseWorker
from corral.workers.messages import HandlerContext, Job, Reject, Requeue
from corral.workers.producer import aenqueue, enqueue

QUEUE = "trivia:rooms"

# Lua: the server's clock in milliseconds (one clock for every host), and a new room's fields.
NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)"
INIT = """
redis.call('HSET', KEYS[1], 'questions', ARGV[2], 'status', 'pending', 'current', -1, 'tick', 0,
  'question_started_at', 0, 'token', 0, 'owner', '', 'lease_until', 0, 'resumes', 0, 'created_at', now)
"""
# KEYS: room; ARGV: -, questions. 1 if the room is new.
CREATE = f"{NOW}\nif redis.call('EXISTS', KEYS[1]) == 1 then return 0 end\n{INIT}\nreturn 1"
# KEYS: room; ARGV: worker id, questions, lease ms.
# -> {'claimed', token, current} | {'busy', lease_until, ms left} | {'completed', 0, current}
CLAIM = f"""{NOW}
if redis.call('EXISTS', KEYS[1]) == 0 then {INIT} end
local s = redis.call('HMGET', KEYS[1], 'status', 'owner', 'lease_until', 'current')
if s[1] == 'completed' then return {{'completed', 0, tonumber(s[4])}} end
local lease = tonumber(s[3]) or 0
if s[2] and s[2] ~= '' and s[2] ~= ARGV[1] and lease > now then return {{'busy', lease, lease - now}} end
if s[1] == 'running' then redis.call('HINCRBY', KEYS[1], 'resumes', 1) end
local token = redis.call('HINCRBY', KEYS[1], 'token', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'owner', ARGV[1], 'lease_until', now + tonumber(ARGV[3]))
return {{'claimed', token, tonumber(s[4])}}
"""
# KEYS: room; ARGV: token, question ms, countdown ms, lease ms, channel, room id.
# -> {'fenced' | 'completed' | 'question' | 'countdown' | 'waiting', ms until the next step is due}
STEP = f"""{NOW}
local s = redis.call('HMGET', KEYS[1], 'token', 'status', 'owner', 'current', 'tick',
  'question_started_at', 'questions')
if tonumber(s[1]) ~= tonumber(ARGV[1]) or s[2] ~= 'running' then return {{'fenced', 0}} end
local question_ms, countdown_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local current, tick, started = tonumber(s[4]), tonumber(s[5]), tonumber(s[6])
redis.call('HSET', KEYS[1], 'lease_until', now + tonumber(ARGV[4]))
if current < 0 or now - started >= question_ms then
  if current + 1 >= tonumber(s[7]) then
    redis.call('HSET', KEYS[1], 'status', 'completed', 'owner', '', 'lease_until', 0, 'completed_at', now)
    redis.call('PUBLISH', ARGV[5], cjson.encode({{type = 'completed', room = ARGV[6]}}))
    return {{'completed', 0}}
  end
  current = current + 1
  redis.call('HSET', KEYS[1], 'current', current, 'tick', 0, 'question_started_at', now)
  redis.call('PUBLISH', ARGV[5], cjson.encode({{type = 'question', room = ARGV[6], question = current,
    duration_s = question_ms / 1000, worker = s[3]}}))
  return {{'question', math.min(countdown_ms, question_ms)}}
end
local elapsed = now - started
local k = math.floor(elapsed / countdown_ms)
local due = math.min((k + 1) * countdown_ms, question_ms) - elapsed
if k > tick and k * countdown_ms < question_ms then
  redis.call('HSET', KEYS[1], 'tick', k)
  redis.call('PUBLISH', ARGV[5], cjson.encode({{type = 'countdown', room = ARGV[6], question = current,
    remaining_s = (question_ms - k * countdown_ms) / 1000}}))
  return {{'countdown', due}}
end
return {{'waiting', due}}
"""
# KEYS: room; ARGV: token. 1 if released (the next claim need not wait for the lease to run out).
RELEASE = """
local s = redis.call('HMGET', KEYS[1], 'token', 'status')
if tonumber(s[1]) ~= tonumber(ARGV[1]) or s[2] ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'owner', '', 'lease_until', 0)
return 1
"""


def room_key(room_id: str) -> str:
    return f"trivia:room:{room_id}"


def room_channel(room_id: str) -> str:
    return f"trivia:room:{room_id}:events"


@dataclass(frozen=True)
class Timings:
    countdown_s: float = 2.0  # a countdown event this often within a question
    question_s: float = 10.0  # each question lasts this long
    lease_s: float = 5.0  # a killed owner's room is resumed by another worker after at most this

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Timings:
        values = {
            name: float(options.get(name, getattr(cls, name)))
            for name in ("countdown_s", "question_s", "lease_s")
        }
        timings = cls(**values)
        if min(values.values()) <= 0 or timings.countdown_s > timings.question_s:
            raise ValueError(f"trivia timings must be > 0 with countdown_s <= question_s: {timings}")
        return timings


class Outcome(enum.Enum):
    COMPLETED = "completed"  # we published the last event (or the room was completed already)
    HANDED_BACK = "handed back"  # the worker is stopping: progress saved, the job goes back
    DUPLICATE = "duplicate"  # a live worker plays this room: this job is a copy
    FENCED = "fenced"  # another worker claimed the room from under us


@dataclass(frozen=True)
class Claim:
    kind: str  # claimed | busy | completed
    value: int  # claimed: our token; busy: the holder's lease_until (server ms)
    detail: int  # claimed: the room's current question (-1: none yet); busy: ms left on the lease


class Room:
    """One room's progress in Redis, advanced only through the fenced scripts above."""

    def __init__(self, redis: Any, room_id: str, timings: Timings) -> None:
        self.redis = redis
        self.room_id = room_id
        self.timings = timings
        self.key = room_key(room_id)
        self.channel = room_channel(room_id)
        self.question_ms = round(timings.question_s * 1000)
        self.countdown_ms = round(timings.countdown_s * 1000)
        self.lease_ms = round(timings.lease_s * 1000)
        self._claim = redis.register_script(CLAIM)  # EVALSHA, loaded on first use
        self._step = redis.register_script(STEP)
        self._release = redis.register_script(RELEASE)

    async def claim(self, worker_id: str, questions: int) -> Claim:
        args = [worker_id, questions, self.lease_ms]
        kind, value, detail = await self._claim(keys=[self.key], args=args)
        return Claim(_text(kind), int(value), int(detail))

    async def step(self, token: int) -> tuple[str, float]:
        """Publish whatever is due now (if we still own the room); returns (what, seconds until next)."""
        args = [token, self.question_ms, self.countdown_ms, self.lease_ms, self.channel, self.room_id]
        kind, due_ms = await self._step(keys=[self.key], args=args)
        return _text(kind), max(int(due_ms), 0) / 1000 + 0.001  # +1 ms: due, not just before

    async def release(self, token: int) -> bool:
        return bool(await self._release(keys=[self.key], args=[token]))

    async def state(self) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in (await self.redis.hgetall(self.key)).items()}


async def wait_or_stop(stopping: asyncio.Event, timeout_s: float) -> bool:
    """Sleep up to ``timeout_s``, waking early when the worker stops; True if it is stopping."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout_s)
    return stopping.is_set()


async def acquire(room: Room, worker_id: str, questions: int, stopping: asyncio.Event) -> Claim | Outcome:
    """Our claim once the room is ours; else why we gave up. A holder whose lease runs out (it died)
    is replaced; a holder that renews its lease while we wait is alive, and our job a duplicate."""
    seen_lease: int | None = None
    while True:
        claim = await room.claim(worker_id, questions)
        if claim.kind == "claimed":
            return claim
        if claim.kind == "completed":
            return Outcome.COMPLETED
        if seen_lease is not None and claim.value != seen_lease:
            return Outcome.DUPLICATE
        seen_lease = claim.value
        if await wait_or_stop(stopping, claim.detail / 1000 + 0.01):
            return Outcome.HANDED_BACK


async def play(room: Room, worker_id: str, questions: int, stopping: asyncio.Event, log: Any) -> Outcome:
    """Run the room from its stored progress until it completes, we stop, or we lose it."""
    claim = await acquire(room, worker_id, questions, stopping)
    if isinstance(claim, Outcome):
        return claim
    token = claim.value
    if claim.detail >= 0:
        log.info("room {}: resumed at question {} (token {})", room.room_id, claim.detail, token)
    renew_s = room.timings.lease_s / 3
    try:
        while True:
            kind, due_s = await room.step(token)
            if kind in ("completed", "fenced"):
                return Outcome(kind)
            if await wait_or_stop(stopping, min(due_s, renew_s)):
                await room.release(token)
                return Outcome.HANDED_BACK
    except asyncio.CancelledError:  # a fast stop: corral hands the job back; free the room for the next
        with contextlib.suppress(Exception):
            await asyncio.shield(room.release(token))
        raise


def parse_job(data: Any) -> tuple[str, int]:
    if not isinstance(data, dict):
        raise Reject(f"a room_started job is an object, got {data!r}")
    room_id, questions = data.get("room_id"), data.get("questions")
    if not isinstance(room_id, str) or not room_id or type(questions) is not int or questions < 1:
        raise Reject(f"a room_started job needs room_id (text) and questions (int >= 1), got {data!r}")
    return room_id, questions


@dataclass
class RoomStats:
    playing: str = ""  # the room this worker plays now
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # rooms by Outcome


class TriviaWorker(BaseWorker):
    """Validates the timings at boot (a bad [options] table fails the child at once); its stats (the
    room playing now, rooms by outcome) show under APP METRICS in ``corral status``."""

    def __init__(self) -> None:
        super().__init__()
        self.timings = Timings()
        self.rooms = RoomStats()

    async def start(self) -> None:
        self.timings = Timings.from_options(self.context.options)
        await super().start()

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "playing": self.rooms.playing, **self.rooms.outcomes}


def runner(ctx: HandlerContext) -> tuple[asyncio.Event, Timings, RoomStats]:
    """What the handler needs of the worker running it (``ctx.worker``): its ``stopping`` event, the
    timings from ``[options]``, somewhere to count rooms."""
    worker = getattr(ctx, "worker", None)
    if isinstance(worker, TriviaWorker):
        return worker.stopping, worker.timings, worker.rooms
    if isinstance(worker, BaseWorker):
        return worker.stopping, Timings.from_options(worker.context.options), RoomStats()
    return asyncio.Event(), Timings(), RoomStats()  # no ctx.worker: a stop cancels the room instead


async def run_room(job: Job, ctx: HandlerContext) -> None:
    """The ``[[queues]]`` handler of ``trivia:rooms``: play the room, or hand the job back."""
    room_id, questions = parse_job(job.data)
    stopping, timings, stats = runner(ctx)
    room = Room(ctx.redis, room_id, timings)
    stats.playing = room_id
    try:
        outcome = await play(room, ctx.worker_id, questions, stopping, ctx.log)
    finally:
        stats.playing = ""
    stats.outcomes[outcome.value] += 1
    state = await room.state()
    ctx.log.info("room {}: {} at question {}", room_id, outcome.value, state.get("current"))
    if outcome is Outcome.HANDED_BACK:
        raise Requeue(front=True)


# -- producing and listening (tests, the demo) -------------------------------------------------------


def start_room(redis: Any, room_id: str, questions: int, queue: str = QUEUE) -> bool:
    """Create the room and enqueue its job (sync client); False if the room exists (nothing queued)."""
    parse_job({"room_id": room_id, "questions": questions})
    if not redis.register_script(CREATE)(keys=[room_key(room_id)], args=["", questions]):
        return False
    enqueue(redis, queue, {"room_id": room_id, "questions": questions}, job_id=f"room:{room_id}")
    return True


async def astart_room(redis: Any, room_id: str, questions: int, queue: str = QUEUE) -> bool:
    """``start_room`` for an asyncio client."""
    parse_job({"room_id": room_id, "questions": questions})
    if not await redis.register_script(CREATE)(keys=[room_key(room_id)], args=["", questions]):
        return False
    await aenqueue(redis, queue, {"room_id": room_id, "questions": questions}, job_id=f"room:{room_id}")
    return True


class RoomListener:
    """Subscribes to rooms' channels (sync client, background thread) and collects their events.

    ``with RoomListener(client, ["r1", "r2"]) as screen: ...``: subscribed on entry (before any room
    is started, so nothing is missed); ``screen.events("r1")`` is what r1's screen showed, in order.
    """

    def __init__(self, redis: Any, room_ids: list[str], subscribe_timeout_s: float = 5.0) -> None:
        self.pubsub = redis.pubsub(ignore_subscribe_messages=False)
        self.room_ids = list(room_ids)
        self.timeout_s = subscribe_timeout_s
        self._events: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._collect, name="trivia-listener", daemon=True)

    def __enter__(self) -> RoomListener:
        self.pubsub.subscribe(*(room_channel(r) for r in self.room_ids))
        confirmed, deadline = 0, time.monotonic() + self.timeout_s
        while confirmed < len(self.room_ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"subscribed to {confirmed} of {len(self.room_ids)} room channels")
            message = self.pubsub.get_message(timeout=0.1)
            confirmed += bool(message and message["type"] == "subscribe")
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join(5.0)
        self.pubsub.close()

    def _collect(self) -> None:
        while not self._done.is_set():
            message = self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message and message["type"] == "message":
                event = json.loads(message["data"])
                with self._lock:
                    self._events[str(event.get("room"))].append((time.monotonic(), event))

    def timeline(self, room_id: str) -> list[tuple[float, dict[str, Any]]]:
        """``(time.monotonic() when received, event)`` of the room, in order."""
        with self._lock:
            return list(self._events[room_id])

    def events(self, room_id: str) -> list[dict[str, Any]]:
        return [event for _, event in self.timeline(room_id)]

    def questions(self, room_id: str) -> list[int]:
        return [int(e["question"]) for e in self.events(room_id) if e["type"] == "question"]

    def completed(self, room_id: str) -> bool:
        return any(e["type"] == "completed" for e in self.events(room_id))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
