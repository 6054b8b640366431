"""The contract between the supervisor and its children: everything that crosses the process boundary.

Both sides import this module and nothing else of each other; it imports nothing of corral.

- **How a child is started**: the supervisor runs ``python -m corral.workers.child`` with a
  ``ChildSpec`` as JSON in the ``CORRAL_CHILD`` environment variable (``SPEC_ENV``) and one end of a
  socketpair as file descriptor ``ChildSpec.fd``.
  Or it is forked from a zygote (the same module with ``ZYGOTE_FLAG``) that preloaded its code:
  the same spec, sent to the zygote with the socket (``ZygoteReply``).
- **What it says when ready**: a ``ReadyInfo`` (pid, slot, worker id) with the channel's ``ready``.
- **What they tell each other**: the ``Event`` names below, with the payloads their docs give.
- **How a child ends**: an ``ExitCode``, which the supervisor decodes (``ExitCode.describe``).
- **What a child consumes**: a ``WorkSpec`` (``RedisSpec``, ``StreamSpec``, ``QueueSpec``,
  ``ScheduleSpec``), validated by the supervisor against these dataclasses' fields and handed to each
  child as JSON.
"""

from __future__ import annotations

import functools
import importlib
import json
import signal
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import IntEnum, StrEnum
from typing import Any, TypedDict

SPEC_ENV = "CORRAL_CHILD"  # the environment variable that carries a child's ChildSpec as JSON
CHILD_MODULE = "corral.workers.child"  # what the supervisor runs with ``python -m``
ZYGOTE_FLAG = "--zygote"  # ``python -m CHILD_MODULE --zygote``: preload, then fork children on request
ZYGOTE_FD_ENV = "CORRAL_ZYGOTE_FD"  # the zygote's end of its socketpair with the supervisor


class LoadError(Exception):
    """An import path that does not resolve to what it should."""


