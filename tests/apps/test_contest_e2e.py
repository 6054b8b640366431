"""Contest submissions under the real CLI: 3 workers score ~2000 submissions from 4 contests'
queues, some pushed twice on purpose, some malformed, while children are SIGKILLed and the pool
is reloaded. The invariant: no submission is ever scored twice, and nothing is lost."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import pytest

from corral.entrypoints.contest import (
    Submission,
    encode_submission,
    queue_name,
    random_submission,
    score_answer,
)
from corral.entrypoints.contest.db import Standing
from corral.workers.jobs.keys import Keys
from tests.apps.postgres import connect
from tests.apps.test_contest import expected_scoreboard
from tests.conftest import RedisServer
from tests.e2e.conftest import Corral, wait_until

CONTESTS = ["spring", "summer", "autumn", "winter"]
USERS = [f"user-{n}" for n in range(40)]
PROBLEMS = [f"p{n}" for n in range(1, 7)]
VALID, DUPLICATES, WAVES = 2000, 150, 10
KILL_AFTER_WAVES, RELOAD_AFTER_WAVE = (1, 3, 7), 5
TAG = re.compile(r"bad-[a-z0-9]+-\d+")
KEYS = Keys()

CONFIG = """
[pool]
name = "contest-e2e"
workers = 3
worker = "corral.entrypoints.contest:ContestWorker"
ready_timeout_s = 20
graceful_timeout_s = 5
kill_timeout_s = 2
[restart]
backoff_initial_s = 0.1
max_restarts = 20
[health]
heartbeat_interval_s = 0.5
heartbeat_timeout_s = 5
monitor_interval_s = 0.2
[paths]
state_dir = "run"
log_dir = "logs"
[redis]
url = "{redis_url}"
[[queues]]
pattern = "contest:submissions:*"
handler = "corral.entrypoints.contest:score_submission"
refresh_s = 0.5
batch_size = 50
max_attempts = 3
backoff_initial_s = 0.1
backoff_max_s = 0.4
[options]
{database}
"""


@dataclass
class Traffic:
    """What the test pushes, wave by wave, and what it expects to find afterwards."""

    waves: list[list[tuple[str, bytes]]] = field(default_factory=lambda: [[] for _ in range(WAVES)])
    valid: list[Submission] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)  # the tag inside each malformed job


def make_traffic(rng: random.Random) -> Traffic:
    traffic = Traffic()
    for n in range(VALID):
        data = random_submission(rng, CONTESTS, USERS, PROBLEMS)
        traffic.valid.append(Submission.from_json(data))
        traffic.waves[n * WAVES // VALID].append(
            (queue_name(data["contest_id"]), encode_submission(data).encode())
        )
    for _ in range(DUPLICATES):  # the same bytes again, in the same wave or a later one
        wave = rng.randrange(WAVES)
        item = rng.choice(traffic.waves[wave])
        traffic.waves[rng.randrange(wave, WAVES)].append(item)

    def bad(kind: str, n: int) -> str:
        tag = f"bad-{kind}-{n}"
        traffic.malformed.append(tag)
        return tag

    def good(**overrides: Any) -> dict[str, Any]:
        return {**random_submission(rng, ["spring"], USERS, PROBLEMS), **overrides}

    spring = queue_name("spring")
    junk: list[tuple[str, bytes]] = []
    for n in range(6):  # not JSON: dead-lettered by corral itself
        junk.append((spring, f'{{"submission_id": "{bad("json", n)}", "contest_id": '.encode()))
    for n in range(2):  # not UTF-8
        junk.append((spring, b"\xff\xfe " + bad("utf8", n).encode()))
    for n in range(5):  # JSON, but not a valid submission: rejected by the handler
        data = good(submission_id=bad("missing", n))
        del data["answer"]
        junk.append((spring, json.dumps(data).encode()))
    for n in range(3):
        junk.append((spring, json.dumps(good(submission_id=bad("type", n), user_id=42)).encode()))
    for n in range(2):
        junk.append((spring, json.dumps([bad("array", n)]).encode()))
    for n in range(2):  # a summer submission on spring's queue
        junk.append((spring, json.dumps(good(submission_id=bad("queue", n), contest_id="summer")).encode()))
    for item in junk:
        traffic.waves[rng.randrange(WAVES)].append(item)
    for wave in traffic.waves:
        rng.shuffle(wave)
    return traffic


def busy_slot(client: Any, deadline_s: float) -> int | None:
    """A slot whose child holds jobs in a processing list right now (taken, not yet acknowledged),
    polled for up to ``deadline_s``; None if every child stayed idle."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for key in client.scan_iter(match="corral:*:processing:*"):
            if client.llen(key):
                return int(key.decode().rsplit(":", 2)[-2])  # ...:processing:<host>:<pool>:<slot>:<token>
        time.sleep(0.002)
    return None


