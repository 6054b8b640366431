"""Tunables of a WorkerPool, with units in their names."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from supervisor.process import OutputSink
from supervisor.states import RestartPolicy


def stderr_sink(_slot: int) -> OutputSink:
    """Default destination of a child's output when no log manager is attached: our stderr."""

    def write(data: bytes) -> None:
        sys.stderr.buffer.write(data)
        sys.stderr.buffer.flush()

    return write


@dataclass(frozen=True)
class PoolSettings:
    ready_timeout_s: float = 60.0  # spawn -> ready, else killed and counted as a failure
    graceful_timeout_s: float = 30.0  # stop asked -> SIGTERM
    kill_timeout_s: float = 5.0  # SIGTERM -> SIGKILL (and SIGKILL -> give up waiting)
    abort_timeout_s: float = 2.0  # SIGABRT of a hung child (traceback) -> SIGKILL
    heartbeat_interval_s: float = 5.0
    heartbeat_timeout_s: float = 10.0  # a loop that does not answer a ping this long is hung
    monitor_interval_s: float = 1.0  # psutil sampling of RSS and CPU
    max_memory_mb: float | None = None  # RSS above this: recycled (new child ready first)
    max_jobs: int | None = None  # processed events above this (+ jitter): recycled
    max_jobs_jitter: int = 0
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    options: dict[str, Any] = field(default_factory=dict)  # handed to every child (WorkerContext)
    work: dict[str, Any] = field(default_factory=dict)  # streams/queues/redis (a WorkSpec as JSON)
    config_dir: str = ""  # handed to children (WorkerContext.config_dir, .state_dir)
    state_dir: str = ""
    output: Callable[[int], OutputSink] = stderr_sink  # slot -> where its stdout/stderr goes
    log_level: str = "INFO"
    log_json: bool = False
    stats_interval_s: float = 1.0
    host: str | None = None  # identity prefix; default: this machine's host name
    python: str = sys.executable
    bootstrap: tuple[str, ...] = ("-m", "entrypoints.child")
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the children
