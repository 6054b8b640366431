"""Partitioned streams: shards ``<stream>:0..P-1``, each consumed by exactly one worker at a time.

The supervisor decides who owns which shard and tells the workers (``corral.partitions.assign`` /
``corral.partitions.revoke``); a revoke returns only once the round in progress has finished and
been acknowledged, so the next owner never overlaps the previous one. A newly assigned shard is first
drained of the entries its previous owner left pending (older than anything unread), then read
as usual. An entry whose handler fails blocks its shard (retried with backoff, then dead-lettered),
so all events of one key are handled in order, one at a time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio import Redis

from corral.contract import StreamSpec
from corral.workers.consumers.base import error_summary
from corral.workers.consumers.client import REDIS_DOWN
from corral.workers.consumers.entries import Entry, EntryUnit, create_group
from corral.workers.keys import Keys
from corral.workers.messages import Reject
from corral.workers.producer import shard_name

MAX_RETRY_DELAY_S = 5.0


class PartitionedStreamConsumer(EntryUnit):
    def __init__(self, spec: StreamSpec, *, redis: Redis, keys: Keys, worker_id: str, log: Any) -> None:
        super().__init__(spec, redis=redis, keys=keys, worker_id=worker_id, log=log)
        self.name = f"partitioned:{spec.stream}"
        self.idle_sleep_s = 0.05  # no shard assigned (yet): look again soon
        self.owned: set[int] = set()
        self.backlog: set[int] = set()  # shards whose pending entries must be handled first
        self.not_before: dict[int, float] = {}  # shard -> retry time after a failed entry
        self.lock = asyncio.Lock()

    async def assign(self, shards: list[int]) -> list[int]:
        async with self.lock:
            for shard in shards:
                await create_group(
                    self.redis, shard_name(self.spec.stream, shard), self.spec.group, self.spec.start_id
                )
            self.owned.update(shards)
            self.backlog.update(shards)
        self.log.info("stream {}: now owns shards {}", self.spec.stream, sorted(self.owned))
        return sorted(self.owned)

    async def revoke(self, shards: list[int]) -> list[int]:
        async with self.lock:  # waits for the round in progress: acknowledged before we answer
            self.owned.difference_update(shards)
            self.backlog.difference_update(shards)
        return sorted(self.owned)

    async def run(self) -> int:
        if not self.owned:
            return 0
        async with self.lock:
            now = time.monotonic()
            ready = {s for s in self.owned if self.not_before.get(s, 0.0) <= now}
            backlog = sorted(self.backlog & ready)
            if backlog:
                return await self._drain_backlog(backlog[0])
            fresh = sorted(ready - self.backlog)
            if not fresh:
                return 0
            streams = {shard_name(self.spec.stream, s): ">" for s in fresh}
            reply = await self.redis.xreadgroup(
                self.spec.group, self.consumer, streams, count=self.spec.batch_size, block=self.spec.block_ms
            )
            handled = 0
            for raw_stream, entries in reply or []:
                shard = int(raw_stream.decode().rsplit(":", 1)[1])
                handled += await self._handle_shard(shard, [(e, f, 1) for e, f in entries])
            return handled

    async def _drain_backlog(self, shard: int) -> int:
        """Claim what the shard's group still has pending (a previous owner's, or our failures)."""
        stream = shard_name(self.spec.stream, shard)
        reply = await self.redis.xautoclaim(
            stream, self.spec.group, self.consumer, 0, "0-0", count=self.spec.batch_size
        )
        entries = await self.with_attempts(stream, reply[1]) if reply[1] else []
        if not entries:
            self.backlog.discard(shard)
            return 0
        return await self._handle_shard(shard, entries)

    async def _handle_shard(self, shard: int, entries: list[Entry]) -> int:
        """Entries of one shard, in order; stop at the first failure (the shard waits for it)."""
        stream = shard_name(self.spec.stream, shard)
        done: list[bytes] = []
        self.in_flight = len(entries)
        try:
            for entry_id, raw_fields, attempt in entries:
                if attempt > self.spec.max_deliveries:
                    await self.dead_letter(stream, entry_id, raw_fields, attempt)
                    continue
                message = self.message(stream, entry_id, raw_fields, attempt)
                try:
                    await self.call(message)
                except Reject as reject:  # can never succeed: out of the way at once, in order
                    self.errors[entry_id] = f"rejected: {reject.reason}"
                    await self.dead_letter(stream, entry_id, raw_fields, attempt)
                    continue
                except REDIS_DOWN:
                    self.backlog.add(shard)  # once Redis is back: what we hold first, in order
                    raise
                except Exception as exc:
                    self._failed(shard, entry_id, attempt, exc)
                    if attempt >= self.spec.max_deliveries:  # the last allowed one: its error at hand
                        await self.dead_letter(stream, entry_id, raw_fields, attempt)
                        continue
                    break
                self.processed += 1
                done.append(entry_id)
        finally:
            self.in_flight = 0
            if done:
                await self.redis.xack(stream, self.spec.group, *done)
        return len(done)

    def _failed(self, shard: int, entry_id: bytes, attempt: int, exc: Exception) -> None:
        self.failed += 1
        self.errors[entry_id] = error_summary(exc, 1000)
        delay_s = min(0.1 * 2 ** (attempt - 1), MAX_RETRY_DELAY_S)
        self.backlog.add(shard)
        self.not_before[shard] = time.monotonic() + delay_s
        self.log.bind(job=entry_id.decode()).warning(
            "stream {} shard {}: entry {} attempt {} failed: {!r}; the shard waits {:.1f}s",
            self.spec.stream,
            shard,
            entry_id.decode(),
            attempt,
            exc,
            delay_s,
        )

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "shards": len(self.owned)}
