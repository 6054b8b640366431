"""``corral dead`` through the real CLI on a test Redis: counts, list, show, retry and purge; a bulk
retry of 10,000 letters interrupted by Ctrl-C and run again loses none and doubles none; every user
mistake is one line, exit 2 (an unknown ID: exit 1; Redis away: exit 5), and changes nothing."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from corral.workers.consumers.base import DeadLetter
from corral.workers.jobs.keys import Keys
from corral.workers.jobs.wire import encode_job
from tests.e2e.conftest import CORRAL, REPO_ROOT, run_cli, wait_until

pytestmark = pytest.mark.e2e

KEYS = Keys()
DEAD = KEYS.dead("jobs")
N = 10_000


def write_config(tmp_path: Path, url: str) -> str:
    path = tmp_path / "corral.toml"
    path.write_text(
        f'[redis]\nurl = "{url}"\n'
        '[[queues]]\nnames = ["jobs"]\nhandler = "a:b"\n'
        '[[streams]]\nstream = "events"\nhandler = "a:b"\n'
    )
    return str(path)


def plant(r: Any, n: int, age_s: float = 0.0) -> list[str]:
    """``n`` dead letters of ``jobs`` (jobs ``job-<i>`` that failed 5 times), oldest first."""
    ids = [f"job-{i}" for i in range(n)]
    now = time.time() - age_s
    for start in range(0, n, 1000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(start + 1000, n)):
            job = encode_job({"n": i}, ids[i], attempt=5)
            letter = DeadLetter("jobs", ids[i], 5, f"ValueError: bad n {i}", "h:p:w1", now - n + i)
            pipe.lpush(DEAD, letter.queue_record(job))
        pipe.execute()
    return ids


def dead(config: str, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return run_cli("dead", "-c", config, *args, timeout_s=timeout_s)


def test_an_interrupted_bulk_retry_run_again_loses_and_doubles_nothing(
    redis_clean: Any, tmp_path: Path
) -> None:
    r = redis_clean.client()
    config = write_config(tmp_path, redis_clean.url)
    ids = plant(r, N)
    first = subprocess.Popen(
        [*CORRAL, "dead", "-c", config, "retry", "jobs", "--all"],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def midway() -> int | None:
            left = int(r.llen(DEAD))
            assert left > 0, "the retry finished before it could be interrupted"
            return left if left < N // 2 else None

        seen = wait_until(midway, timeout_s=30, interval_s=0.001, what="the bulk retry under way")
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    left = int(r.llen(DEAD))
    print(f"\ninterrupted with {seen} of {N} left; {left} still dead after it stopped")
    assert first.returncode == 130, (first.returncode, out, err)
    assert 0 < left < N, left  # the fault happened mid-way
    assert err == f"corral: interrupted: retried {N - left} dead letters of jobs; run it again for the rest\n"
    assert int(r.llen("jobs")) + left == N  # at the instant of the interruption: none lost, none doubled

    second = dead(config, "retry", "jobs", "--all")
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith(f"retried {left} dead letters of jobs"), second.stdout
    jobs = [json.loads(raw) for raw in r.lrange("jobs", 0, -1)]
    counts = Counter(job["id"] for job in jobs)
    assert set(counts) == set(ids) and set(counts.values()) == {1}  # each of the 10,000 exactly once
    assert {job["attempt"] for job in jobs} == {1}
    assert r.llen(DEAD) == 0
    r.close()


def test_bulk_retry_rate(redis_clean: Any, tmp_path: Path) -> None:
    r = redis_clean.client()
    config = write_config(tmp_path, redis_clean.url)
    plant(r, N)
    started = time.monotonic()
    done = dead(config, "retry", "jobs", "--all")
    wall_s = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    match = re.fullmatch(rf"retried {N} dead letters of jobs in (\d+\.\d+)s\n", done.stdout)
    assert match, done.stdout
    inside_s = float(match.group(1))
    assert r.llen("jobs") == N and r.llen(DEAD) == 0
    print(
        f"\ncorral dead retry --all: {N} letters in {inside_s:.2f}s ({N / inside_s:,.0f} letters/s); "
        f"{wall_s:.2f}s with the process start ({N / wall_s:,.0f} letters/s)"
    )
    r.close()


def test_counts_list_show_retry_and_purge(redis_clean: Any, tmp_path: Path) -> None:
    r = redis_clean.client()
    config = write_config(tmp_path, redis_clean.url)
    plant(r, 5, age_s=7200)  # failed two hours ago
    error = "Traceback (most recent call last):\n  x\nKeyError: 'k'"
    r.lpush(DEAD, DeadLetter("jobs", "fresh", 2, error, "w").queue_record(encode_job(1, "fresh", attempt=2)))

    counts = dead(config)
    assert counts.returncode == 0, counts.stderr
    table = {line.split()[0]: line.split()[1:] for line in counts.stdout.splitlines() if line.strip()}
    assert table["jobs"] == ["queue", "6"] and table["events"] == ["stream", "0"], counts.stdout
    listed = dead(config, "list", "jobs", "--limit", "2")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines() if line.strip()]
    assert rows[0] == ["ID", "WHEN", "ATTEMPTS", "SOURCE", "ERROR"], listed.stdout
    assert rows[2][0] == "fresh" and rows[2][3:] == ["2", "jobs", "KeyError:", "'k'"], listed.stdout
    assert rows[3][0] == "job-4" and listed.stdout.endswith("\n2 shown of 6 dead letters of jobs\n")
    recent = json.loads(dead(config, "list", "jobs", "--since", "1h", "--json").stdout)
    assert [letter["id"] for letter in recent] == ["fresh"]
    grepped = json.loads(dead(config, "list", "jobs", "--grep", "BAD N 3", "--json").stdout)
    assert [letter["id"] for letter in grepped] == ["job-3"]

    shown = dead(config, "show", "jobs", "job-3")
    assert shown.returncode == 0, shown.stderr
    assert '"n": 3' in shown.stdout and "ValueError: bad n 3" in shown.stdout and "h:p:w1" in shown.stdout

    retried = dead(config, "retry", "jobs", "job-1", "job-2")
    assert retried.returncode == 0 and retried.stdout.startswith("retried 2 dead letters of jobs"), retried
    assert sorted(json.loads(raw)["id"] for raw in r.lrange("jobs", 0, -1)) == ["job-1", "job-2"]
    purged = dead(config, "purge", "jobs", "--before", "1h")
    assert purged.returncode == 0 and purged.stdout.startswith("purged 3 dead letters of jobs"), purged
    assert dead(config, "retry", "jobs", "--grep", "keyerror").stdout.startswith("retried 1 dead letter of")
    assert r.llen(DEAD) == 0 and r.llen("jobs") == 3
    r.close()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["list", "nope"], 2, "'nope' is neither a queue nor a stream of this pool (known: jobs, events)"),
        (["retry", "jobs"], 2, "dead retry: say which: ID..., --all or --grep TEXT"),
        (["retry", "jobs", "--all", "job-1"], 2, "--all goes alone"),
        (["purge", "jobs", "--grep", "x", "job-1"], 2, "give IDs or --grep, not both"),
        (["list", "jobs", "--since", "yesterday"], 2, "--since: 'yesterday' is neither a duration"),
        (["purge", "jobs", "--before", "2020-01-01T00:00:00"], 2, "has no time zone"),
        (["list", "jobs", "--limit", "lots"], 2, "--limit: 'lots' is not a whole number"),
        (["retry", "jobs", "--grep"], 2, "dead retry: argument --grep: expected one argument"),
        (["show", "jobs"], 2, "dead show: the following arguments are required: id"),
        (["retry", "jobs", "--al"], 2, "unrecognized arguments: --al"),
        (["retry", "jobs", "job-1", "nope"], 1, "dead retry: no dead letter 'nope' in jobs; nothing changed"),
        (["purge", "jobs", "nope"], 1, "dead purge: no dead letter 'nope' in jobs; nothing changed"),
        (["show", "jobs", "nope"], 1, "dead show: no dead letter 'nope' in jobs"),
    ],
)
def test_mistakes_are_one_line_and_change_nothing(
    redis_clean: Any, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    r = redis_clean.client()
    config = write_config(tmp_path, redis_clean.url)
    plant(r, 3)
    before = r.lrange(DEAD, 0, -1)
    done = dead(config, *args)
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and message in done.stderr and done.stdout == "", done.stderr
    assert r.lrange(DEAD, 0, -1) == before and r.llen("jobs") == 0
    r.close()


def test_redis_away_is_one_line_and_exit_5(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"unix://{tmp_path}/nothing-here.sock")
    for args in ([], ["list", "jobs"], ["retry", "jobs", "--all"]):
        done = dead(config, *args)
        assert done.returncode == 5, (args, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1 and "cannot reach Redis at unix://" in done.stderr, done.stderr


def test_the_embedded_server_away_says_it_runs_only_with_the_pool(tmp_path: Path) -> None:
    config = tmp_path / "corral.toml"  # no [redis] url: the embedded Valkey, which is not running
    config.write_text('[[queues]]\nnames = ["jobs"]\nhandler = "a:b"\n')
    done = dead(str(config), "list", "jobs")
    assert done.returncode == 5, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1, done.stderr
    assert "the embedded Valkey runs only while `corral run` does" in done.stderr, done.stderr
