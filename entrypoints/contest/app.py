"""Contest submissions: score each submission as it arrives and keep a per-contest scoreboard.

Producers push each submission as plain JSON onto ``contest:submissions:<contest_id>`` (a Redis
list; ``submit()`` below, or ``redis-cli LPUSH``)::

    {"submission_id": "s-1", "contest_id": "spring", "user_id": "ada", "problem_id": "p3",
     "answer": "cf1a89", "submitted_at": 1767225600.0}

The pool discovers the contests' queues by pattern (``[[queues]] pattern =
"contest:submissions:*"``); ``score_submission`` validates a submission, scores it
(``score_answer``) and records it in the database of ``ContestWorker`` (``corral.entrypoints.contest.db``:
SQLite by default, PostgreSQL with ``[options] database_url``). Recording is idempotent: a submission
delivered twice (pushed twice, or redelivered after a worker died) is scored once.

Scoring: problem ``P``'s answer is the first 6 hex digits of ``sha256("contest-problem:" + P)``
(``expected_answer``). The exact answer (case and surrounding blanks ignored) is worth 100 points
and solves the problem; a 6-character answer that is not exact earns 8 points per character in the
right place (partial credit, at most 40); anything else 0.

Run: ``corral run -c entrypoints/contest/corral.toml``; push traffic:
``python -m corral.entrypoints.contest push 500``; look: ``python -m corral.entrypoints.contest
scoreboard spring``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, ParamSpec, TypeVar

from corral.entrypoints.contest.db import ContestStore, store_from_options
from corral.entrypoints.contest.scoring import InvalidSubmission, Score, Submission, score_answer
from corral.workers import BaseWorker
from corral.workers.messages import HandlerContext, Job

P = ParamSpec("P")
T = TypeVar("T")


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
                "corral.entrypoints.contest:ContestWorker (pool.worker in corral.toml)"
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
