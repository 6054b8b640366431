"""Who consumes which shard of a partitioned stream: exactly one live child at a time.

Shard ``i`` of a stream with ``P`` partitions goes to the ``i % n``-th of the ``n`` eligible children
(ready, not being stopped, the newest of each slot), ordered by slot. Whenever that changes (a child
ready, being stopped, or dead: scale, reload, death) the shards that move are first revoked from
their previous owner — which answers once its round in progress is acknowledged, or is dead — and
only then assigned to the new one, so no two children ever consume the same shard at once.
"""

from __future__ import annotations

import asyncio
import signal
from collections import defaultdict

from loguru import logger

from corral.contract import Event, ShardsRequest
from corral.ipc import IPCError
from corral.supervisor.connection import WorkerConnection
from corral.supervisor.events import PoolEvent
from corral.supervisor.pool import WorkerPool
from corral.supervisor.states import WorkerState

Shard = tuple[str, int]  # (stream, shard index)
RETRY_S = 0.5


class PartitionAssigner:
    def __init__(self, pool: WorkerPool, partitions: dict[str, int]) -> None:
        self.pool = pool
        self.partitions = partitions  # stream -> P
        self.owners: dict[Shard, WorkerConnection] = {}
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        for event in (PoolEvent.READY, PoolEvent.KILLING, PoolEvent.EXIT):
            pool.on(event, self._changed)

    def _changed(self, conn: WorkerConnection) -> None:
        if not conn.alive:
            for shard in [s for s, owner in self.owners.items() if owner is conn]:
                del self.owners[shard]  # a dead process consumes nothing
        self._kick()

    def eligible(self) -> list[WorkerConnection]:
        newest: dict[int, WorkerConnection] = {}
        for conn in self.pool.connections():
            usable = conn.state is WorkerState.READY and not conn.stop_requested
            if usable and (conn.slot not in newest or conn.generation > newest[conn.slot].generation):
                newest[conn.slot] = conn
        return [newest[slot] for slot in sorted(newest)]

    def desired(self) -> dict[Shard, WorkerConnection]:
        conns = self.eligible()
        if not conns:
            return {}
        return {(stream, i): conns[i % len(conns)] for stream, p in self.partitions.items() for i in range(p)}

    def update(self, partitions: dict[str, int]) -> None:
        """A reload changed the partitioned streams (their count, their names): shards that no longer
        exist are revoked, new ones assigned, by the same revoke-before-assign rebalancing."""
        if partitions != self.partitions:
            logger.info("partitions: {} -> {}", self.partitions, partitions)
            self.partitions = dict(partitions)
            self._kick()

    def _kick(self) -> None:
        self._dirty.set()
        if self._task is None or self._task.done():
            self._task = self.pool.spawn_task(self._run())

    async def _run(self) -> None:
        while self._dirty.is_set() and not self.pool.stopping:
            self._dirty.clear()
            if not await self._rebalance(self.desired()):
                # a child refused (say, one that runs the config before a reload): again, not at once
                await asyncio.sleep(RETRY_S)

    async def _rebalance(self, desired: dict[Shard, WorkerConnection]) -> bool:
        """One round of moves; False if some assignment failed (``_dirty`` is set again)."""
        moving = [s for s, owner in self.owners.items() if desired.get(s) is not owner]
        revokes: dict[WorkerConnection, list[Shard]] = defaultdict(list)
        for shard in moving:
            revokes[self.owners[shard]].append(shard)
        await asyncio.gather(*(self._send(conn, Event.REVOKE, shards) for conn, shards in revokes.items()))
        for shard in moving:
            self.owners.pop(shard, None)
        assigns: dict[WorkerConnection, list[Shard]] = defaultdict(list)
        for shard, conn in desired.items():
            if shard not in self.owners:
                assigns[conn].append(shard)
        results = await asyncio.gather(
            *(self._send(conn, Event.ASSIGN, shards) for conn, shards in assigns.items())
        )
        complete = True
        for (conn, shards), ok in zip(assigns.items(), results, strict=True):
            if ok and conn.alive:
                self.owners.update(dict.fromkeys(shards, conn))
            else:
                self._dirty.set()  # try again with whoever is eligible then
                complete = False
        if moving or assigns:
            logger.info("partitions: {}", self.describe())
        return complete

    async def _send(self, conn: WorkerConnection, event: Event, shards: list[Shard]) -> bool:
        by_stream: dict[str, list[int]] = defaultdict(list)
        for stream, index in shards:
            by_stream[stream].append(index)
        timeout_s = self.pool.settings.graceful_timeout_s + 5.0
        try:
            for stream, indexes in by_stream.items():
                await conn.request(event, ShardsRequest(stream=stream, shards=sorted(indexes)), timeout_s)
        except IPCError as exc:
            # A shard moves on only once its owner let go or is dead: an owner that cannot answer
            # (exiting, or hung) gets kill_timeout_s to be gone, then SIGKILL.
            if event is Event.REVOKE and await conn.process.wait(self.pool.settings.kill_timeout_s) is None:
                logger.warning(
                    "slot {} pid {}: revoke failed ({}); killing it to free its shards",
                    conn.slot,
                    conn.pid,
                    exc,
                )
                conn.process.signal(signal.SIGKILL)
                await conn.process.wait(self.pool.settings.kill_timeout_s)
            return False
        return True

    def describe(self) -> str:
        by_slot: dict[int, list[str]] = defaultdict(list)
        for (stream, index), conn in sorted(self.owners.items()):
            by_slot[conn.slot].append(f"{stream}:{index}")
        return (
            "; ".join(f"slot {slot}: {', '.join(shards)}" for slot, shards in sorted(by_slot.items()))
            or "none"
        )
