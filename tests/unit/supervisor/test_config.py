"""corral.toml validation: good files load, every bad key is named, nothing half-loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.supervisor.config import ConfigError, load

GOOD = """
[pool]
name = "matchmaker"
workers = 4
worker = "corral.entrypoints.ticker:TickerWorker"
ready_timeout_s = 20
graceful_timeout_s = 5.5

[restart]
max_restarts = 3

[health]
max_memory_mb = 512
max_jobs = 1000
max_jobs_jitter = 100

[paths]
state_dir = "state"
log_dir = "/var/log/corral"

[logging]
level = "debug"
json = true
retention = "7 days"

[options]
tick_interval_s = 0.5
nested = { a = 1 }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "corral.toml"
    path.write_text(text)
    return path


def test_a_good_file_loads_with_units_and_paths_resolved(tmp_path: Path) -> None:
    config = load(write(tmp_path, GOOD))
    assert (config.pool_name, config.workers, config.worker) == (
        "matchmaker",
        4,
        "corral.entrypoints.ticker:TickerWorker",
    )
    assert config.pool.ready_timeout_s == 20.0 and isinstance(config.pool.ready_timeout_s, float)
    assert config.pool.graceful_timeout_s == 5.5
    assert config.pool.policy.max_restarts == 3
    assert (config.pool.max_memory_mb, config.pool.max_jobs, config.pool.max_jobs_jitter) == (512, 1000, 100)
    assert config.state_dir == tmp_path.resolve() / "state"
    assert config.log_dir == Path("/var/log/corral")
    assert config.control_socket == config.state_dir / "corral.sock"
    assert config.logging.level == "DEBUG" and config.logging.json and config.logging.retention == "7 days"
    assert config.pool.options == {"tick_interval_s": 0.5, "nested": {"a": 1}}


def test_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path, '[pool]\nworker = "a.b:C"\n'))
    assert config.workers == 2 and config.pool_name == "corral"
    assert config.pool.max_memory_mb is None and config.pool.max_jobs is None
    assert config.log_dir == tmp_path.resolve() / "logs"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[pool]\nworker = "a:b"\nworkers = "four"\n', "pool.workers: must be an int, got 'four'"),
        ('[pool]\nworker = "a:b"\nworkers = -1\n', "pool.workers: must be >= 0, got -1"),
        ('[pool]\nworker = "a:b"\nworkers = true\n', "pool.workers: must be an int, got True"),
        ('[pool]\nworker = "nocolon"\n', "pool.worker: must be an import path"),
        ("[pool]\nworkers = 2\n", "pool.worker: required"),
        ('[pool]\nworker = "a:b"\nwokers = 2\n', "pool.wokers: unknown key"),
        ('[pool]\nworker = "a:b"\n[pol]\nx = 1\n', "[pol]: unknown section"),
        ('[pool]\nworker = "a:b"\nready_timeout_s = 0\n', "pool.ready_timeout_s: must be > 0, got 0"),
        ('[pool]\nworker = "a:b"\nname = "has space"\n', "pool.name: must be letters"),
        ('[pool]\nworker = "a:b"\n[logging]\nlevel = "LOUD"\n', "logging.level: must be one of"),
        ('[pool]\nworker = "a:b"\n[health]\nmax_memory_mb = -5\n', "health.max_memory_mb: must be > 0"),
        ("pool = 3\n", "[pool]: must be a table"),
        ('[pool]\nworker = "a:b"\nwokers = 2\n', "pool.wokers: unknown key (did you mean 'workers'?)"),
        ('[pool]\nworker = "a:b"\n[helth]\nx = 1\n', "[helth]: unknown section (did you mean 'health'?)"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text))
    assert expected in str(caught.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = '[pool]\nworker = "a:b"\nworkers = "x"\nready_timeout_s = -1\n[health]\nmax_jobs = 0\n'
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text))
    message = str(caught.value)
    for key in ("pool.workers", "pool.ready_timeout_s", "health.max_jobs"):
        assert key in message


def test_missing_and_unparsable_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write(tmp_path, "[pool\nworkers = 2\n"))


def test_metrics_listen_is_validated(tmp_path: Path) -> None:
    ok = load(write(tmp_path, '[pool]\nworker = "a:b"\n[metrics]\nlisten = "127.0.0.1:9464"\n'))
    assert ok.metrics_listen == "127.0.0.1:9464"
    with pytest.raises(ConfigError, match=r"metrics\.listen: must be 'host:port'"):
        load(write(tmp_path, '[pool]\nworker = "a:b"\n[metrics]\nlisten = "9464"\n'))