def wait_replaced(sup: Corral, victim: dict[str, Any]) -> None:
    """Until the victim's slot has a new ready child."""

    def replaced() -> bool:
        now = sup.status_fast()
        row = now and sup.slot(now, victim["slot"])
        return bool(row and row["state"] == "ready" and row["pid"] not in (None, victim["pid"]))

    wait_until(replaced, timeout_s=20, what=f"slot {victim['slot']} back after SIGKILL\n{sup.output()}")


def wait_reloaded(sup: Corral, before: set[int]) -> None:
    """Until every slot runs a child that is not one of ``before``."""

    def all_new() -> bool:
        now = sup.status_fast()
        slots = now["slots"] if now else []
        return len(slots) == 3 and all(s["state"] == "ready" and s["pid"] not in before for s in slots)

    wait_until(all_new, timeout_s=30, what=f"every slot reloaded\n{sup.output()}")


def read_db(backend: str, target: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(results, scoreboard) rows, read with plain SQL (not through the app's code)."""
    results_sql = "SELECT submission_id, contest_id, user_id, problem_id, points, solved, redeliveries FROM contest_results"
    board_sql = "SELECT contest_id, user_id, total, solved, submissions FROM contest_scoreboard"
    try:
        if backend == "sqlite":
            with closing(sqlite3.connect(f"file:{target}?mode=ro", uri=True, timeout=5)) as conn:
                return conn.execute(results_sql).fetchall(), conn.execute(board_sql).fetchall()
        with connect(target) as conn:
            return conn.execute(results_sql).fetchall(), conn.execute(board_sql).fetchall()
    except Exception as exc:  # no tables yet
        if "contest_results" in str(exc) or "unable to open" in str(exc):
            return [], []
        raise


def dead_letters(client: Any) -> list[dict[str, Any]]:
    return [json.loads(raw) for c in CONTESTS for raw in client.lrange(KEYS.dead(queue_name(c)), 0, -1)]


def unsettled(client: Any) -> int:
    """Jobs still in a queue, a processing list or a retry set."""
    total = sum(client.llen(queue_name(c)) + client.zcard(KEYS.retry(queue_name(c))) for c in CONTESTS)
    return total + sum(client.llen(key) for key in client.scan_iter(match="corral:*:processing:*"))


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, str, str]:
    """(backend, where the test reads, the [options] line of the pool's config)."""
    if request.param == "sqlite":
        path = tmp_path / "contest.sqlite3"
        return "sqlite", str(path), f'contest_db = "{path}"'
    url = request.getfixturevalue("postgres_url")
    return "postgresql", url, f'database_url = "{url}"'


@pytest.mark.e2e
def test_no_submission_is_scored_twice_across_kills_and_a_reload(
    corral: Callable[..., Corral], redis_clean: RedisServer, database: tuple[str, str, str]
) -> None:
    backend, target, option = database
    rng = random.Random(20261121)
    traffic = make_traffic(rng)
    sup = corral(workers=3)
    sup.config.write_text(CONFIG.format(redis_url=redis_clean.url, database=option))
    started = time.monotonic()
    sup.start()
    sup.wait_all_ready(3, timeout_s=20)
    client = redis_clean.client()
    kills: list[int] = []
    busy_kills = 0
    for index, wave in enumerate(traffic.waves):
        slots = {s["slot"]: s for s in sup.wait_all_ready(3, timeout_s=20)["slots"]}
        with client.pipeline(transaction=False) as pipe:
            for queue, raw in wave:
                pipe.lpush(queue, raw)
            pipe.execute()
        if index in KILL_AFTER_WAVES:  # preferably a child with jobs in hand, some already scored
            slot = busy_slot(client, deadline_s=2.0)
            victim = slots[slot if slot is not None else rng.choice(list(slots))]
            os.kill(victim["pid"], signal.SIGKILL)
            kills.append(victim["pid"])
            busy_kills += slot is not None
            wait_replaced(sup, victim)
        if index == RELOAD_AFTER_WAVE:
            sup.send(signal.SIGHUP)
            wait_reloaded(sup, {s["pid"] for s in slots.values()})

    unique = {s.submission_id: s for s in traffic.valid}

    def settled() -> bool:
        results, _ = read_db(backend, target)
        done = len(results) >= len(unique) and len(dead_letters(client)) >= len(traffic.malformed)
        return done and unsettled(client) == 0

    wait_until(settled, timeout_s=40, interval_s=0.2, what=f"every submission settled\n{sup.output()}")
    elapsed_s = time.monotonic() - started
    status = sup.status()
    assert all(s["state"] == "ready" for s in status["slots"]), status
    # the faults hit work in hand: a kill found jobs in a processing list, and a recovery moved some
    assert busy_kills >= 1, "no kill caught a child holding jobs"
    assert re.search(r"recovered \S+ via slot \d+ in \d+ ms: \{'jobs': [1-9]", sup.log()), (
        "no recovery moved a job"
    )
    sup.send(signal.SIGTERM)
    assert sup.wait_exit(30) == 0

    results, board = read_db(backend, target)
    # every valid submission scored exactly once, with the right score
    assert len(results) == len(unique) == VALID
    for sid, contest, user, problem, points, solved, _ in results:
        s = unique[sid]
        assert (contest, user, problem) == (s.contest_id, s.user_id, s.problem_id)
        assert (points, bool(solved)) == (
            score_answer(problem, s.answer).points,
            score_answer(problem, s.answer).solved,
        )
    # the scoreboard is exactly what the unique submissions make: nothing counted twice
    assert {(c, u): Standing(u, t, n, k) for c, u, t, n, k in board} == expected_scoreboard(
        list(unique.values())
    )
    # the dead letters are exactly the malformed jobs, each once
    dead = dead_letters(client)
    tags = Counter(tag for record in dead for tag in TAG.findall(record["job"]))
    assert tags == Counter(traffic.malformed), tags
    assert all(
        r["error"].startswith("malformed") for r in dead if "-json-" in r["job"] or "-utf8-" in r["job"]
    )
    assert all("submission" in r["error"] for r in dead if not r["error"].startswith("malformed"))
    ignored = sum(row[6] for row in results)
    assert ignored >= DUPLICATES  # every copy pushed on purpose was recognised
    print(
        f"\ncontest e2e ({backend}): {VALID + DUPLICATES + len(traffic.malformed)} jobs pushed in {WAVES} waves; "
        f"scored {len(results)}, duplicates ignored {ignored} ({DUPLICATES} pushed twice on purpose, "
        f"{ignored - DUPLICATES} redelivered after kills/reload), dead-lettered {len(dead)} "
        f"(all {len(traffic.malformed)} malformed), kills {len(kills)} ({busy_kills} of a child with jobs in "
        f"hand), reloads 1, {elapsed_s:.1f}s"
    )
