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
from redis.exceptions import ResponseError

from corral.contract import StreamSpec
from corral.workers.consumers.base import error_summary
from corral.workers.consumers.entries import Entry, EntryUnit, create_group, is_nogroup
from corral.workers.consumers.outages import REDIS_DOWN
from corral.workers.consumers.pauses import PAUSED_IDLE_S
from corral.workers.jobs.keys import Keys
from corral.workers.messages import Reject
from corral.workers.producer import shard_name
from corral.workers.topology import by_slot

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
        self._turn = 0  # on a cluster: whose slot the next blocking read waits on

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
        try:
            return await self._round()
        except ResponseError as exc:
            if not is_nogroup(exc):
                raise
            # a shard or its group is gone (a restart without persistence, FLUSHALL): make them again
            self.log.warning("stream {}: a shard's group is gone; creating them again", self.spec.stream)
            async with self.lock:
                for shard in self.owned:
                    await create_group(
                        self.redis, shard_name(self.spec.stream, shard), self.spec.group, self.spec.start_id
                    )
            return 0

    async def _round(self) -> int:
        names = {shard_name(self.spec.stream, shard): shard for shard in self.owned}
        paused = {names[name] for name in await self.pauses.of(list(names))}
        self.paused = bool(paused) and paused >= self.owned
        if self.paused:
            await asyncio.sleep(PAUSED_IDLE_S)
            return 0
        async with self.lock:
            now = time.monotonic()
            ready = {s for s in self.owned - paused if self.not_before.get(s, 0.0) <= now}
            backlog = sorted(self.backlog & ready)
            if backlog:
                return await self._drain_backlog(backlog[0])
            fresh = sorted(ready - self.backlog)
            if not fresh:
                return 0
            handled = 0
            for raw_stream, entries in await self._read_fresh(fresh):
                shard = int(raw_stream.decode().rsplit(":", 1)[1])
                handled += await self._handle_shard(shard, [(e, f, 1) for e, f in entries], fresh=True)
            return handled

    async def _read_fresh(self, shards: list[int]) -> list[Any]:
        """New entries of these shards: one XREADGROUP, blocking up to ``block_ms``. On a cluster
        the shards live in several slots: one read per slot at once without blocking, and if all
        are empty one blocking read, of each slot in turn, for its share of ``block_ms``."""
        groups = by_slot(self.redis, [shard_name(self.spec.stream, s) for s in shards])
        if len(groups) == 1:
            return await self._xread(groups[0], self.spec.block_ms)
        replies = await asyncio.gather(*(self._xread(group, None) for group in groups))
        found = [item for reply in replies for item in reply]
        if found:
            return found
        self._turn = (self._turn + 1) % len(groups)
        return await self._xread(groups[self._turn], max(1, self.spec.block_ms // len(groups)))

    async def _xread(self, names: list[str], block_ms: int | None) -> list[Any]:
        streams = dict.fromkeys(names, ">")
        reply = await self.redis.xreadgroup(
            self.spec.group, self.consumer, streams, count=self.spec.batch_size, block=block_ms
        )
        return list(reply or [])

    async def _drain_backlog(self, shard: int) -> int:
        """What the shard's group still has pending (a previous owner's, or our failures), in order.
        Taken without counting a delivery (XCLAIM JUSTID): an entry's count is the attempts made on
        it, so one entry being retried does not use up the attempts of those behind it."""
        stream = shard_name(self.spec.stream, shard)
        pending = await self.redis.xpending_range(
            stream, self.spec.group, min="-", max="+", count=self.spec.batch_size
        )
        if not pending:
            self.backlog.discard(shard)
            return 0
        theirs = [p["message_id"] for p in pending if p["consumer"] != self.consumer.encode()]
        if theirs:
            await self.redis.xclaim(stream, self.spec.group, self.consumer, 0, theirs, justid=True)
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in pending:
                pipe.xrange(stream, min=p["message_id"], max=p["message_id"])
            found = await pipe.execute()
        entries = [
            (p["message_id"], rows[0][1], int(p["times_delivered"]) + 1)
            for p, rows in zip(pending, found, strict=True)
            if rows
        ]
        gone = [p["message_id"] for p, rows in zip(pending, found, strict=True) if not rows]
        if gone:  # deleted from the stream while pending: nothing to handle
            await self.redis.xack(stream, self.spec.group, *gone)
        return await self._handle_shard(shard, entries, fresh=False) if entries else 0

    async def _handle_shard(self, shard: int, entries: list[Entry], fresh: bool) -> int:
        """Entries of one shard, in order; stop at the first failure (the shard waits for it). An
        entry's delivery count is kept to the attempts made on it (``fresh``: just read, counted 1)."""
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
                except Exception as exc:  # the handler's failure (its own Redis errors too)
                    self._failed(shard, entry_id, attempt, exc)
                    if attempt >= self.spec.max_deliveries:  # the last allowed one: its error at hand
                        await self.dead_letter(stream, entry_id, raw_fields, attempt)
                        continue
                    await self._count_attempts(stream, entry_id, attempt, entries, fresh)
                    break
                self.processed += 1
                done.append(entry_id)
        except REDIS_DOWN:
            self.backlog.add(shard)  # once Redis is back: what we hold first, in order
            raise
        finally:
            self.in_flight = 0
            if done:
                await self.redis.xack(stream, self.spec.group, *done)
        return len(done)

    async def _count_attempts(
        self, stream: str, failed: bytes, attempt: int, entries: list[Entry], fresh: bool
    ) -> None:
        """After a failure: the failed entry counts ``attempt`` deliveries; the fresh entries behind
        it were read (counted 1) but not tried: back to 0."""
        ids = [entry_id for entry_id, _, _ in entries]
        behind = ids[ids.index(failed) + 1 :]
        group, me = self.spec.group, self.consumer
        if not fresh:
            await self.redis.xclaim(stream, group, me, 0, [failed], retrycount=attempt, justid=True)
        elif behind:
            await self.redis.xclaim(stream, group, me, 0, behind, retrycount=0, justid=True)

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
