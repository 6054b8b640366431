"""Contest submissions: scoring, validation, the stores (SQLite, and PostgreSQL when there is one),
and the worker with its handler, in process. The pool under the real CLI: test_contest_e2e.py."""

from __future__ import annotations

import random
import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from loguru import logger

from corral.contract import load_object
from corral.entrypoints.contest import (
    ContestWorker,
    InvalidSubmission,
    Score,
    Submission,
    encode_submission,
    expected_answer,
    queue_name,
    random_submission,
    score_answer,
    score_submission,
    submit,
)
from corral.entrypoints.contest.db import (
    ContestConfigError,
    ContestStore,
    SqliteStore,
    Standing,
    redact,
    store_from_options,
)
from corral.supervisor import config as config_module
from corral.workers.base import WorkerContext
from corral.workers.jobs.wire import decode_job
from corral.workers.messages import HandlerContext, Reject
from tests.conftest import RedisServer

REPO_ROOT = Path(__file__).resolve().parents[2]
USERS = [f"user-{n}" for n in range(8)]
PROBLEMS = ["p1", "p2", "p3"]


def submission(sid: str, problem: str = "p1", answer: str | None = None, **fields: Any) -> Submission:
    data = {
        "submission_id": sid,
        "contest_id": "spring",
        "user_id": "ada",
        "problem_id": problem,
        "answer": expected_answer(problem) if answer is None else answer,
        "submitted_at": 1767225600.0,
        **fields,
    }
    return Submission.from_json(data)


def expected_scoreboard(subs: list[Submission]) -> dict[tuple[str, str], Standing]:
    """What the scoreboard must say: per user, the best score on each problem, summed."""
    best: dict[tuple[str, str], dict[str, Score]] = defaultdict(dict)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for s in subs:
        score = score_answer(s.problem_id, s.answer)
        row = best[(s.contest_id, s.user_id)]
        old = row.get(s.problem_id, Score(0, False))
        row[s.problem_id] = Score(max(old.points, score.points), old.solved or score.solved)
        counts[(s.contest_id, s.user_id)] += 1
    return {
        key: Standing(
            key[1], sum(x.points for x in row.values()), sum(x.solved for x in row.values()), counts[key]
        )
        for key, row in best.items()
    }


# -- scoring and validation -------------------------------------------------------------------------


def test_expected_answers_are_six_hex_digits_derived_from_the_problem_id() -> None:
    assert expected_answer("p1") == expected_answer("p1") == "4600b6"  # stable across runs and hosts
    assert len({expected_answer(f"p{n}") for n in range(50)}) == 50
    assert all(len(a) == 6 and int(a, 16) >= 0 for a in map(expected_answer, PROBLEMS))


def test_score_answer_gives_full_and_partial_credit() -> None:
    right = expected_answer("p2")
    assert score_answer("p2", right) == Score(100, True)
    assert score_answer("p2", f"  {right.upper()}\n") == Score(100, True)
    off_by_one = right[:5] + ("0" if right[5] != "0" else "1")
    assert score_answer("p2", off_by_one) == Score(40, False)
    wrong = "".join("0" if c != "0" else "1" for c in right)
    assert score_answer("p2", wrong) == Score(0, False)
    assert score_answer("p2", right + "0") == Score(0, False)  # the wrong length: nothing
    assert score_answer("p2", "") == Score(0, False)


@given(problem=st.text(min_size=1, max_size=20), answer=st.text(max_size=12))
def test_scores_are_bounded_and_full_only_when_solved(problem: str, answer: str) -> None:
    score = score_answer(problem, answer)
    assert 0 <= score.points <= 100
    assert score.solved == (score.points == 100)
    assert score.solved or score.points <= 40


