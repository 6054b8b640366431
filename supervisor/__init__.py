"""The parent process: the worker pool, its restart policy, signals, control socket and systemd."""

from supervisor.connection import WorkerConnection
from supervisor.pool import PoolEvents, WorkerPool
from supervisor.settings import PoolSettings
from supervisor.states import RestartPolicy, WorkerState

__all__ = ["PoolEvents", "PoolSettings", "RestartPolicy", "WorkerConnection", "WorkerPool", "WorkerState"]
