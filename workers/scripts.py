"""A Lua script that runs on any client corral makes: a server, a Cluster or a Sentinel primary,
called directly or inside a pipeline.

Directly, and in a standalone pipeline, it runs by EVALSHA (loaded on first use, and again on a node
that lost it: a restarted or newly promoted one). redis-py's cluster pipeline refuses EVALSHA, since
a node in the batch may not know the script and the batch cannot load it first; there the script
goes as EVAL with its text, which the server caches by digest, so it never meets NOSCRIPT. Each
script's keys share one hash tag, so the cluster client routes it by its first key.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.cluster import ClusterPipeline


class Script:
    def __init__(self, redis: Any, text: str) -> None:
        self.text = text
        self._script = redis.register_script(text)

    async def __call__(self, keys: list[str], args: list[Any] | None = None, client: Any = None) -> Any:
        """Run now (``client`` None: the registering client, or another client), or add to the
        pipeline ``client`` (the reply comes with its ``execute()``)."""
        if isinstance(client, ClusterPipeline):
            return client.execute_command("EVAL", self.text, len(keys), *keys, *(args or ()))
        return await self._script(keys=keys, args=args, client=client)
