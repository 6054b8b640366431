"""Errors that mean Redis is away (a restart, a dropped connection), not that the work failed.

Raised by a consumer's own commands or by a handler's, they interrupt the round: its work goes back
(queues) or stays pending (streams), it is not counted as a failure, and the WorkerManager retries
with backoff, logging the outage once. A plain ``TimeoutError`` of a handler is not one of them:
that is the handler's own failure.
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

REDIS_DOWN: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)
