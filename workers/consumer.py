"""The default worker (``pool.worker`` left out): it runs the declared streams and queues."""

from __future__ import annotations

from workers.base import BaseWorker


class ConsumerWorker(BaseWorker):
    """Nothing of its own: the runtime registers the consumers of ``[[streams]]``/``[[queues]]``."""
