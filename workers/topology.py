"""Which Redis corral talks to, and a client for it: a standalone server, a Redis/Valkey Cluster, or a
primary watched by Sentinel.

- ``redis://`` / ``rediss://`` / ``unix://``: a standalone server, or any node of a cluster: asked
  once (``INFO cluster``) unless ``[redis] cluster = true|false`` says; a cluster gets redis-py's
  cluster client, which routes each command (and each Lua call, by its keys) to the slot's primary.
- ``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]``: the Sentinels to ask where
  the primary of ``service`` is now; after a failover the next connection goes to the new primary.

Every client is made the same way: timeouts, health checks and **no blind retries** (a command whose
reply was lost, a take or a BLMOVE, must not silently run twice; the error reaches the round, which
puts its work back). MOVED and ASK redirections are not retries of that kind: the command was not
run, and the cluster client follows them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis as redis_sync
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as _AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry
from redis.sentinel import Sentinel as _Sentinel
from redis.sentinel import SentinelConnectionPool

from corral.contract import RedisSpec

# redis-py's Sentinel classes are untyped in some releases and typed in others: typed here, once, as
# what corral uses of them, so the type check passes on every release the dependency range allows.
AsyncSentinel = cast(Callable[..., Any], _AsyncSentinel)
Sentinel = cast(Callable[..., Any], _Sentinel)

SENTINEL_SCHEME = "redis+sentinel"


class Kind(Enum):
    STANDALONE = "standalone"
    CLUSTER = "cluster"
    SENTINEL = "sentinel"


@dataclass(frozen=True)
class SentinelTarget:
    """A ``redis+sentinel://`` URL, taken apart."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


class BadRedisURL(ValueError):
    """A URL corral cannot connect with; the message names what is wrong."""


