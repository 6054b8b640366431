"""Contest submissions: score each submission as it arrives and keep a per-contest scoreboard.

Producers push each submission as plain JSON onto ``contest:submissions:<contest_id>`` (a Redis
list; ``submit()`` below, or ``redis-cli LPUSH``)::

    {"submission_id": "s-1", "contest_id": "spring", "user_id": "ada", "problem_id": "p3",
     "answer": "cf1a89", "submitted_at": 1767225600.0}

The pool discovers the contests' queues by pattern (``[[queues]] pattern =
"contest:submissions:*"``); ``score_submission`` validates a submission, scores it
(``score_answer``) and records it in the database of ``ContestWorker`` (``entrypoints.contest_db``:
SQLite by default, PostgreSQL with ``[options] database_url``). Recording is idempotent: a submission
delivered twice (pushed twice, or redelivered after a worker died) is scored once.

Scoring: problem ``P``'s answer is the first 6 hex digits of ``sha256("contest-problem:" + P)``
(``expected_answer``). The exact answer (case and surrounding blanks ignored) is worth 100 points
and solves the problem; a 6-character answer that is not exact earns 8 points per character in the
right place (partial credit, at most 40); anything else 0.

Run: ``corral run -c entrypoints/contest.toml``; push traffic: ``python -m entrypoints.contest push
500``; look: ``python -m entrypoints.contest scoreboard spring``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, ParamSpec, TypeVar

from entrypoints.contest_db import ContestConfigError, ContestStore, store_from_options
from workers import BaseWorker
from workers.messages import HandlerContext, Job, Reject

QUEUE_PREFIX = "contest:submissions:"
ANSWER_LENGTH = 6
FULL_POINTS = 100
PARTIAL_POINTS_PER_CHAR = 8
MAX_ID_LENGTH = 200
MAX_ANSWER_LENGTH = 1000
ID_FIELDS = ("submission_id", "contest_id", "user_id", "problem_id")
P = ParamSpec("P")
T = TypeVar("T")


# -- scoring ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    points: int
    solved: bool


def expected_answer(problem_id: str) -> str:
    """The answer to problem ``problem_id``: 6 hex digits, derived from its id alone."""
    return hashlib.sha256(f"contest-problem:{problem_id}".encode()).hexdigest()[:ANSWER_LENGTH]


def score_answer(problem_id: str, answer: str) -> Score:
    """Full points for the exact answer; partial credit per character in the right place."""
    expected = expected_answer(problem_id)
    given = answer.strip().lower()
    if given == expected:
        return Score(FULL_POINTS, True)
    if len(given) != ANSWER_LENGTH:
        return Score(0, False)
    right = sum(a == b for a, b in zip(given, expected, strict=True))
    return Score(right * PARTIAL_POINTS_PER_CHAR, False)


# -- submissions ------------------------------------------------------------------------------------


class InvalidSubmission(Reject):
    """A submission that can never be scored (missing or mistyped fields, wrong queue): corral
    dead-letters it with the reason instead of retrying."""


@dataclass(frozen=True)
class Submission:
    submission_id: str
    contest_id: str
    user_id: str
    problem_id: str
    answer: str
    submitted_at: float

    @classmethod
    def from_json(cls, data: Any, queue: str | None = None) -> Submission:
        """Validate a decoded submission; ``queue``, if given, must be its contest's queue."""
        if not isinstance(data, dict):
            raise InvalidSubmission(f"a submission is a JSON object, got {type(data).__name__}")
        problems = [
            f"missing {name!r}" for name in (*ID_FIELDS, "answer", "submitted_at") if name not in data
        ]
        for name in ID_FIELDS:
            value = data.get(name, "-")
            if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
                problems.append(f"{name!r} must be a non-empty string of at most {MAX_ID_LENGTH} chars")
        answer = data.get("answer", "")
        if not isinstance(answer, str) or len(answer) > MAX_ANSWER_LENGTH:
            problems.append(f"'answer' must be a string of at most {MAX_ANSWER_LENGTH} chars")
        at = data.get("submitted_at", 0.0)
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            problems.append("'submitted_at' must be a number (unix seconds)")
        if problems:
            raise InvalidSubmission("invalid submission: " + "; ".join(problems))
        submission = cls(
            submission_id=data["submission_id"],
            contest_id=data["contest_id"],
            user_id=data["user_id"],
            problem_id=data["problem_id"],
            answer=data["answer"],
            submitted_at=float(data["submitted_at"]),
        )
        if queue is not None and queue != queue_name(submission.contest_id):
            raise InvalidSubmission(f"a submission to contest {submission.contest_id!r} arrived on {queue!r}")
        return submission