def load_object(path: str) -> Any:
    """Resolve an import path ``package.module:attr`` (how the config names code: a worker, a
    handler, a parent-side setup function) to the object; ``LoadError`` names what went wrong."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise LoadError(f"{path!r} is not of the form 'package.module:attr'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:
        raise LoadError(f"cannot import {path!r}: {type(exc).__name__}: {exc}") from exc
    return obj


class Event(StrEnum):
    """IPC events of corral itself (an app's own events are any other names)."""

    STOP = "corral.stop"  # supervisor -> child, send: {"mode": StopMode}
    STATS = "corral.stats"  # child -> supervisor, send: the worker's stats() dict, every stats_interval_s
    RECYCLE = "corral.recycle"  # child -> supervisor, send: {"reason"}: replace me (new child first)
    FAILED = "corral.failed"  # child -> supervisor, send: {"error": the exception's last line}, then exits
    RECOVER = "corral.recover"  # supervisor -> child, request: {"worker_id": dead worker} -> counts moved
    ASSIGN = "corral.partitions.assign"  # supervisor -> child, request: {"stream", "shards"} -> shards owned
    REVOKE = "corral.partitions.revoke"  # same; answered once the round in progress is acknowledged


class ZygoteReply(StrEnum):
    """The one key of each map a zygote sends the supervisor (``corral.ipc.fdpass`` frames). A
    zygote starts with corral's child runtime imported and waits for ``{"spec": ChildSpec JSON of a
    template child, "env": {...}}`` (the children's environment on top of its own; PYTHONPATH also
    put first on its import path); it imports their worker and handlers, says READY (its pid),
    PROBLEMS (the import errors, then exits) or UNSAFE (why it will not fork, then exits); then
    answers each request ``{"spec": ChildSpec JSON}`` (with the child's IPC socket and output pipe
    attached) with PID or ERROR."""

    READY = "ready"
    PROBLEMS = "problems"
    UNSAFE = "unsafe"
    PID = "pid"
    ERROR = "error"


class StopMode(StrEnum):
    GRACEFUL = "graceful"  # stop taking work, finish what is in flight
    FAST = "fast"  # hand in-flight work back at once


class ShardsRequest(TypedDict):
    """The payload of ``Event.ASSIGN`` and ``Event.REVOKE``."""

    stream: str
    shards: list[int]


LEASE_FENCE_AT = 0.8  # of member_ttl_s: a worker that could not renew for this long fences itself


class RecoverRequest(TypedDict):
    """The payload of ``Event.RECOVER``: give back what this dead worker process held. ``died``:
    it was killed or crashed (a death counted against the jobs it held), not a clean, fenced or
    asked-for exit."""

    worker_id: str
    died: bool


class ExitCode(IntEnum):
    """Exit codes of a child process. A boot failure before ``ready`` counts toward the crash-loop
    limit; ``BOOT_IMPORT`` cannot heal by itself, so the slot goes ``fatal`` at once (a reload with
    fixed config or code clears it)."""

    OK = 0  # stopped when asked to
    CRASHED = 1  # an unhandled exception in the worker's run loop
    BOOT_IMPORT = 4  # the target import path could not be imported or is not a worker
    BOOT_START = 5  # the worker's start() raised
    BOOT_USAGE = 6  # the child was started with a bad spec (a supervisor bug, not the user's)
    ORPHANED = 7  # the supervisor went away; the child stopped on its own
    FENCED = 8  # could not renew its lease while holding work: ended itself before a peer takes it over

    @classmethod
    def describe(cls, returncode: int | None) -> str:
        """Human text for a ``Popen.returncode``: exit codes by name, signals by name."""
        if returncode is None:
            return "running"
        if returncode < 0:
            try:
                return f"killed by {signal.Signals(-returncode).name}"
            except ValueError:
                return f"killed by signal {-returncode}"
        try:
            return f"exit {returncode} ({cls(returncode).name.lower()})"
        except ValueError:
            return f"exit {returncode}"


@dataclass(frozen=True)
class ReadyInfo:
    """What a child announces with ``ready``: who it is."""

    pid: int
    slot: int
    worker_id: str  # <host>:<pool>:<slot>:<token>: its consumer name and processing lists

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: Any) -> ReadyInfo | None:
        """None for what is not a ReadyInfo (a custom child that announced something else)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(pid=int(data["pid"]), slot=int(data["slot"]), worker_id=str(data["worker_id"]))
        except (KeyError, TypeError, ValueError):
            return None


class BadChildSpec(ValueError):
    """The spec variable is missing or does not describe a child (a corral bug, not the user's)."""


@dataclass(frozen=True)
class ChildSettings:
    """What every child of a pool is told alike. The defaults are written here once (the pool's
    ``PoolSettings`` takes them from here), and a new child setting is one field here (and, if the
    config sets it, the same name in ``PoolSettings``)."""

    options: dict[str, Any] = field(default_factory=dict)  # the config's [options] table
    log_level: str = "INFO"
    log_json: bool = False
    stats_interval_s: float = 1.0
    orphan_grace_s: float = 0.8  # after the supervisor died: time to hand work back, then exit
    work: dict[str, Any] = field(default_factory=dict)  # a WorkSpec as JSON (WorkSpec.to_json)
    config_dir: str = ""  # the folder of corral.toml
    state_dir: str = ""
    sync_threads: int = 8  # the thread pool that runs a child's sync handlers


CHILD_DEFAULTS = ChildSettings()


@dataclass(frozen=True)
class ChildSpec:
    """Everything a child needs to know, built by the supervisor for each child it starts: who it is,
    and what every child of its pool is told (``told``). An object until it is put in the
    environment (``to_env``)."""

    fd: int  # its end of the socketpair
    slot: int
    pool: str
    target: str  # import path of the BaseWorker subclass or factory
    host: str
    parent_pid: int
    told: ChildSettings = CHILD_DEFAULTS

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, raw: str | None) -> ChildSpec:
        if not raw:
            raise BadChildSpec(f"{SPEC_ENV} is not set: this program is started by corral")
        try:
            data = json.loads(raw)
            told = data.get("told") or data  # a spec of before ``told`` (a reload across an upgrade)
            return cls(**_known(cls, data, skip="told"), told=ChildSettings(**_known(ChildSettings, told)))
        except (ValueError, TypeError, AttributeError) as exc:
            raise BadChildSpec(f"bad {SPEC_ENV}: {exc}") from exc

    @property
    def identity(self) -> str:
        """``<host>:<pool>:<slot>``: stable across restarts of the slot."""
        return f"{self.host}:{self.pool}:{self.slot}"

    @functools.cached_property
    def work(self) -> WorkSpec:
        """What it consumes, decoded once (``WorkSpec``)."""
        return WorkSpec.from_json(self.told.work)


