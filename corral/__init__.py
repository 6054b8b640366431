"""corral: a supervised multiprocess worker pool for Redis streams and job queues.

The import package's rooms are the repository's top-level folders (linked here):

- ``corral.contract``: everything that crosses the process boundary (event names, the child spec,
  the ready info, exit codes, the redis/queue/stream specs); both sides import it, it imports neither;
- ``corral.ipc``: frames and the request/reply channel (imports nothing of corral);
- ``corral.supervisor``: the parent (``WorkerPool``, ``WorkerConnection``, the supervisor process);
- ``corral.workers``: the child runtime (``BaseWorker``, ``WorkerManager``) and the Redis consumers;
- ``corral.entrypoints``: the ``corral`` CLI, the child bootstrap and the example apps.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    """``corral.__version__``, read from the installed metadata when asked (importlib.metadata costs
    every child ~20 ms of start-up: not at import)."""
    if name != "__version__":
        raise AttributeError(f"module 'corral' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("corral")
    except PackageNotFoundError:  # a source tree that is not installed
        return "unknown"
