"""``corral.toml``: load, validate (every error names its key), and turn into pool settings.

Relative paths are taken from the config file's folder. Unknown sections and keys are errors (a
typo must not be silently ignored); all problems are reported at once.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.settings import PoolSettings
from supervisor.states import RestartPolicy
from supervisor.workconfig import parse_work
from workers.specs import WorkSpec

LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


class ConfigError(Exception):
    """The configuration is unusable; the message lists every problem, each naming its key."""


@dataclass(frozen=True)
class LogSettings:
    level: str = "INFO"
    json: bool = False
    rotation: str = "50 MB"  # loguru rotation: a size ("50 MB") or a time ("daily", "1 week")
    retention: int | str = 10  # rotated files kept: a count, or an age ("7 days")
    stderr: bool = True  # echo the supervisor's own log on stderr


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
    metrics_listen: str | None = None  # "host:port" of the Prometheus endpoint; None: off
    uses_redis: bool = False  # a [redis] table, or streams/queues: the children get a Redis client

    @property
    def control_socket(self) -> Path:
        return self.state_dir / "corral.sock"

    @property
    def redis_url(self) -> str:
        """The configured server, or the embedded one's socket in the state dir."""
        return self.work.redis.url or f"unix://{self.state_dir / 'redis.sock'}"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "corral.pid"


class _Reader:
    """Takes typed values out of the parsed TOML, collecting errors instead of stopping at the first."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.errors: list[str] = []

    def section(self, name: str) -> dict[str, Any]:
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            self.errors.append(f"[{name}]: must be a table")
            return {}
        return value

    def take(
        self, section: str, key: str, kind: type | tuple[type, ...], default: Any, check: str = ""
    ) -> Any:
        table = self.section(section)
        if key not in table:
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and type(value) is int:
            value = float(value)
        if type(value) not in kinds:
            names = " or ".join(k.__name__ for k in kinds)
            self.errors.append(f"{section}.{key}: must be {_article(names)} {names}, got {value!r}")
            return default
        problem = _check(value, check)
        if problem:
            self.errors.append(f"{section}.{key}: {problem}, got {value!r}")
            return default
        return value

    def unknown_keys(self, allowed: dict[str, set[str] | None]) -> None:
        for name, value in self.data.items():
            if name not in allowed:
                self.errors.append(f"[{name}]: unknown section (known: {', '.join(sorted(allowed))})")
            elif allowed[name] is not None and isinstance(value, dict):
                for key in value:
                    if key not in (allowed[name] or ()):
                        self.errors.append(f"{name}.{key}: unknown key")


def parse_listen(value: Any) -> str | None:
    """``host:port`` with a port in 1..65535, or None if it is not that."""
    if not isinstance(value, str) or ":" not in value:
        return None
    _host, _, port = value.rpartition(":")
    return value if port.isdigit() and 0 < int(port) < 65536 else None


def _article(names: str) -> str:
    return "an" if names[0] in "aeiou" else "a"


def _check(value: Any, check: str) -> str | None:
    if check == ">0" and value <= 0:
        return "must be > 0"
    if check == ">=0" and value < 0:
        return "must be >= 0"
    if check == "import" and (":" not in value or value.startswith(":") or value.endswith(":")):
        return "must be an import path 'package.module:attr'"
    if check == "level" and value.upper() not in LEVELS:
        return f"must be one of {', '.join(LEVELS)}"
    if check == "name" and (not value or not all(c.isalnum() or c in "-_." for c in value)):
        return "must be letters, digits, '-', '_' or '.'"
    return None


SCHEMA: dict[str, set[str] | None] = {
    "pool": {"name", "workers", "worker", "ready_timeout_s", "graceful_timeout_s", "kill_timeout_s"},
    "restart": {"backoff_initial_s", "backoff_max_s", "stable_after_s", "max_restarts", "restart_window_s"},
    "health": {
        "heartbeat_interval_s",
        "heartbeat_timeout_s",
        "monitor_interval_s",
        "max_memory_mb",
        "max_jobs",
        "max_jobs_jitter",
    },
    "paths": {"state_dir", "log_dir"},
    "logging": {"level", "json", "rotation", "retention", "stderr"},
    "options": None,  # free-form: handed to every child as WorkerContext.options
    "metrics": {"listen"},
    "redis": None,  # these three are checked by supervisor.workconfig
    "streams": None,
    "queues": None,
}
DEFAULT_WORKER = "workers.consumer:ConsumerWorker"  # runs the declared streams and queues


def load(path: str | Path) -> Config:
    """Read and validate a config file; raises ``ConfigError`` naming every bad key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, path)


