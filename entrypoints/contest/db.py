"""Where the contest's results live: SQLite (the default) or PostgreSQL, behind one small class.

Two tables: ``contest_results`` (one row per scored submission, the submission id as primary key)
and ``contest_scoreboard`` (per contest and user: total score, problems solved, submissions
scored). A submission is recorded in one transaction: insert its result; only if that inserted a
row, update the user's scoreboard row. So a redelivered submission changes nothing but its result's
``redeliveries`` counter, however often and in whatever order deliveries arrive.

The total is the sum over the user's problems of the best score on each, so it does not depend on
the order submissions are scored in; ``solved`` counts the problems with a full-credit answer.

The connections are blocking: a store is used from one thread at a time (the worker gives it one
thread of its own, see ``ContestWorker.db``). Both dialects share the SQL, written with ``?``
placeholders (turned into ``%s`` for psycopg).
"""

from __future__ import annotations

import contextlib
import importlib
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from corral.entrypoints.contest.scoring import Score, Submission

DEFAULT_DB = "contest.sqlite3"
DEFAULT_BUSY_TIMEOUT_S = 5.0

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS contest_results (
        submission_id TEXT PRIMARY KEY,
        contest_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        problem_id TEXT NOT NULL,
        answer TEXT NOT NULL,
        points INTEGER NOT NULL,
        solved INTEGER NOT NULL,
        submitted_at DOUBLE PRECISION NOT NULL,
        scored_at DOUBLE PRECISION NOT NULL,
        worker TEXT NOT NULL,
        redeliveries INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE INDEX IF NOT EXISTS contest_results_by_problem
        ON contest_results (contest_id, user_id, problem_id)""",
    """CREATE TABLE IF NOT EXISTS contest_scoreboard (
        contest_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        total INTEGER NOT NULL DEFAULT 0,
        solved INTEGER NOT NULL DEFAULT 0,
        submissions INTEGER NOT NULL DEFAULT 0,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (contest_id, user_id)
    )""",
)
INSERT_RESULT = """INSERT INTO contest_results
    (submission_id, contest_id, user_id, problem_id, answer, points, solved, submitted_at, scored_at, worker)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (submission_id) DO NOTHING"""
COUNT_REDELIVERY = "UPDATE contest_results SET redeliveries = redeliveries + 1 WHERE submission_id = ?"
ENSURE_ROW = """INSERT INTO contest_scoreboard (contest_id, user_id, updated_at) VALUES (?, ?, ?)
    ON CONFLICT (contest_id, user_id) DO NOTHING"""
PREVIOUS_BEST = """SELECT COALESCE(MAX(points), 0), COALESCE(MAX(solved), 0) FROM contest_results
    WHERE contest_id = ? AND user_id = ? AND problem_id = ? AND submission_id <> ?"""
UPDATE_ROW = """UPDATE contest_scoreboard
    SET total = total + ?, solved = solved + ?, submissions = submissions + 1, updated_at = ?
    WHERE contest_id = ? AND user_id = ?"""
SCOREBOARD = """SELECT user_id, total, solved, submissions FROM contest_scoreboard WHERE contest_id = ?
    ORDER BY total DESC, solved DESC, user_id LIMIT ?"""
TOTALS = "SELECT COUNT(*), COALESCE(SUM(redeliveries), 0) FROM contest_results"


class ContestConfigError(Exception):
    """An ``[options]`` value the contest app cannot work with (the message names the option)."""


@dataclass(frozen=True)
class Standing:
    user_id: str
    total: int
    solved: int
    submissions: int


class ContestStore:
    """The shared logic; ``SqliteStore`` and ``PostgresStore`` connect and open transactions."""

    placeholder = "?"

    def __init__(self) -> None:
        self.conn: Any = None

    def connect(self) -> Any:
        raise NotImplementedError

    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A cursor inside a transaction: committed on exit, rolled back on an exception."""
        raise NotImplementedError

    def lock_scoreboard_row(self, cur: Any, contest_id: str, user_id: str) -> None:
        """Serialise the updates of one scoreboard row (SQLite: the write lock already does)."""

    def describe(self) -> str:
        raise NotImplementedError

    def sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    def open(self) -> None:
        """Connect and create the tables if needed (safe with several processes at once)."""
        if self.conn is None:
            self.conn = self.connect()
        with self.transaction() as cur:
            self.lock_schema(cur)
            for statement in SCHEMA:
                cur.execute(statement)

    def lock_schema(self, cur: Any) -> None:
        """Keep concurrent openers from racing on CREATE TABLE (SQLite: the write lock does)."""

    def record(self, submission: Submission, score: Score, worker: str) -> bool:
        """Store a scored submission; True if it was new, False if it was a redelivery (a no-op
        but for its ``redeliveries`` counter)."""
        s, now = submission, time.time()
        with self.transaction() as cur:
            row = (s.submission_id, s.contest_id, s.user_id, s.problem_id, s.answer)
            cur.execute(
                self.sql(INSERT_RESULT), (*row, score.points, int(score.solved), s.submitted_at, now, worker)
            )
            if cur.rowcount == 0:
                cur.execute(self.sql(COUNT_REDELIVERY), (s.submission_id,))
                return False
            cur.execute(self.sql(ENSURE_ROW), (s.contest_id, s.user_id, now))
            self.lock_scoreboard_row(cur, s.contest_id, s.user_id)
            cur.execute(self.sql(PREVIOUS_BEST), (s.contest_id, s.user_id, s.problem_id, s.submission_id))
            best_points, best_solved = cur.fetchone()
            gained = max(0, score.points - int(best_points))
            newly_solved = int(score.solved and not best_solved)
            cur.execute(self.sql(UPDATE_ROW), (gained, newly_solved, now, s.contest_id, s.user_id))
        return True

    def scoreboard(self, contest_id: str, limit: int = 10) -> list[Standing]:
        with self.transaction() as cur:
            cur.execute(self.sql(SCOREBOARD), (contest_id, limit))
            return [Standing(str(u), int(t), int(s), int(n)) for u, t, s, n in cur.fetchall()]

    def totals(self) -> tuple[int, int]:
        """(submissions scored, redeliveries ignored) over every contest."""
        with self.transaction() as cur:
            cur.execute(TOTALS)
            scored, redeliveries = cur.fetchone()
        return int(scored), int(redeliveries)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class SqliteStore(ContestStore):
    """A file shared by every worker of the host: WAL (readers never block the writer), a busy
    timeout (a writer waits for the lock that long, then the job fails and is retried by corral)."""

    def __init__(self, path: Path, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> None:
        super().__init__()
        self.path = path
        self.busy_timeout_s = busy_timeout_s

    def connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit mode (isolation_level=None): transactions are our explicit BEGIN IMMEDIATE
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, never corrupt
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        cur = self.conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock later
            yield cur
            cur.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:  # the body or the COMMIT failed
                cur.execute("ROLLBACK")
            raise
        finally:
            cur.close()

    def describe(self) -> str:
        return f"sqlite:{self.path}"


class PostgresStore(ContestStore):
    placeholder = "%s"

    def __init__(self, url: str) -> None:
        super().__init__()
        try:
            self.psycopg: Any = importlib.import_module("psycopg")
        except ImportError:
            raise ContestConfigError(
                "options.database_url is a PostgreSQL URL but psycopg 3 is not installed: "
                "pip install 'psycopg[binary]', or remove options.database_url to use SQLite"
            ) from None
        self.url = url

    def connect(self) -> Any:
        return self.psycopg.connect(self.url, autocommit=True)  # transactions: conn.transaction()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        if self.conn is None or self.conn.closed:  # dropped by the server: a fresh one
            self.conn = self.connect()
        try:
            with self.conn.transaction(), self.conn.cursor() as cur:
                yield cur
        except self.psycopg.OperationalError:
            if self.conn.broken:  # the job fails and is retried; the next one reconnects
                self.close()
            raise

    def lock_schema(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('contest_schema'))")

    def lock_scoreboard_row(self, cur: Any, contest_id: str, user_id: str) -> None:
        # READ COMMITTED: once we hold the row, the previous-best query sees every committed result
        cur.execute(
            "SELECT 1 FROM contest_scoreboard WHERE contest_id = %s AND user_id = %s FOR UPDATE",
            (contest_id, user_id),
        )

    def describe(self) -> str:
        return redact(self.url)


def redact(url: str) -> str:
    """The URL without its password (for logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def store_from_options(options: Mapping[str, Any], base_dir: str = "") -> ContestStore:
    """``[options] database_url = "postgresql://..."``: PostgreSQL; otherwise SQLite at
    ``contest_db`` (default ``contest.sqlite3``; a relative path is taken from ``base_dir``, the
    config file's folder, or else the working directory). ``contest_busy_timeout_s``: SQLite's
    lock wait."""
    url = options.get("database_url")
    if url:
        if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
            raise ContestConfigError(f"options.database_url: must be a postgresql:// URL, got {url!r}")
        return PostgresStore(url)
    path = options.get("contest_db", DEFAULT_DB)
    if not isinstance(path, str) or not path:
        raise ContestConfigError(f"options.contest_db: must be a file path, got {path!r}")
    timeout_s = options.get("contest_busy_timeout_s", DEFAULT_BUSY_TIMEOUT_S)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
        raise ContestConfigError(f"options.contest_busy_timeout_s: must be > 0, got {timeout_s!r}")
    return SqliteStore((Path(base_dir or ".") / Path(path).expanduser()).absolute(), float(timeout_s))
