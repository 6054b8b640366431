"""The pool across hosts, as Redis sees it: which workers of each host hold a live lease, and which
server holds each queue and stream (on a cluster: the primary of its slot). ``corral status`` shows
it beside the local supervisor's own view, which knows only its own children."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from corral.workers.consumers.membership import redis_now_ms
from corral.workers.jobs.keys import Keys
from corral.workers.topology import Kind, kind_of_client


@dataclass
class Fleet:
    topology: str
    hosts: dict[str, list[str]] = field(default_factory=dict)  # host -> its live worker ids
    placement: dict[str, str] = field(default_factory=dict)  # queue/stream key -> host:port

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def host_of(worker_id: str) -> str:
    """``<host>:<pool>:<slot>:<token>`` -> ``<host>`` (a host name holds no ':')."""
    return worker_id.split(":", 1)[0]


async def snapshot(redis: Any, keys: Keys, pool: str, names: list[str]) -> Fleet:
    kind = kind_of_client(redis)
    fleet = Fleet(kind.value)
    now_ms = await redis_now_ms(redis)
    for raw in await redis.zrangebyscore(keys.members(pool), now_ms, "+inf"):
        worker_id = raw.decode()
        fleet.hosts.setdefault(host_of(worker_id), []).append(worker_id)
    for workers in fleet.hosts.values():
        workers.sort()
    server = await _server(redis, kind)
    for name in names:
        fleet.placement[name] = _node(redis, name) if kind is Kind.CLUSTER else server
    return fleet


def _node(redis: Any, key: str) -> str:
    node = redis.get_node_from_key(key)
    return f"{node.host}:{node.port}"


async def _server(redis: Any, kind: Kind) -> str:
    if kind is Kind.SENTINEL:
        pool = redis.connection_pool
        host, port = await pool.get_master_address()
        return f"{host}:{port} (primary of {pool.service_name})"
    if kind is Kind.STANDALONE:
        kwargs = redis.connection_pool.connection_kwargs
        return str(kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}")
    return ""
