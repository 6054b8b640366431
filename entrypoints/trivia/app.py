"""Trivia rooms: a ``room_started`` job plays a room's questions, resumable across kills and reloads.

A producer starts a room (``start_room``: the room's hash, and its job on the queue ``trivia:rooms``
under the room id as a unique key, so a room has one job at a time). The job is long-running: the
worker that holds it plays the room on the room's pub/sub channel ``trivia:room:<id>:events`` — a
``question`` event every ``question_s``, a ``countdown`` event every ``countdown_s`` in between,
then ``completed``.

The room's place is the job's own checkpoint (``ctx.checkpoint``: the question on screen, when it was
shown, the countdowns shown), saved with every event in one atomic step that also publishes the
event (``publish=``): an event is on screen if and only if it is saved. corral never lets two
workers hold the job at once, and the next holder of a job — after a reload, a recycle, a crash or a
``SIGKILL`` — reads the checkpoint back (``job.checkpoint``) and goes on in the same question, with
its countdown where it was: no question is repeated or skipped. A worker asked to stop
(``ctx.stopping``) hands the job back at once (``Requeue``), so a deploy pauses a screen for
milliseconds.

Run: ``corral run -c entrypoints/trivia/corral.toml``, then ``corral enqueue trivia:rooms -c
entrypoints/trivia/corral.toml --unique r1 '{"room_id": "r1", "questions": 5}'`` and ``redis-cli
PSUBSCRIBE 'trivia:room:*:events'``.
"""

from __future__ import annotations

import dataclasses
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
UNIQUE_FOR_S = 86_400.0  # a room's job is unique by its room id for at most a day (then its lock expires)

# KEYS: room; ARGV: questions, now (unix ms). 1 if the room is new.
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'questions', ARGV[1], 'status', 'pending', 'resumes', 0, 'created_at', ARGV[2])
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

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Timings:
        values = {
            name: float(options.get(name, getattr(cls, name))) for name in ("countdown_s", "question_s")
        }
        timings = cls(**values)
        if min(values.values()) <= 0 or timings.countdown_s > timings.question_s:
            raise ValueError(f"trivia timings must be > 0 with countdown_s <= question_s: {timings}")
        return timings


@dataclass(frozen=True)
class Progress:
    """A room's place: the job's checkpoint."""

    current: int = -1  # the question on screen (-1: none yet)
    started_ms: int = 0  # when it was shown (unix ms)
    tick: int = 0  # the countdown events of it shown so far
    done: bool = False  # ``completed`` was shown

    @classmethod
    def from_checkpoint(cls, saved: Any) -> Progress:
        if not isinstance(saved, dict):
            return cls()
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names})


def step(
    progress: Progress, now_ms: int, timings: Timings, questions: int
) -> tuple[Progress, dict[str, Any] | None, float]:
    """What is due at ``now_ms``: the progress after it, the event to show (None: nothing due yet)
    and the seconds until the next step is due."""
    question_ms, countdown_ms = round(timings.question_s * 1000), round(timings.countdown_s * 1000)
    if progress.current < 0 or now_ms - progress.started_ms >= question_ms:
        if progress.current + 1 >= questions:
            return dataclasses.replace(progress, done=True), {"type": "completed"}, 0.0
        shown = Progress(progress.current + 1, now_ms)
        event = {"type": "question", "question": shown.current, "duration_s": timings.question_s}
        return shown, event, min(countdown_ms, question_ms) / 1000
    elapsed = now_ms - progress.started_ms
    k = elapsed // countdown_ms
    due_s = (min((k + 1) * countdown_ms, question_ms) - elapsed) / 1000 + 0.001  # due, not just before
    if k > progress.tick and k * countdown_ms < question_ms:
        remaining_s = (question_ms - k * countdown_ms) / 1000
        event = {"type": "countdown", "question": progress.current, "remaining_s": remaining_s}
        return dataclasses.replace(progress, tick=k), event, due_s
    return progress, None, due_s


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
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # completed, handed back


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


def settings(ctx: HandlerContext) -> tuple[Timings, RoomStats]:
    """The timings from ``[options]`` and somewhere to count rooms, from the worker (``ctx.worker``)."""
    worker = getattr(ctx, "worker", None)
    if isinstance(worker, TriviaWorker):
        return worker.timings, worker.rooms
    if isinstance(worker, BaseWorker):
        return Timings.from_options(worker.context.options), RoomStats()
    return Timings(), RoomStats()


async def run_room(job: Job, ctx: HandlerContext) -> None:
    """The ``[[queues]]`` handler of ``trivia:rooms``: play the room from its checkpoint on, or hand
    the job back when the worker stops."""
    room_id, questions = parse_job(job.data)
    timings, stats = settings(ctx)
    room, channel = room_key(room_id), room_channel(room_id)
    progress = Progress.from_checkpoint(job.checkpoint)
    if progress.current < 0 and await ctx.redis.hget(room, "status") == b"completed":
        return  # a copy of a room played already
    if progress.current >= 0:
        ctx.log.info("room {}: resumed at question {}", room_id, progress.current)
        await ctx.redis.hincrby(room, "resumes", 1)
    await ctx.redis.hset(room, "status", "running")
    stats.playing = room_id
    try:
        while not progress.done:
            if ctx.stopping:  # saved at the last event: the next holder goes on from there
                stats.outcomes["handed back"] += 1
                ctx.log.info("room {}: handed back at question {}", room_id, progress.current)
                raise Requeue(front=True)
            progress, event, due_s = step(progress, _now_ms(), timings, questions)
            if event is not None:
                said = json.dumps({**event, "room": room_id, "worker": ctx.worker_id})
                await ctx.checkpoint(dataclasses.asdict(progress), publish=(channel, said))
            if not progress.done:
                await ctx.wait_stopping(due_s)
    finally:
        stats.playing = ""
    await ctx.redis.hset(room, mapping={"status": "completed", "completed_at": _now_ms()})
    stats.outcomes["completed"] += 1
    ctx.log.info("room {}: completed", room_id)


# -- producing and listening (tests, the demo) -------------------------------------------------------


def start_room(redis: Any, room_id: str, questions: int, queue: str = QUEUE) -> bool:
    """Create the room and enqueue its job, unique by room id (sync client); False if the room
    exists (nothing queued)."""
    data = {"room_id": room_id, "questions": questions}
    parse_job(data)
    if not redis.register_script(CREATE)(keys=[room_key(room_id)], args=[questions, _now_ms()]):
        return False
    enqueue(redis, queue, data, job_id=f"room:{room_id}", unique_key=room_id, unique_for_s=UNIQUE_FOR_S)
    return True


async def astart_room(redis: Any, room_id: str, questions: int, queue: str = QUEUE) -> bool:
    """``start_room`` for an asyncio client."""
    data = {"room_id": room_id, "questions": questions}
    parse_job(data)
    if not await redis.register_script(CREATE)(keys=[room_key(room_id)], args=[questions, _now_ms()]):
        return False
    options = {"job_id": f"room:{room_id}", "unique_key": room_id, "unique_for_s": UNIQUE_FOR_S}
    await aenqueue(redis, queue, data, **options)
    return True


def _now_ms() -> int:
    return int(time.time() * 1000)


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