def parse(data: dict[str, Any], path: Path) -> Config:
    r = _Reader(data)
    r.unknown_keys(SCHEMA)
    name = r.take("pool", "name", str, "corral", "name")
    workers = r.take("pool", "workers", int, 2, ">=0")
    worker = r.take("pool", "worker", str, None, "import")
    work = parse_work(data, name, r.errors)
    if worker is None and "worker" not in r.section("pool"):
        if work.empty:
            r.errors.append("pool.worker: required when no [[streams]] or [[queues]] are declared")
        worker = DEFAULT_WORKER
    policy = RestartPolicy(
        backoff_initial_s=r.take("restart", "backoff_initial_s", float, 0.5, ">=0"),
        backoff_max_s=r.take("restart", "backoff_max_s", float, 30.0, ">=0"),
        stable_after_s=r.take("restart", "stable_after_s", float, 30.0, ">=0"),
        max_restarts=r.take("restart", "max_restarts", int, 5, ">=0"),
        restart_window_s=r.take("restart", "restart_window_s", float, 60.0, ">0"),
    )
    logging = LogSettings(
        level=r.take("logging", "level", str, "INFO", "level").upper(),
        json=r.take("logging", "json", bool, False),
        rotation=str(r.take("logging", "rotation", (str, int), "50 MB")),
        retention=r.take("logging", "retention", (int, str), 10),
        stderr=r.take("logging", "stderr", bool, True),
    )
    settings = PoolSettings(
        ready_timeout_s=r.take("pool", "ready_timeout_s", float, 60.0, ">0"),
        graceful_timeout_s=r.take("pool", "graceful_timeout_s", float, 30.0, ">=0"),
        kill_timeout_s=r.take("pool", "kill_timeout_s", float, 5.0, ">0"),
        heartbeat_interval_s=r.take("health", "heartbeat_interval_s", float, 5.0, ">0"),
        heartbeat_timeout_s=r.take("health", "heartbeat_timeout_s", float, 10.0, ">0"),
        monitor_interval_s=r.take("health", "monitor_interval_s", float, 1.0, ">0"),
        max_memory_mb=r.take("health", "max_memory_mb", float, None, ">0"),
        max_jobs=r.take("health", "max_jobs", int, None, ">0"),
        max_jobs_jitter=r.take("health", "max_jobs_jitter", int, 0, ">=0"),
        policy=policy,
        options=r.section("options"),
        log_level=logging.level,
        log_json=logging.json,
    )
    listen = r.take("metrics", "listen", str, None)
    if listen is not None and parse_listen(listen) is None:
        r.errors.append(f"metrics.listen: must be 'host:port' with a port 1-65535, got {listen!r}")
    base = path.resolve().parent
    state_dir = base / r.take("paths", "state_dir", str, "run")
    log_dir = base / r.take("paths", "log_dir", str, "logs")
    if r.errors:
        raise ConfigError(f"{path}: invalid configuration:\n" + "\n".join(f"  - {e}" for e in r.errors))
    uses_redis = "redis" in data or not work.empty
    return Config(
        path.resolve(), name, workers, worker, state_dir, log_dir, logging, settings, work, listen, uses_redis
    )
