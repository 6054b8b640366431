"""Writes that survive a failover: ``[redis] wait_replicas = N`` adds a ``WAIT N timeout`` after them.

Replication is asynchronous: a primary that dies may take its last writes with it, and the replica
promoted in its place never saw them. Every move of a job is one atomic step, so a lost write leaves
the job where it was before (a lost take: still queued; a lost ack: still in a processing list, put
back when its holder notices the outage): at least once holds without WAIT, and what a lost write
costs is a duplicate. What WAIT buys is that an acknowledged take or ack is on a replica, so a
failover neither repeats nor (for a producer's push, ``producer.py``) forgets it.

WAIT covers what its own connection wrote, so it goes in the same pipeline as the writes: on a
cluster one per node the pipeline wrote to (a pipeline is one connection per node).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loguru import logger

from corral.contract import RedisSpec
from corral.workers.topology import Kind, kind_of_client


class Durability:
    def __init__(self, redis: Any, spec: RedisSpec) -> None:
        self.redis = redis
        self.replicas = spec.wait_replicas
        self.timeout_ms = spec.wait_timeout_ms
        self.cluster = kind_of_client(redis) is Kind.CLUSTER
        self.short = 0  # WAITs that timed out with fewer replicas than asked for

    @property
    def on(self) -> bool:
        return self.replicas > 0

    async def execute(self, pipe: Any, keys: list[str]) -> list[Any]:
        """Run ``pipe`` (which writes ``keys``), with WAITs after it when asked for; the replies
        of its own commands (the WAITs' stripped, a short one logged)."""
        if not self.on:
            return list(await pipe.execute())
        if self.cluster:  # one WAIT per node written to, each on that node's connection
            nodes = {node.name: node for node in map(self.redis.get_node_from_key, keys)}
            for node in nodes.values():
                pipe.execute_command("WAIT", self.replicas, self.timeout_ms, target_nodes=node)
            added = len(nodes)
        else:
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
            added = 1
        replies = list(await pipe.execute())
        acked = replies[-added:]
        if any(int(count) < self.replicas for count in acked):
            self.short += 1
            if self.short == 1 or self.short % 1000 == 0:
                logger.warning(
                    "WAIT {} replicas timed out after {} ms ({} times): writes may not survive a failover",
                    self.replicas,
                    self.timeout_ms,
                    self.short,
                )
        return replies[:-added]

    async def run(self, command: Callable[[Any], Any], keys: list[str]) -> Any:
        """``command(client)``, one redis-py call writing ``keys``, made on the client, or when
        asked for in a pipeline with its WAIT (a WAIT covers its own connection's writes)."""
        if not self.on:
            return await command(self.redis)
        async with self.redis.pipeline(transaction=False) as pipe:
            command(pipe)
            [reply] = await self.execute(pipe, keys)
        return reply