def test_streams_and_queues_are_checked_against_the_specs(tmp_path: Path) -> None:
    text = """
[pool]
name = "mm"
[[streams]]
stream = "game-events"
handler = "apps.mm:on_event"
partitions = 4
[[queues]]
pattern = "contest:submissions:*"
handler = "apps.contest:score"
max_attempts = 3
"""
    config = load(write(tmp_path, text))
    assert config.worker == "corral.workers.base:BaseWorker"  # pool.worker may be left out now
    stream = config.work.streams[0]
    assert (stream.stream, stream.group, stream.partitions) == ("game-events", "mm", 4)
    assert config.work.queues[0].pattern == "contest:submissions:*"
    assert config.work.queues[0].max_attempts == 3
    assert config.redis_url == f"unix://{tmp_path.resolve() / 'run' / 'redis.sock'}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[queues]]\nhandler = "a:b"\n', "queues[0]: needs names, pattern or registry"),
        ('[[queues]]\nnames = ["q"]\n', "queues[0].handler: required"),
        ('[[queues]]\nnames = "q"\nhandler = "a:b"\n', "queues[0].names: must be a list of strings"),
        ('[[queues]]\nnames = ["q"]\nhandler = "a:b"\nbatch_size = 0\n', "queues[0].batch_size: must be > 0"),
        ('[[queues]]\nnames = ["q"]\nhandler = "nope"\n', "queues[0].handler: must be an import path"),
        ('[[streams]]\nstream = "s"\nhandler = "a:b"\nblock_ms = -1\n', "streams[0].block_ms: must be > 0"),
        ('[[streams]]\nstream = "s"\nhandler = "a:b"\nbogus = 1\n', "streams[0].bogus: unknown key"),
        ('[[streams]]\nhandler = "a:b"\n', "streams[0].stream: required"),
        (
            '[redis]\nurl = "http://x"\n[[streams]]\nstream = "s"\nhandler = "a:b"\n',
            "redis.url: must start with",
        ),
        ("[pool]\nworkers = 1\n", "pool.worker: required when no [[streams]], [[queues]] or [[schedules]]"),
        ('[[streams]]\nstream = "s"\nhandler = "a:b"\nblock_ms = 0\n', "streams[0].block_ms: must be > 0"),
        (
            '[redis]\nsocket_timeout_s = 2\n[[streams]]\nstream = "s"\nhandler = "a:b"\nblock_ms = 2000\n',
            "streams[0].block_ms: must be below redis.socket_timeout_s (2 s), got 2000",
        ),
        (
            '[[queues]]\nnames = ["q"]\nhandler = "a:b"\nblock_s = 5\n',
            "queues[0].block_s: must be below redis.",
        ),
        (
            '[[queues]]\nnames = ["q", ""]\nhandler = "a:b"\n',
            "queues[0].names: must be a non-empty Redis key (each)",
        ),
        ('[[streams]]\nstream = ""\nhandler = "a:b"\n', "streams[0].stream: must be a non-empty Redis key"),
        (
            '[redis]\nkey_prefix = ""\n[[queues]]\nnames = ["q"]\nhandler = "a:b"\n',
            "redis.key_prefix: must be",
        ),
        (
            '[redis]\nkey_prefix = "c*"\n[[queues]]\nnames = ["q"]\nhandler = "a:b"\n',
            "redis.key_prefix: must be",
        ),
        (
            '[redis]\nmember_ttl_s = 0.001\n[[queues]]\nnames = ["q"]\nhandler = "a:b"\n',
            "redis.member_ttl_s: must be >= 1",
        ),
        (
            '[[queues]]\npattern = "q:*"\nshards = 4\nhandler = "a:b"\n',
            "queues[0].shards: spreads the listed",
        ),
        (
            '[[queues]]\nnames = ["q{x}"]\nshards = 4\nhandler = "a:b"\n',
            "queues[0].shards: a sharded queue's name",
        ),
        ('[[queues]]\nnames = ["q"]\nshards = 0\nhandler = "a:b"\n', "queues[0].shards: must be >= 1"),
        ('[redis]\nurl = "http://x"\n[[queues]]\nnames = ["q"]\nhandler = "a:b"\n', "redis+sentinel://"),
        (
            '[redis]\ncluster = "yes"\n[[queues]]\nnames = ["q"]\nhandler = "a:b"\n',
            "redis.cluster: must be a bool",
        ),
        ('[pool]\nhost = "a:b"\n[[queues]]\nnames = ["q"]\nhandler = "a:b"\n', "pool.host: must be"),
        (
            '[redis]\nmember_ttl_s = 10\n[[queues]]\nnames = ["q"]\nhandler = "a:b"\n',
            "redis.member_ttl_s: 10 s would fence a hung worker before its hang is detected "
            "(health.heartbeat_interval_s + heartbeat_timeout_s = 15 s): raise it above 18.75 s",
        ),
    ],
)
def test_bad_streams_and_queues_are_named(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text))
    assert expected in str(caught.value)


