"""The child runtime: BaseWorker, WorkerManager and (later) the Redis consumers."""

from workers.base import BaseWorker, WorkerContext
from workers.exitcodes import ExitCode
from workers.manager import Runnable, WorkerManager

__all__ = ["BaseWorker", "ExitCode", "Runnable", "WorkerContext", "WorkerManager"]
