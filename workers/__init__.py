"""The child runtime: ``BaseWorker``, ``WorkerManager``, what handlers receive, and the consumers.

from corral.workers import BaseWorker, WorkerManager, Job, Message, Reject, Requeue
"""

from corral.contract import ExitCode
from corral.workers.base import BaseWorker, WorkerContext
from corral.workers.manager import Runnable, WorkerManager
from corral.workers.messages import HandlerContext, Job, JobLost, Message, Reject, Requeue

__all__ = [
    "BaseWorker",
    "ExitCode",
    "HandlerContext",
    "Job",
    "JobLost",
    "Message",
    "Reject",
    "Requeue",
    "Runnable",
    "WorkerContext",
    "WorkerManager",
]