def test_redis_url_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_REDIS_URL", "redis://:secret@db:6379/2")
    config = load(write(tmp_path, '[[queues]]\nnames = ["q"]\nhandler = "a:b"\n'))
    assert config.work.redis.url == "redis://:secret@db:6379/2"
    assert config.redis_url == "redis://:secret@db:6379/2"


def test_host_identity_comes_from_the_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, '[pool]\nhost = "web-1"\n[[queues]]\nnames = ["q"]\nhandler = "a:b"\n')
    assert load(path).pool.host == "web-1"
    monkeypatch.setenv("CORRAL_HOST", "web-2")
    assert load(path).pool.host == "web-2"
    monkeypatch.setenv("CORRAL_HOST", "web 2")
    with pytest.raises(ConfigError, match="CORRAL_HOST: must be"):
        load(path)


def test_a_bad_queue_does_not_also_claim_that_pool_worker_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, '[[queues]]\nnames = "q"\nhandler = "a:b"\n'))
    message = str(caught.value)
    assert "queues[0].names: must be a list of strings" in message
    assert "pool.worker" not in message


Q = '[[queues]]\nnames = ["a", "b"]\nhandler = "m:f"\n'
S = '[[schedules]]\nname = "s"\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (Q + 'rate_limit = "fast"\n', "queues[0].rate_limit: must be a rate like '200/s'"),
        (Q + 'rate_limit = "0/s"\n', "queues[0].rate_limit: must be a rate"),
        (Q + 'order = "random"\n', "queues[0].order: must be 'rotate', 'strict' or 'weighted'"),
        (Q + 'order = "weighted"\nweights = [1]\n', "queues[0].weights: one weight > 0 for each name"),
        (Q + "weights = [1, 2]\n", "queues[0].weights: only with order = 'weighted'"),
        (Q + 'order = "weighted"\nweights = ["a", "b"]\n', "queues[0].weights: must be a list of integers"),
        (
            S + 'cron = "fast"\nqueue = "q"\n',
            "schedules[0].cron: must be a cron expression like '*/5 * * * *'",
        ),
        (S + 'cron = "61 * * * *"\nqueue = "q"\n', "schedules[0].cron: must be a cron expression"),
        (S + 'every_s = 5\ntimezone = "Mars/Base"\nqueue = "q"\n', "schedules[0].timezone: must be an IANA"),
        (S + 'every_s = 5\ncron = "* * * * *"\nqueue = "q"\n', "schedules[0]: needs either cron or every_s"),
        (S + "every_s = 5\n", "schedules[0]: needs either queue (enqueue a job) or handler"),
        (
            S + 'every_s = 5\nqueue = "q"\ncatch_up = "never"\n',
            "schedules[0].catch_up: must be 'skip', 'once'",
        ),
        (
            S + 'every_s = 5\nqueue = "q"\n' + S + 'every_s = 1\nqueue = "q"\n',
            "schedules[1].name: 's' is the",
        ),
    ],
)
def test_bad_job_control_settings_are_named(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text))
    assert expected in str(caught.value)


def test_schedules_alone_make_a_pool(tmp_path: Path) -> None:
    config = load(write(tmp_path, S + 'cron = "*/5 * * * *"\ntimezone = "Europe/Paris"\nqueue = "q"\n'))
    [schedule] = config.work.schedules
    assert (schedule.cron, schedule.timezone, schedule.catch_up, schedule.overlap) == (
        "*/5 * * * *",
        "Europe/Paris",
        "skip",
        False,
    )


def test_a_dashboard_reachable_from_other_machines_needs_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = Q + '[dashboard]\nlisten = "0.0.0.0:8080"\n'
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text))
    assert "dashboard.listen: 0.0.0.0:8080 is reachable from other machines: set dashboard.token" in str(
        caught.value
    )
    with pytest.raises(ConfigError):  # read-only pages still show payloads and logs
        load(write(tmp_path, text + "read_only = true\n"))
    local = load(write(tmp_path, Q + '[dashboard]\nlisten = "127.0.0.1:8080"\n')).dashboard
    assert local.token is None and local.app == "corral.entrypoints.dashboard:mount"
    monkeypatch.setenv("CORRAL_DASHBOARD_TOKEN", "from-env")
    assert load(write(tmp_path, text)).dashboard.token == "from-env"
