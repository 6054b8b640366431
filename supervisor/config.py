"""``corral.toml``: load, validate (every error names its key), and turn into pool settings.

Every table is read by ``supervisor.schema`` from the fields of its dataclass, where each default
is written once: ``[pool]`` from ``PoolTable`` and ``PoolSettings`` (its ``table="pool"`` fields),
``[health]`` from ``PoolSettings``, ``[restart]`` from ``RestartPolicy``, ``[paths]``, ``[logging]``
and ``[metrics]`` from the tables below, ``[redis]``, ``[[streams]]`` and ``[[queues]]`` from the
contract's specs. Relative paths are taken from the config file's folder. Unknown sections and keys
are errors (a typo must not be silently ignored); all problems are reported at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from corral.contract import (
    LEASE_FENCE_AT,
    Check,
    QueueSpec,
    RedisSpec,
    ScheduleSpec,
    StreamSpec,
    WorkSpec,
    setting,
)
from corral.supervisor import schema
from corral.supervisor.settings import PoolSettings
from corral.supervisor.states import RestartPolicy

REDIS_URL_ENV = "CORRAL_REDIS_URL"  # overrides [redis] url: secrets stay out of the file
DASHBOARD_TOKEN_ENV = "CORRAL_DASHBOARD_TOKEN"  # overrides [dashboard] token
HOST_ENV = "CORRAL_HOST"  # overrides [pool] host: one file for every host of a deployment
DEFAULT_WORKER = "corral.workers.base:BaseWorker"  # runs just the declared streams and queues


class ConfigError(Exception):
    """The configuration is unusable; the message lists every problem, each naming its key."""


@dataclass(frozen=True)
class PoolTable:
    name: str = setting("corral", Check.NAME)  # consumer names, key prefix, logs
    workers: int = 2  # number of slots
    worker: str | None = setting(None, Check.IMPORT_PATH)  # a BaseWorker subclass or factory
    setup: str | None = setting(None, Check.IMPORT_PATH)  # parent side: setup(pool), before any child


@dataclass(frozen=True)
class PathsTable:
    state_dir: str = "run"  # control socket, pid file, embedded Redis
    log_dir: str = "logs"
    python_path: tuple[str, ...] = (".",)  # where the children (and pool.setup) import code from


@dataclass(frozen=True)
class LogSettings:
    level: str = setting("INFO", Check.LOG_LEVEL)
    json: bool = False
    rotation: str | int = "50 MB"  # loguru rotation: a size ("50 MB", bytes) or a time ("daily")
    retention: int | str = 10  # rotated files kept: a count, or an age ("7 days")
    stderr: bool = True  # echo the supervisor's own log on stderr
    summary_interval_s: float = 10.0  # a one-line summary of the work's rates at INFO; 0: none


@dataclass(frozen=True)
class MetricsTable:
    listen: str | None = setting(None, Check.LISTEN)  # "host:port" of the Prometheus endpoint


@dataclass(frozen=True)
class DashboardTable:
    listen: str | None = setting(None, Check.LISTEN)  # "host:port" of the web dashboard; None: off
    token: str | None = None  # actions need it (CORRAL_DASHBOARD_TOKEN overrides); never shown
    read_only: bool = False  # no actions at all: the pages only show
    app: str = setting("corral.entrypoints.dashboard:mount", Check.IMPORT_PATH)  # what is mounted
    history_s: float = setting(900.0, Check.POSITIVE)  # the graphs' span, kept in Redis


LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]", "")


# section -> the dataclasses its keys come from, with the table tag of their fields ("": all)
SECTIONS: dict[str, list[tuple[type[Any], str]]] = {
    "pool": [(PoolTable, ""), (PoolSettings, "pool")],
    "health": [(PoolSettings, "health")],
    "restart": [(RestartPolicy, "")],
    "paths": [(PathsTable, "")],
    "logging": [(LogSettings, "")],
    "metrics": [(MetricsTable, "")],
    "dashboard": [(DashboardTable, "")],
}
FREE_FORM = ("options",)  # handed to every child as WorkerContext.options
WORK = ("redis", "streams", "queues", "schedules")


@dataclass(frozen=True)
class Where:
    """Where a pool keeps its files: enough for the CLI to find a running supervisor."""

    state_dir: Path
    log_dir: Path

    @property
    def control_socket(self) -> Path:
        return self.state_dir / "corral.sock"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "corral.pid"


@dataclass(frozen=True)
class Config:
    path: Path
    pool_name: str
    workers: int
    worker: str
    state_dir: Path
    log_dir: Path
    logging: LogSettings
    pool: PoolSettings
    work: WorkSpec = field(default_factory=WorkSpec)
    setup: str | None = None  # the parent-side setup function: setup(pool)
    python_path: tuple[Path, ...] = ()  # put first on the import path of the children and of setup
    metrics_listen: str | None = None  # "host:port" of the Prometheus endpoint; None: off
    dashboard: DashboardTable = field(default_factory=DashboardTable)
    uses_redis: bool = False  # a [redis] table, or streams/queues: the children get a Redis client

    digest: str = ""  # sha256 of the file as loaded: the CLI tells when the file on disk differs

    @property
    def where(self) -> Where:
        return Where(self.state_dir, self.log_dir)

    @property
    def control_socket(self) -> Path:
        return self.where.control_socket

    @property
    def redis_url(self) -> str:
        """The configured server, or the embedded one's socket in the state dir."""
        return self.work.redis.url or f"unix://{self.state_dir / 'redis.sock'}"

    @property
    def pid_file(self) -> Path:
        return self.where.pid_file


