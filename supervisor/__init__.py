"""The parent process: the worker pool, its restart policy, signals, control socket and systemd.

The public names below are imported when first used (PEP 562), so that a light module of this
package (the config reader, the zygote launcher) does not import the pool: ``corral run`` starts its
zygote before it imports the rest of the supervisor."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.supervisor.connection import WorkerConnection
    from corral.supervisor.events import PoolEvent, PoolEvents
    from corral.supervisor.pool import WorkerPool
    from corral.supervisor.settings import PoolSettings
    from corral.supervisor.states import RestartPolicy, WorkerState

_HOMES = {
    "PoolEvent": "events",
    "PoolEvents": "events",
    "PoolSettings": "settings",
    "RestartPolicy": "states",
    "WorkerConnection": "connection",
    "WorkerPool": "pool",
    "WorkerState": "states",
}
__all__ = [
    "PoolEvent",
    "PoolEvents",
    "PoolSettings",
    "RestartPolicy",
    "WorkerConnection",
    "WorkerPool",
    "WorkerState",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'corral.supervisor' has no attribute {name!r}")
    return getattr(importlib.import_module(f"corral.supervisor.{_HOMES[name]}"), name)