def test_random_submissions_are_valid_reproducible_and_varied() -> None:
    made = [random_submission(random.Random(7), ["a", "b"], USERS, PROBLEMS) for _ in range(2)]
    assert made[0]["submission_id"] == made[1]["submission_id"]
    rng = random.Random(1)
    subs = [Submission.from_json(random_submission(rng, ["a", "b"], USERS, PROBLEMS)) for _ in range(500)]
    points = [score_answer(s.problem_id, s.answer).points for s in subs]
    assert {100, 0} <= set(points) and any(0 < p < 100 for p in points)
    assert len({s.submission_id for s in subs}) == 500


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (["s-1"], "a JSON object, got list"),
        ({"submission_id": "s-1"}, "missing 'contest_id'"),
        ({**submission("s-1").__dict__, "user_id": 42}, "'user_id' must be a non-empty string"),
        ({**submission("s-1").__dict__, "submission_id": ""}, "'submission_id' must be a non-empty"),
        ({**submission("s-1").__dict__, "submitted_at": "today"}, "'submitted_at' must be a number"),
        ({**submission("s-1").__dict__, "submitted_at": True}, "'submitted_at' must be a number"),
        ({**submission("s-1").__dict__, "answer": None}, "'answer' must be a string"),
    ],
)
def test_invalid_submissions_are_rejected_with_the_reason(data: Any, reason: str) -> None:
    with pytest.raises(InvalidSubmission, match=reason) as caught:
        Submission.from_json(data)
    assert isinstance(caught.value, Reject)  # corral dead-letters it instead of retrying


def test_a_submission_must_arrive_on_its_contests_queue() -> None:
    data = submission("s-1").__dict__
    assert Submission.from_json(data, queue_name("spring")).contest_id == "spring"
    with pytest.raises(InvalidSubmission, match="arrived on 'contest:submissions:summer'"):
        Submission.from_json(data, queue_name("summer"))


def test_submit_pushes_plain_json_onto_the_contests_queue(redis_clean: RedisServer) -> None:
    client = redis_clean.client()
    data = random_submission(random.Random(3), ["spring"], USERS, PROBLEMS)
    assert submit(client, data) == "contest:submissions:spring"
    job = decode_job(client.rpop("contest:submissions:spring"), "contest:submissions:spring")
    assert job.data == data and job.attempt == 1  # a bare JSON job, as any producer could push


# -- the stores -------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A factory of stores on one database (each call: a new connection), closed at the end."""
    if request.param == "sqlite":
        options = {"contest_db": str(tmp_path / "contest.sqlite3")}
    else:
        options = {"database_url": request.getfixturevalue("postgres_url")}
    made: list[ContestStore] = []

    def make() -> ContestStore:
        store = store_from_options(options)
        store.open()
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def record(store: ContestStore, s: Submission) -> bool:
    return store.record(s, score_answer(s.problem_id, s.answer), "test")


def test_a_submission_is_scored_once_however_often_it_is_delivered(make_store: Any) -> None:
    store = make_store()
    s = submission("s-1")
    assert record(store, s) is True
    assert record(store, s) is False
    assert record(make_store(), s) is False  # another worker, another connection
    assert store.totals() == (1, 2)
    assert store.scoreboard("spring") == [Standing("ada", 100, 1, 1)]


def test_the_total_is_the_best_score_per_problem_in_any_order(make_store: Any) -> None:
    p1 = expected_answer("p1")
    close = p1[:4] + "".join("0" if c != "0" else "1" for c in p1[4:])  # 4 of 6 right: 32 points
    first, second = make_store(), make_store()
    in_order = [submission("a1", "p1", close), submission("a2", "p1"), submission("a3", "p1", close)]
    for s in in_order:
        record(first, s)
    assert first.scoreboard("spring") == [Standing("ada", 100, 1, 3)]
    for s in reversed(in_order):  # the same in another contest, in the opposite order
        record(
            second, Submission(**{**s.__dict__, "submission_id": "b" + s.submission_id, "contest_id": "fall"})
        )
    assert second.scoreboard("fall") == [Standing("ada", 100, 1, 3)]
    record(first, submission("a4", "p2", "zzzzzz", user_id="bob"))
    record(first, submission("a5", "p3", close, user_id="bob"))
    assert first.scoreboard("spring") == [Standing("ada", 100, 1, 3), Standing("bob", 0, 0, 2)]