def parse_sentinel_url(url: str) -> SentinelTarget:
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    sentinels: list[tuple[str, int]] = []
    for item in filter(None, hosts.split(",")):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise BadRedisURL(f"{url!r}: each Sentinel must be host:port, got {item!r}")
        sentinels.append((host, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not sentinels or not path:
        raise BadRedisURL(f"{url!r}: must be redis+sentinel://host:port[,host:port...]/service[/db]")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise BadRedisURL(f"{url!r}: after the service name only a database number may follow")
    userinfo = parts.netloc.rpartition("@")[0]
    user, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    return SentinelTarget(
        tuple(sentinels),
        unquote(path[0]),
        int(path[1]) if len(path) == 2 else 0,
        unquote(user) or None,
        unquote(password) or None,
    )


def kind_of_url(spec: RedisSpec) -> Kind | None:
    """What the URL and settings alone say; None: ask the server (``detect``)."""
    assert spec.url is not None
    if spec.url.startswith(f"{SENTINEL_SCHEME}://"):
        return Kind.SENTINEL
    if spec.cluster is not None:
        return Kind.CLUSTER if spec.cluster else Kind.STANDALONE
    if spec.url.startswith("unix://"):
        return Kind.STANDALONE  # a cluster node is reached over TCP
    return None


class _RefreshingPipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except AsyncRedisCluster.ERRORS_ALLOW_RETRY:
            await self.cluster_client.aclose()  # the next command reads the slot map again
            raise


class Cluster(AsyncRedisCluster):
    """redis-py's cluster client, whose pipelines also forget the slot map when a node fails.

    A single command that meets a dead node marks the map stale, and the next command asks the
    cluster who serves each slot now (the promoted replica). A pipeline does that only on its way
    to a retry, and corral never retries blindly; without this a pipeline's client kept trying the
    dead node after the failover, forever."""

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise ValueError("shard_hint is not supported in cluster mode")
        return _RefreshingPipeline(self, transaction)  # type: ignore[abstract]


def _options(spec: RedisSpec) -> dict[str, Any]:
    return {
        "socket_timeout": spec.socket_timeout_s,
        "socket_connect_timeout": spec.connect_timeout_s,
        "health_check_interval": spec.health_check_interval_s,
    }


async def detect(spec: RedisSpec) -> Kind:
    """Standalone or cluster, by asking the server; a server that cannot be reached now counts as
    standalone (``[redis] cluster = true`` makes a cluster deployment independent of that)."""
    kind = kind_of_url(spec)
    if kind is not None:
        return kind
    assert spec.url is not None
    probe = aioredis.from_url(spec.url, retry=AsyncRetry(NoBackoff(), 0), **_options(spec))
    try:
        info = await asyncio.wait_for(probe.info("cluster"), spec.connect_timeout_s + 1)
        return Kind.CLUSTER if int(info.get("cluster_enabled", 0)) else Kind.STANDALONE
    except (redis_sync.RedisError, OSError, TimeoutError):
        return Kind.STANDALONE
    finally:
        await probe.aclose()


async def connect(spec: RedisSpec) -> Any:
    """The async client for ``spec``: ``redis.asyncio.Redis`` or ``RedisCluster``."""
    return make_client(spec, await detect(spec))


def make_client(spec: RedisSpec, kind: Kind) -> Any:
    """The async client for ``spec`` talking to a ``kind`` of deployment (no round trip yet)."""
    assert spec.url is not None
    no_retry = AsyncRetry(NoBackoff(), 0)
    if kind is Kind.CLUSTER:
        return Cluster.from_url(spec.url, retry=no_retry, **_options(spec))
    if kind is Kind.SENTINEL:
        target = parse_sentinel_url(spec.url)
        sentinel = AsyncSentinel(
            list(target.sentinels),
            sentinel_kwargs={"socket_timeout": spec.connect_timeout_s},
            socket_timeout=spec.socket_timeout_s,
        )
        return sentinel.master_for(
            target.service,
            redis_class=aioredis.Redis,
            db=target.db,
            username=target.username,
            password=target.password,
            retry=no_retry,
            **_options(spec),
        )
    return aioredis.from_url(spec.url, retry=no_retry, **_options(spec))


def connect_sync(spec: RedisSpec) -> Any:
    """A blocking client for the CLI and producers: ``redis.Redis`` or ``redis.RedisCluster``."""
    assert spec.url is not None
    kind = kind_of_url(spec)
    if kind is None:
        probe = redis_sync.Redis.from_url(spec.url, **_options(spec))
        try:
            kind = Kind.CLUSTER if int(probe.info("cluster").get("cluster_enabled", 0)) else Kind.STANDALONE
        finally:
            probe.close()
    if kind is Kind.CLUSTER:
        return redis_sync.RedisCluster.from_url(spec.url, retry=Retry(NoBackoff(), 0), **_options(spec))
    if kind is Kind.SENTINEL:
        target = parse_sentinel_url(spec.url)
        sentinel = Sentinel(
            list(target.sentinels), sentinel_kwargs={"socket_timeout": spec.connect_timeout_s}
        )
        return sentinel.master_for(
            target.service, db=target.db, username=target.username, password=target.password, **_options(spec)
        )
    return redis_sync.Redis.from_url(spec.url, **_options(spec))


def kind_of_client(client: Any) -> Kind:
    """What a client made by ``connect`` talks to (for status and for what a cluster forbids)."""
    if isinstance(client, AsyncRedisCluster | redis_sync.RedisCluster):
        return Kind.CLUSTER
    pool = getattr(client, "connection_pool", None)
    sentinel = isinstance(pool, AsyncSentinelPool | SentinelConnectionPool)
    return Kind.SENTINEL if sentinel else Kind.STANDALONE


def by_slot(client: Any, keys: list[str]) -> list[list[str]]:
    """``keys`` grouped so that each group may go in one multi-key command (XREADGROUP of several
    streams): one group, unless ``client`` talks to a cluster (then one per slot)."""
    if kind_of_client(client) is not Kind.CLUSTER:
        return [keys]
    groups: dict[int, list[str]] = {}
    for key in keys:
        groups.setdefault(key_slot(key.encode()), []).append(key)
    return list(groups.values())