def _known(cls: type, data: dict[str, Any], skip: str = "") -> dict[str, Any]:
    names = {f.name for f in fields(cls)} - {skip}
    return {k: v for k, v in data.items() if k in names}


class Check(StrEnum):
    """What a setting's value must be beyond its type, checked by the supervisor's config reader
    (every number must be >= 0 unless its field says more)."""

    POSITIVE = "> 0"
    IMPORT_PATH = "an import path 'package.module:attr'"
    NAME = "letters, digits, '-', '_' or '.'"
    LISTEN = "'host:port' with a port 1-65535"
    REDIS_URL = "a redis://, rediss://, unix:// or redis+sentinel:// URL"
    LOG_LEVEL = "a log level"
    KEY = "a non-empty Redis key"  # a queue or stream name (each of a list)
    KEY_PREFIX = "letters, digits, '-', '_', ':' or '.'"  # no glob or hash-tag characters
    AT_LEAST_ONE = ">= 1"  # a lease: renewed every third of it, so not a busy loop
    RATE = "a rate like '200/s', '30/m' or '1000/h'"
    CRON = "a cron expression like '*/5 * * * *'"
    TIMEZONE = "an IANA time zone like 'UTC' or 'Europe/Paris'"
    ORDER = "'rotate', 'strict' or 'weighted'"
    CATCH_UP = "'skip', 'once' or 'all'"
    SPAWN = "'zygote' or 'exec'"


RATE_UNITS_S = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_rate(text: str) -> float:
    """``"200/s"`` -> 200.0 per second (``/s``, ``/m`` or ``/min``, ``/h``); ValueError otherwise."""
    count, sep, unit = text.strip().partition("/")
    try:
        number = float(count)
    except ValueError:
        number = -1.0
    if not sep or unit.strip() not in RATE_UNITS_S or not number > 0:
        raise ValueError(f"{text!r} is not {Check.RATE.value}")
    return number / RATE_UNITS_S[unit.strip()]


def setting(default: Any = MISSING, check: Check | None = None, *, table: str = "") -> Any:
    """A dataclass field that is a configuration key: its default, its ``Check``, and (for a class
    whose fields come from several tables, like ``PoolSettings``) the table it is read from."""
    return field(default=default, metadata={"check": check, "table": table})


@dataclass(frozen=True)
class RedisSpec:
    url: str | None = setting(None, Check.REDIS_URL)  # None: the supervisor's embedded server
    key_prefix: str = setting("corral", Check.KEY_PREFIX)  # corral's own keys: <prefix>:{<hash tag>}:...
    socket_timeout_s: float = setting(5.0, Check.POSITIVE)
    connect_timeout_s: float = setting(5.0, Check.POSITIVE)
    health_check_interval_s: float = 15.0
    member_ttl_s: float = setting(30.0, Check.AT_LEAST_ONE)  # silent this long: dead, work recovered
    cluster: bool | None = None  # None: ask the server (INFO cluster); true/false: don't ask
    wait_replicas: int = 0  # > 0: after each take and ack, WAIT for this many replicas (failover-safe)
    wait_timeout_ms: int = setting(1000, Check.POSITIVE)  # how long that WAIT may take


@dataclass(frozen=True)
class StreamSpec:
    stream: str = setting(check=Check.KEY)  # the literal stream key producers XADD to
    handler: str = setting(check=Check.IMPORT_PATH)  # f(message) or f(message, ctx), sync or async
    group: str = ""  # consumer group; default: the pool name
    batch_size: int = setting(100, Check.POSITIVE)  # XREADGROUP COUNT
    concurrency: int = setting(1, Check.POSITIVE)  # handlers of a batch at once (partitioned: 1, order)
    prefetch_ms: int = 100  # beyond a free lane's worth, take what the lanes start within this much
    block_ms: int = setting(1000, Check.POSITIVE)  # XREADGROUP BLOCK (below redis.socket_timeout_s)
    max_deliveries: int = setting(5, Check.POSITIVE)  # failed (or delivered) this often: dead-lettered
    min_idle_ms: int = 30_000  # a pending entry idle this long may be claimed by another consumer
    claim_interval_s: float = setting(5.0, Check.POSITIVE)
    start_id: str = "0"  # where a new group starts: "0" everything, "$" only new entries
    trim_maxlen: int | None = setting(None, Check.POSITIVE)  # keep about this many, never unacknowledged
    trim_interval_s: float = setting(30.0, Check.POSITIVE)
    partitions: int = 0  # > 0: shards <stream>:0..P-1, each owned by one slot at a time (ordering)
    timeout_s: float | None = setting(None, Check.POSITIVE)  # a handler running longer: a failed attempt
    batch: bool = False  # the handler takes the batch: a list of messages (partitioned: one at a time)


