"""The errors that mean Redis is away rather than that work failed.

``REDIS_DOWN`` (a restart, a dropped connection, a cluster resharding or failing over, a primary
demoted by Sentinel), raised by a consumer's own commands or by a handler's, interrupts the round:
its work goes back (queues) or stays pending (streams), it is not counted as a failure, and the
WorkerManager retries with backoff, logging the outage once. A plain ``TimeoutError`` of a handler
is not one of them: that is the handler's own failure. The clients themselves: ``topology.py``.
"""

from __future__ import annotations

from redis.exceptions import AskError, ClusterError, ReadOnlyError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

REDIS_DOWN: tuple[type[Exception], ...] = (
    RedisConnectionError,  # also: still loading its data (BusyLoadingError)
    RedisTimeoutError,
    ClusterError,  # CLUSTERDOWN, MASTERDOWN
    TryAgainError,  # a multi-key command during a slot migration
    AskError,  # MOVED/ASK left after the client's redirections (a resharding in progress)
    SlotNotCoveredError,  # a failover: nobody serves the slot for a moment
    ReadOnlyError,  # we reached a primary that was demoted to a replica
)
# what a consumer's own commands may raise while Redis is away (the socket layer's errors too)
TRANSIENT: tuple[type[BaseException], ...] = (*REDIS_DOWN, ConnectionError, TimeoutError)