def test_concurrent_writers_never_double_count(make_store: Any) -> None:
    """Four connections record the same 300 submissions, each in its own order, at once."""
    rng = random.Random(5)
    subs = [Submission.from_json(random_submission(rng, ["spring"], USERS, PROBLEMS)) for _ in range(300)]
    stores = [make_store() for _ in range(4)]
    errors: list[BaseException] = []

    def writer(store: ContestStore, order: list[Submission]) -> None:
        try:
            for s in order:
                record(store, s)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=(s, random.Random(i).sample(subs, len(subs))))
        for i, s in enumerate(stores)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert stores[0].totals() == (300, 900)
    board = {(("spring", row.user_id)): row for row in stores[0].scoreboard("spring", limit=100)}
    assert board == expected_scoreboard(subs)


def test_store_options_and_their_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    default = store_from_options({})
    assert isinstance(default, SqliteStore) and default.path == tmp_path / "contest.sqlite3"
    relative = store_from_options({"contest_db": "state/c.sqlite3", "contest_busy_timeout_s": 1})
    assert isinstance(relative, SqliteStore) and relative.path == tmp_path / "state" / "c.sqlite3"
    beside = store_from_options({"contest_db": "c.sqlite3"}, base_dir="/etc/corral")  # the config's folder
    assert isinstance(beside, SqliteStore) and beside.path == Path("/etc/corral/c.sqlite3")
    with pytest.raises(ContestConfigError, match=r"options\.database_url: must be a postgresql:// URL"):
        store_from_options({"database_url": "mysql://x"})
    with pytest.raises(ContestConfigError, match=r"options\.contest_busy_timeout_s"):
        store_from_options({"contest_busy_timeout_s": 0})
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    with pytest.raises(ContestConfigError, match=r"options.database_url .* psycopg 3 is not installed"):
        store_from_options({"database_url": "postgresql://db.example/contest"})
    assert redact("postgresql://app:s3cret@db:5432/c") == "postgresql://app:***@db:5432/c"


def test_the_shipped_config_is_valid_and_its_import_paths_resolve() -> None:
    config = config_module.load(REPO_ROOT / "entrypoints" / "contest" / "corral.toml")
    assert load_object(config.worker) is ContestWorker
    (queues,) = config.work.queues
    assert queues.pattern == "contest:submissions:*"
    assert load_object(queues.handler) is score_submission
    assert config.pool.options["contest_db"] == "run/contest.sqlite3"


# -- the worker and its handler, in process ----------------------------------------------------------


class FakeChannel:
    def announce_ready(self, info: Any) -> None:
        self.ready = info


async def test_the_worker_scores_through_its_handler_and_counts(tmp_path: Path) -> None:
    worker = ContestWorker()
    context = WorkerContext(0, "contest", "host", {"contest_db": str(tmp_path / "c.sqlite3")}, "host:c:0:ab")
    worker.bind(context, FakeChannel())  # type: ignore[arg-type]
    ctx = HandlerContext(redis=None, worker_id=context.worker_id, log=logger)
    job = decode_job(b'{"x": 1}', queue_name("spring"))
    with pytest.raises(RuntimeError, match=r"entrypoints\.contest:ContestWorker"):
        await score_submission(job, ctx)  # before start(): no database to record into
    await worker.start()
    data = random_submission(random.Random(2), ["spring"], USERS, PROBLEMS)
    raw = encode_submission(data).encode()  # the bytes submit() pushes
    for _ in range(3):  # the same bytes three times: scored once
        await score_submission(decode_job(raw, queue_name("spring")), ctx)
    with pytest.raises(InvalidSubmission):
        await score_submission(job, ctx)
    stats = worker.stats()
    assert (stats["contest_scored"], stats["contest_duplicates"], stats["contest_invalid"]) == (1, 2, 1)
    await worker.stop()
    with pytest.raises(RuntimeError):
        await score_submission(decode_job(raw, queue_name("spring")), ctx)  # stopped: unregistered
