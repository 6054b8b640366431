"""corral: a supervised multiprocess worker pool for Redis streams and job queues.

The import package's rooms are the repository's top-level folders (linked here):

- ``corral.contract``: everything that crosses the process boundary (event names, the child spec,
  the ready info, exit codes, the redis/queue/stream specs); both sides import it, it imports neither;
- ``corral.ipc``: frames and the request/reply channel (imports nothing of corral);
- ``corral.supervisor``: the parent (``WorkerPool``, ``WorkerConnection``, the supervisor process);
- ``corral.workers``: the child runtime (``BaseWorker``, ``WorkerManager``) and the Redis consumers;
- ``corral.entrypoints``: the ``corral`` CLI, the child bootstrap and the example apps.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("corral")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "unknown"
