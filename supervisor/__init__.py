"""The parent process: the worker pool, its restart policy, signals, control socket and systemd."""

from corral.supervisor.connection import WorkerConnection
from corral.supervisor.events import PoolEvent, PoolEvents
from corral.supervisor.pool import WorkerPool
from corral.supervisor.settings import PoolSettings
from corral.supervisor.states import RestartPolicy, WorkerState

__all__ = [
    "PoolEvent",
    "PoolEvents",
    "PoolSettings",
    "RestartPolicy",
    "WorkerConnection",
    "WorkerPool",
    "WorkerState",
]