@dataclass(frozen=True)
class QueueSpec:
    handler: str = setting(check=Check.IMPORT_PATH)  # f(job) or f(job, ctx), sync or async
    names: tuple[str, ...] = setting((), Check.KEY)  # literal list keys producers LPUSH to
    pattern: str | None = None  # discover queues with SCAN MATCH (e.g. "contest:submissions:*")
    registry: str | None = None  # or a set whose members are queue names
    refresh_s: float = setting(5.0, Check.POSITIVE)  # how often discovery runs again
    batch_size: int = setting(50, Check.POSITIVE)  # jobs taken per round trip
    concurrency: int = setting(1, Check.POSITIVE)  # handlers of a batch at once (1: in order)
    prefetch_ms: int = 100  # beyond a free lane's worth, take what the lanes start within this much
    block_s: float = setting(1.0, Check.POSITIVE)  # BLMOVE timeout, every queue empty (< socket timeout)
    max_attempts: int = setting(5, Check.POSITIVE)  # failures retried with backoff, then dead-lettered
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0
    at_most_once: bool = False  # plain RPOP: no processing list, a crash loses the job in hand
    timeout_s: float | None = setting(None, Check.POSITIVE)  # a handler running longer: a failed attempt
    shards: int = setting(1, Check.AT_LEAST_ONE)  # > 1: each name is that many lists (cluster slots)
    rate_limit: str | None = setting(None, Check.RATE)  # "200/s": per queue, across every host
    order: str = setting("rotate", Check.ORDER)  # how the names are taken from: in turn, or by priority
    weights: tuple[int, ...] = ()  # order = "weighted": one per name, the chance to be taken from first
    batch: bool = False  # the handler takes the batch: a list of jobs; failed: retried one by one

    @property
    def label(self) -> str:
        return ",".join(self.names) or self.pattern or self.registry or "?"


@dataclass(frozen=True)
class ScheduleSpec:
    """A ``[[schedules]]`` table: each tick enqueues a job onto ``queue``, or runs ``handler`` in one
    worker (a job on the schedule's own queue); fired once across every host and slot."""

    name: str = setting(check=Check.NAME)
    cron: str | None = setting(None, Check.CRON)  # "*/5 * * * *" in ``timezone``
    every_s: float | None = setting(None, Check.POSITIVE)  # or a tick every this many seconds
    timezone: str = setting("UTC", Check.TIMEZONE)
    queue: str | None = setting(None, Check.KEY)  # a tick enqueues a job (``data``) here...
    handler: str | None = setting(None, Check.IMPORT_PATH)  # ...or runs this handler: f(job[, ctx])
    data: dict[str, Any] = field(default_factory=dict)  # the job's data
    catch_up: str = setting("skip", Check.CATCH_UP)  # ticks missed while nothing ran: skip, once, all
    overlap: bool = False  # fire while the previous tick's job is still queued or running
    max_run_s: float = setting(3600.0, Check.POSITIVE)  # how long a tick's job may hold back the next


@dataclass(frozen=True)
class WorkSpec:
    """Everything a child consumes; empty when the pool runs only a custom worker."""

    redis: RedisSpec = field(default_factory=RedisSpec)
    streams: tuple[StreamSpec, ...] = ()
    queues: tuple[QueueSpec, ...] = ()
    schedules: tuple[ScheduleSpec, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.streams and not self.queues and not self.schedules

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> WorkSpec:
        if not data:
            return cls()
        queues = tuple(
            QueueSpec(**{**q, "names": tuple(q.get("names", ())), "weights": tuple(q.get("weights", ()))})
            for q in data.get("queues", ())
        )
        return cls(
            redis=RedisSpec(**data.get("redis", {})),
            streams=tuple(StreamSpec(**s) for s in data.get("streams", ())),
            queues=queues,
            schedules=tuple(ScheduleSpec(**s) for s in data.get("schedules", ())),
        )
