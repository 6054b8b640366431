"""``corral pause/resume/schedules`` and ``enqueue --unique`` as an operator types them: straight
to Redis, no supervisor needed; every user mistake one line, exit 2, nothing changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corral.workers.jobs.keys import Keys
from tests.e2e.conftest import run_cli

KEYS = Keys()
CONFIG = """[redis]
url = "{url}"
[[queues]]
names = ["jobs"]
shards = 2
handler = "a:b"
[[streams]]
stream = "events"
partitions = 2
handler = "a:b"
[[schedules]]
name = "nightly"
cron = "0 3 * * *"
timezone = "Europe/Paris"
queue = "jobs"
"""


def config_of(tmp_path: Path, url: str) -> str:
    path = tmp_path / "corral.toml"
    path.write_text(CONFIG.format(url=url))
    return str(path)


def test_pause_and_resume_every_list_of_a_name(redis_clean: Any, tmp_path: Path) -> None:
    config, r = config_of(tmp_path, redis_clean.url), redis_clean.client()
    done = run_cli("pause", "jobs", "-c", config)
    assert done.returncode == 0 and "paused queue jobs (2 lists)" in done.stdout, done.stderr
    assert len(r.keys("*paused*")) == 2
    done = run_cli("pause", "events", "-c", config)
    assert done.returncode == 0 and "paused stream events" in done.stdout
    assert len(r.keys("*paused*")) == 4
    assert run_cli("resume", "jobs", "-c", config).returncode == 0
    assert run_cli("resume", "events", "-c", config).returncode == 0
    assert r.keys("*paused*") == []


def test_bad_names_and_unique_keys_are_one_line_exit_2(redis_clean: Any, tmp_path: Path) -> None:
    config, r = config_of(tmp_path, redis_clean.url), redis_clean.client()
    for args, words in (
        (("pause", "nope"), "'nope' is neither a queue nor a stream of this pool"),
        (("resume", "nope"), "'nope' is neither a queue nor a stream"),
        (("enqueue", "events", "{}", "--unique", "k"), "'events' is a stream of this pool, not a queue"),
        (("enqueue", "jobs", "{}", "--unique", "k", "--unique-for", "soon"), "--unique-for: 'soon' is not"),
        (("enqueue", "jobs", "{}", "--at", "2020-01-01T00:00:00Z"), "is in the past"),
    ):
        done = run_cli(*args, "-c", config)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
    assert r.dbsize() == 0  # nothing changed


def test_a_duplicate_unique_enqueue_is_reported(redis_clean: Any, tmp_path: Path) -> None:
    config, r = config_of(tmp_path, redis_clean.url), redis_clean.client()
    first = run_cli("enqueue", "jobs", '{"n": 1}', "--unique", "report-7", "-c", config)
    assert first.returncode == 0, first.stderr
    again = run_cli("enqueue", "jobs", '{"n": 2}', "--unique", "report-7", "-c", config)
    assert again.returncode == 1 and first.stdout.strip() in again.stderr, again.stderr
    assert "already on jobs{jobs#" in again.stderr
    assert sum(r.llen(key) for key in r.keys("jobs*")) == 1


def test_schedules_lists_last_and_next_ticks(redis_clean: Any, tmp_path: Path) -> None:
    config = config_of(tmp_path, redis_clean.url)
    done = run_cli("schedules", "-c", config)
    assert done.returncode == 0 and "nightly" in done.stdout and "cron 0 3 * * *" in done.stdout, done.stdout
    [row] = json.loads(run_cli("schedules", "--json", "-c", config).stdout)
    assert row["name"] == "nightly" and row["last_tick_s"] is None and row["fired"] == 0
    assert row["next_tick_s"] % 3600 == 0  # 03:00 Paris is a whole hour in UTC