def queue_name(contest_id: str) -> str:
    return f"{QUEUE_PREFIX}{contest_id}"


# -- the worker and the handler ---------------------------------------------------------------------

_WORKERS: dict[str, ContestWorker] = {}  # worker id -> the worker of this process (handlers' way in)


class ContestWorker(BaseWorker):
    """Opens the database before the queues start; its ``stats()`` add the app's counters."""

    def __init__(self) -> None:
        super().__init__()
        self.store: ContestStore | None = None
        self.scored = 0
        self.duplicates = 0
        self.invalid = 0
        # sqlite3 and psycopg block: every database call runs on this one thread, off the loop
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="contest-db")

    async def start(self) -> None:
        # ContestConfigError names the bad option; relative paths are the config file's
        store = store_from_options(self.context.options, self.context.config_dir)
        await self.db(store.open)
        self.store = store
        self.log.info("contest: results in {}", store.describe())
        _WORKERS[self.context.worker_id] = self
        await super().start()

    async def db(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking database call on the worker's database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, partial(call, *args, **kwargs))

    async def stop(self) -> None:
        _WORKERS.pop(self.context.worker_id, None)
        if self.store is not None:
            await self.db(self.store.close)  # after any call still running on the thread
        self._db_thread.shutdown(wait=True)
        self.log.info(
            "contest: scored {}, duplicates ignored {}, invalid {}",
            self.scored,
            self.duplicates,
            self.invalid,
        )
        await super().stop()

    async def record(self, submission: Submission, score: Score) -> bool:
        """Record a scored submission (on the database thread); False if it was a duplicate."""
        assert self.store is not None, "record() before start()"
        inserted = await self.db(self.store.record, submission, score, self.context.worker_id)
        if inserted:
            self.scored += 1
        else:
            self.duplicates += 1
        return inserted

    def stats(self) -> dict[str, Any]:
        return {
            **super().stats(),
            "contest_scored": self.scored,
            "contest_duplicates": self.duplicates,
            "contest_invalid": self.invalid,
        }

    @classmethod
    def of(cls, ctx: HandlerContext) -> ContestWorker:
        worker = ctx.worker if isinstance(ctx.worker, ContestWorker) else _WORKERS.get(ctx.worker_id)
        if worker is None or worker.store is None:
            raise RuntimeError(
                "score_submission needs the pool's worker to be a started "
                "entrypoints.contest:ContestWorker (pool.worker in corral.toml)"
            )
        return worker


async def score_submission(job: Job, ctx: HandlerContext) -> None:
    """The ``[[queues]]`` handler: validate, score, record (once, whatever the deliveries)."""
    worker = ContestWorker.of(ctx)
    try:
        submission = Submission.from_json(job.data, job.queue)
    except InvalidSubmission:
        worker.invalid += 1
        raise
    score = score_answer(submission.problem_id, submission.answer)
    if not await worker.record(submission, score):
        ctx.log.info("contest: submission {} was scored already; ignored", submission.submission_id)


# -- producing --------------------------------------------------------------------------------------


def random_submission(
    rng: random.Random, contest_ids: Sequence[str], users: Sequence[str], problems: Sequence[str]
) -> dict[str, Any]:
    """A plausible submission: 40% right, 35% close (partial credit), 25% a wild guess."""
    problem_id = rng.choice(problems)
    answer = expected_answer(problem_id)
    luck = rng.random()
    if luck >= 0.75:
        answer = "".join(rng.choice("0123456789abcdef") for _ in range(ANSWER_LENGTH))
    elif luck >= 0.40:
        chars = list(answer)
        for index in rng.sample(range(ANSWER_LENGTH), rng.randint(1, 4)):
            chars[index] = rng.choice("0123456789abcdef".replace(chars[index], ""))
        answer = "".join(chars)
    return asdict(
        Submission(
            submission_id=f"s-{rng.getrandbits(64):016x}",
            contest_id=rng.choice(contest_ids),
            user_id=rng.choice(users),
            problem_id=problem_id,
            answer=answer,
            submitted_at=round(time.time(), 3),
        )
    )


def encode_submission(submission: Mapping[str, Any]) -> str:
    return json.dumps(dict(submission), separators=(",", ":"))


def submit(redis_client: Any, submission: Mapping[str, Any]) -> str:
    """LPUSH a submission (plain JSON) onto its contest's queue; returns the queue. ``redis_client``
    is a redis-py ``Redis`` or a pipeline of one."""
    queue = queue_name(str(submission["contest_id"]))
    redis_client.lpush(queue, encode_submission(submission))
    return queue


async def asubmit(redis_client: Any, submission: Mapping[str, Any]) -> str:
    """``submit`` for a ``redis.asyncio.Redis`` client."""
    queue = queue_name(str(submission["contest_id"]))
    await redis_client.lpush(queue, encode_submission(submission))
    return queue


# -- command line -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m entrypoints.contest", description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", default="entrypoints/contest.toml", help="the pool's corral.toml")
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="push N random submissions")
    push.add_argument("count", type=int)
    push.add_argument("--contests", default="spring,summer", help="comma-separated contest ids")
    push.add_argument("--users", type=int, default=50)
    push.add_argument("--problems", type=int, default=6)
    push.add_argument("--seed", type=int, default=None)
    board = sub.add_parser("scoreboard", help="the top of a contest's scoreboard")
    board.add_argument("contest")
    board.add_argument("--top", type=int, default=10)
    answer = sub.add_parser("answer", help="the expected answer to a problem")
    answer.add_argument("problem")
    args = parser.parse_args(argv)
    if args.command == "answer":
        print(expected_answer(args.problem))
        return 0

    import redis as redis_py

    from supervisor.config import ConfigError, load

    try:
        config = load(args.config)
        if args.command == "scoreboard":
            options = config.pool.options
            return show_scoreboard(
                store_from_options(options, str(config.path.parent)), args.contest, args.top
            )
    except (ConfigError, ContestConfigError) as exc:
        print(exc, file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    contests = [c for c in args.contests.split(",") if c]
    users = [f"user-{n}" for n in range(args.users)]
    problems = [f"p{n}" for n in range(1, args.problems + 1)]
    client = redis_py.Redis.from_url(config.redis_url, socket_timeout=5)
    try:
        with client.pipeline(transaction=False) as pipe:
            for _ in range(args.count):
                submit(pipe, random_submission(rng, contests, users, problems))
            pipe.execute()
    except redis_py.RedisError as exc:
        print(f"cannot reach Redis at {config.redis_url}: {exc}", file=sys.stderr)
        return 5
    finally:
        client.close()
    print(f"pushed {args.count} submissions to {', '.join(queue_name(c) for c in contests)}")
    return 0


def show_scoreboard(store: ContestStore, contest_id: str, top: int) -> int:
    store.open()
    try:
        print(f"{'USER':<16} {'TOTAL':>6} {'SOLVED':>6} {'SUBMISSIONS':>11}")
        for row in store.scoreboard(contest_id, top):
            print(f"{row.user_id:<16} {row.total:>6} {row.solved:>6} {row.submissions:>11}")
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
