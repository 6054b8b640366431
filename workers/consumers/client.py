"""The consumers' Redis client, and the errors that mean Redis is away rather than that work failed.

``REDIS_DOWN`` (a restart, a dropped connection), raised by a consumer's own commands or by a
handler's, interrupts the round: its work goes back (queues) or stays pending (streams), it is not
counted as a failure, and the WorkerManager retries with backoff, logging the outage once. A plain
``TimeoutError`` of a handler is not one of them: that is the handler's own failure.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from corral.contract import RedisSpec

REDIS_DOWN: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)
# what a consumer's own commands may raise while Redis is away (the socket layer's errors too)
TRANSIENT: tuple[type[BaseException], ...] = (*REDIS_DOWN, ConnectionError, TimeoutError)


def connect(spec: RedisSpec) -> aioredis.Redis:
    """A client with timeouts and health checks, and no blind retries: a command whose reply was
    lost (a take, a BLMOVE) must not silently run twice. The error reaches the round instead, which
    puts its jobs back, and the manager retries with backoff until Redis is back."""
    assert spec.url is not None
    return aioredis.from_url(
        spec.url,
        socket_timeout=spec.socket_timeout_s,
        socket_connect_timeout=spec.connect_timeout_s,
        health_check_interval=spec.health_check_interval_s,
        retry=AsyncRetry(NoBackoff(), 0),
    )