def redacted(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``: for logs, status and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def locate(path: str | Path) -> Where:
    """The state and log dirs named by the config at ``path``, read leniently: a config that does
    not validate (or parse) still says where its running supervisor listens."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        data = {}
    table = data.get("paths")
    values = schema.read(PathsTable, table if isinstance(table, dict) else {}, "paths", [])
    paths = PathsTable(**values)
    base = path.resolve().parent
    return Where(base / paths.state_dir, base / paths.log_dir)


def load(path: str | Path) -> Config:
    """Read and validate a config file; raises ``ConfigError`` naming every bad key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return dataclasses.replace(parse(data, path), digest=digest(text))


def parse(data: dict[str, Any], path: Path) -> Config:
    errors: list[str] = []
    known = (*SECTIONS, *FREE_FORM, *WORK)
    errors.extend(
        f"[{name}]: unknown section{schema.did_you_mean(name, known)} (known: {', '.join(sorted(known))})"
        for name in data
        if name not in known
    )
    tables = {name: _table(data, name, errors) for name in (*SECTIONS, *FREE_FORM)}
    values = {
        (name, cls): schema.read(cls, tables[name], name, errors, tag)
        for name, parts in SECTIONS.items()
        for cls, tag in parts
    }
    for name, parts in SECTIONS.items():
        keys = {key for cls, tag in parts for key in schema.keys_of(cls, tag)}
        schema.unknown_keys(tables[name], keys, name, errors)
    pool = PoolTable(**values["pool", PoolTable])
    work = parse_work(data, pool.name, errors)
    worker = pool.worker
    if worker is None:
        if not any(data.get(name) for name in WORK[1:]):  # declared, even if one has an error
            errors.append(
                "pool.worker: required when no [[streams]], [[queues]] or [[schedules]] are declared"
            )
        worker = DEFAULT_WORKER
    logging = LogSettings(**values["logging", LogSettings])
    logging = dataclasses.replace(logging, level=logging.level.upper())
    pool_values = host_of(values["pool", PoolSettings], errors)
    settings = PoolSettings(
        **pool_values,
        **values["health", PoolSettings],
        policy=RestartPolicy(**values["restart", RestartPolicy]),
        options=tables["options"],
        log_level=logging.level,
        log_json=logging.json,
    )
    if "redis" in data or not work.empty:
        errors += lease_problems(settings, work.redis)
    paths = PathsTable(**values["paths", PathsTable])
    dashboard = dashboard_of(values["dashboard", DashboardTable], errors)
    if errors:
        raise ConfigError(f"{path}: invalid configuration:\n" + "\n".join(f"  - {e}" for e in errors))
    base = path.resolve().parent
    return Config(
        path=path.resolve(),
        pool_name=pool.name,
        workers=pool.workers,
        worker=worker,
        state_dir=base / paths.state_dir,
        log_dir=base / paths.log_dir,
        logging=logging,
        pool=settings,
        work=work,
        setup=pool.setup,
        python_path=tuple(base / p for p in paths.python_path),
        metrics_listen=MetricsTable(**values["metrics", MetricsTable]).listen,
        dashboard=dashboard,
        uses_redis="redis" in data or not work.empty,
    )


def lease_problems(settings: PoolSettings, redis: RedisSpec) -> list[str]:
    """Hang detection must end a child before its lease can lapse: a handler that holds the GIL
    stops the lease's threads too, and only the heartbeat's SIGABRT ends it (docs/design.md, 5)."""
    hang_s = settings.heartbeat_interval_s + settings.heartbeat_timeout_s
    if redis.member_ttl_s * LEASE_FENCE_AT > hang_s:
        return []
    return [
        f"redis.member_ttl_s: {redis.member_ttl_s:g} s would fence a hung worker before its hang is "
        f"detected (health.heartbeat_interval_s + heartbeat_timeout_s = {hang_s:g} s): raise it above "
        f"{hang_s / LEASE_FENCE_AT:g} s, or lower those"
    ]


def host_of(pool_values: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    """``[pool]``'s settings, with the host identity from ``CORRAL_HOST`` when it is set."""
    if not os.environ.get(HOST_ENV):
        return pool_values
    host = os.environ[HOST_ENV]
    if schema.check(host, Check.NAME):
        errors.append(f"{HOST_ENV}: must be {Check.NAME.value}, got {host!r}")
    return {**pool_values, "host": host}


def dashboard_of(values: dict[str, Any], errors: list[str]) -> DashboardTable:
    """``[dashboard]``; its token may come from the environment. A dashboard reachable from other
    machines must have a token: its actions scale, reload and retry, its pages show payloads."""
    if os.environ.get(DASHBOARD_TOKEN_ENV):
        values = {**values, "token": os.environ[DASHBOARD_TOKEN_ENV]}
    board = DashboardTable(**values)
    host = (board.listen or "").rpartition(":")[0]
    if board.listen and host not in LOOPBACK and not board.token:
        errors.append(
            f"dashboard.listen: {board.listen} is reachable from other machines: set dashboard.token "
            f"(or {DASHBOARD_TOKEN_ENV}); there every page needs it"
        )
    return board


def parse_work(data: dict[str, Any], pool_name: str, errors: list[str]) -> WorkSpec:
    """``[redis]``, ``[[streams]]`` and ``[[queues]]``, checked against the contract's specs."""
    redis_table = data.get("redis", {})
    if isinstance(redis_table, dict) and os.environ.get(REDIS_URL_ENV):
        redis_table = {**redis_table, "url": os.environ[REDIS_URL_ENV]}
    redis = schema.build(RedisSpec, redis_table, "redis", errors) or RedisSpec()
    streams, queues = [], []
    for index, table in enumerate(_array(data, "streams", errors)):
        stream = schema.build(StreamSpec, table, f"streams[{index}]", errors)
        if stream is not None:
            streams.append(dataclasses.replace(stream, group=stream.group or pool_name))
    for index, table in enumerate(_array(data, "queues", errors)):
        queue = schema.build(QueueSpec, table, f"queues[{index}]", errors)
        problem = queue_problem(queue) if queue is not None else "invalid"
        if problem is None and queue is not None:
            queues.append(queue)
        elif queue is not None:
            errors.append(f"queues[{index}]{problem}")
    _check_blocking(redis, streams, queues, errors)
    schedules = parse_schedules(data, errors)
    return WorkSpec(redis=redis, streams=tuple(streams), queues=tuple(queues), schedules=schedules)


def parse_schedules(data: dict[str, Any], errors: list[str]) -> tuple[ScheduleSpec, ...]:
    schedules: list[ScheduleSpec] = []
    for index, table in enumerate(_array(data, "schedules", errors)):
        schedule = schema.build(ScheduleSpec, table, f"schedules[{index}]", errors)
        if schedule is None:
            continue
        problem = schedule_problem(schedule, {s.name for s in schedules})
        if problem:
            errors.append(f"schedules[{index}]{problem}")
        else:
            schedules.append(schedule)
    return tuple(schedules)


def schedule_problem(schedule: ScheduleSpec, names: set[str]) -> str | None:
    if (schedule.cron is None) == (schedule.every_s is None):
        return ": needs either cron or every_s (one of them)"
    if (schedule.queue is None) == (schedule.handler is None):
        return ": needs either queue (enqueue a job) or handler (run it), one of them"
    if schedule.name in names:
        return f".name: {schedule.name!r} is the name of another schedule"
    return None


def queue_problem(queue: QueueSpec) -> str | None:
    """What is wrong with a well-typed ``[[queues]]`` table as a whole (``.key: text``), or None."""
    if not (queue.names or queue.pattern or queue.registry):
        return ": needs names, pattern or registry"
    if queue.shards > 1 and not queue.names:
        return ".shards: spreads the listed names; a pattern or registry finds its lists itself"
    if queue.shards > 1 and any("{" in name or "}" in name for name in queue.names):
        return ".shards: a sharded queue's name cannot hold '{' or '}' (each shard gets its own hash tag)"
    if queue.order != "rotate" and not queue.names:
        return f".order: {queue.order!r} ranks the listed names; a pattern or registry has none"
    if queue.order == "weighted" and (len(queue.weights) != len(queue.names) or 0 in queue.weights):
        return ".weights: one weight > 0 for each name (order = 'weighted')"
    if queue.weights and queue.order != "weighted":
        return ".weights: only with order = 'weighted'"
    if queue.rate_limit and queue.at_most_once:
        return ".rate_limit: needs the reliable take (at_most_once = false): the limit lives in its script"
    return None


def _check_blocking(
    redis: RedisSpec, streams: list[StreamSpec], queues: list[QueueSpec], errors: list[str]
) -> None:
    """A blocking read must return before the client's socket timeout, or every idle round would
    end in a timeout that looks like Redis going away."""
    limit_s = redis.socket_timeout_s
    below = f"must be below redis.socket_timeout_s ({limit_s:g} s)"
    for index, stream in enumerate(streams):
        if stream.block_ms / 1000 >= limit_s:
            errors.append(f"streams[{index}].block_ms: {below}, got {stream.block_ms}")
    for index, queue in enumerate(queues):
        if queue.block_s >= limit_s:
            errors.append(f"queues[{index}].block_s: {below}, got {queue.block_s:g}")


def _table(data: dict[str, Any], name: str, errors: list[str]) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        errors.append(f"[{name}]: must be a table")
        return {}
    return value


def _array(data: dict[str, Any], name: str, errors: list[str]) -> list[Any]:
    value = data.get(name, [])
    if not isinstance(value, list):
        errors.append(f"{name}: must be an array of tables ([[{name}]])")
        return []
    return value
