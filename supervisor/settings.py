"""Tunables of a WorkerPool, with units in their names."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corral.contract import CHILD_DEFAULTS, CHILD_MODULE, Check, setting
from corral.supervisor.states import RestartPolicy

OutputSink = Callable[[bytes], None]  # called with each chunk of a child's output, and b"" at its end


def stderr_sink(_slot: int | str) -> OutputSink:
    """Default destination of a child's output when no log manager is attached: our stderr."""

    def write(data: bytes) -> None:
        sys.stderr.buffer.write(data)
        sys.stderr.buffer.flush()

    return write


@dataclass(frozen=True)
class PoolSettings:
    """A pool's tunables; those with a table are keys of ``corral.toml`` (``[pool]``, ``[health]``)."""

    ready_timeout_s: float = setting(60.0, Check.POSITIVE, table="pool")  # spawn -> ready, else failed
    graceful_timeout_s: float = setting(30.0, table="pool")  # stop asked -> SIGTERM
    # a reload's or recycle's old child finishing its jobs -> SIGTERM; None: drain_s below
    drain_timeout_s: float | None = setting(None, Check.POSITIVE, table="pool")
    kill_timeout_s: float = setting(5.0, Check.POSITIVE, table="pool")  # SIGTERM -> SIGKILL -> give up
    abort_timeout_s: float = 2.0  # SIGABRT of a hung child (traceback) -> SIGKILL
    heartbeat_interval_s: float = setting(5.0, Check.POSITIVE, table="health")
    heartbeat_timeout_s: float = setting(10.0, Check.POSITIVE, table="health")  # no answer: hung
    monitor_interval_s: float = setting(1.0, Check.POSITIVE, table="health")  # psutil RSS and CPU
    max_memory_mb: float | None = setting(None, Check.POSITIVE, table="health")  # RSS above: recycled
    max_jobs: int | None = setting(None, Check.POSITIVE, table="health")  # processed above (+ jitter)
    max_jobs_jitter: int = setting(0, table="health")
    sync_threads: int = setting(
        CHILD_DEFAULTS.sync_threads, Check.POSITIVE, table="pool"
    )  # sync handlers' pool
    spawn: str = setting("zygote", Check.SPAWN, table="pool")  # fork from a preloaded zygote, or exec
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    options: dict[str, Any] = field(default_factory=dict)  # handed to every child (WorkerContext)
    work: dict[str, Any] = field(default_factory=dict)  # streams/queues/redis (a WorkSpec as JSON)
    config_dir: str = CHILD_DEFAULTS.config_dir  # handed to children (WorkerContext.config_dir, .state_dir)
    state_dir: str = CHILD_DEFAULTS.state_dir
    output: Callable[[int | str], OutputSink] = stderr_sink  # slot (or 'zygote') -> where its output goes
    log_level: str = CHILD_DEFAULTS.log_level
    log_json: bool = CHILD_DEFAULTS.log_json
    stats_interval_s: float = CHILD_DEFAULTS.stats_interval_s
    host: str | None = setting(None, Check.NAME, table="pool")  # identity; default: the host name
    python: str = sys.executable
    bootstrap: tuple[str, ...] = ("-m", CHILD_MODULE)
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the children

    @property
    def drain_s(self) -> float:
        """How long an old child of a reload or recycle may finish what it holds (its replacement
        already working): ``drain_timeout_s``, else the longest ``timeout_s`` of the pool's queues and
        streams, and never less than ``graceful_timeout_s``."""
        if self.drain_timeout_s is not None:
            return self.drain_timeout_s
        specs = [*self.work.get("queues", ()), *self.work.get("streams", ())]
        longest_s = max((float(spec.get("timeout_s") or 0.0) for spec in specs), default=0.0)
        return max(self.graceful_timeout_s, longest_s)
