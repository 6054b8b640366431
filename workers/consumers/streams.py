"""Redis Streams through a consumer group: one consumer per worker process.

One round reads a batch (XREADGROUP COUNT n: entries this consumer holds first — claimed from a dead
worker or left unacknowledged by a failing handler — then new ones), runs the handler on each and
acknowledges the batch with one XACK. A failed entry stays pending and is claimed again (XAUTOCLAIM,
by any consumer) once idle for ``min_idle_ms``; past ``max_deliveries`` it goes to the dead-letter
stream with the reason. Trimming never drops an entry a group has not acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
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

LAG_INTERVAL_S = 1.0


class StreamConsumer(EntryUnit):
    def __init__(self, spec: StreamSpec, *, redis: Redis, keys: Keys, worker_id: str, log: Any) -> None:
        super().__init__(spec, redis=redis, keys=keys, worker_id=worker_id, log=log)
        self.name = f"stream:{spec.stream}"
        self.idle_sleep_s = 0.0  # an empty round already blocked in XREADGROUP
        self.unacked: list[bytes] = []
        self._keeper: asyncio.Future[None] | None = None  # keeps the batch in hand claimed
        self.read_own = False  # a pass over our own pending entries first (after an outage)
        self._recovered: dict[bytes, int] = {}  # claimed for us by a recovery -> its deliveries then
        self._own_cursor = b"0"  # how far the pass over our own pending entries got
        self._group_ready = False
        self._claimed_at = 0.0
        self._trimmed_at = time.monotonic()
        self._lag_at = 0.0
        self.lag = 0

    async def run(self) -> int:
        try:
            return await self._round()
        except ResponseError as exc:
            if not is_nogroup(exc):
                raise
            # the stream or its group is gone (a restart without persistence, FLUSHALL): make it again
            self.log.warning(
                "stream {}: the group {} is gone; creating it again", self.spec.stream, self.spec.group
            )
            self._group_ready, self.read_own, self._own_cursor = False, True, b"0"
            return 0

    async def _round(self) -> int:
        if not self._group_ready:
            await self._create_group()
        if self.unacked:
            await self._ack()
        await self._maybe_trim()
        await self._measure_lag()
        entries = await self._read()
        if not entries:
            return 0
        self.in_flight, before = len(entries), self.processed
        self.in_hand = [entry_id for entry_id, _, _ in entries]
        self._keeper = asyncio.ensure_future(self._keep_claimed())
        refill = None if self.spec.batch else self._refill
        try:
            await self.run_round(entries, self._handle, self.spec.concurrency, refill=refill)
        except REDIS_DOWN:
            self.read_own, self._own_cursor = True, b"0"  # what we hold is handled first once back
            raise
        finally:
            self.in_flight = 0
            if self._keeper is not None:
                self._keeper.cancel()
        await self._ack()
        return self.processed - before  # what the slot counts as processed, as the stream does

    async def _refill(self, free: int) -> list[Entry]:
        """A lane freed mid-round: acknowledge what is done, read a free lane's worth of new entries
        (and the prefetch) without blocking; nothing once the worker stops or its lease is in doubt."""
        if not self.may_take():
            return []
        await self._ack()
        spec = self.spec
        count = self.sizer.size(free)
        reply = await self.redis.xreadgroup(spec.group, self.consumer, {spec.stream: ">"}, count=count)
        entries = [(entry_id, fields, 1) for entry_id, fields in (reply[0][1] if reply else [])]
        self.in_hand += [entry_id for entry_id, _, _ in entries]
        self.in_flight += len(entries)
        return entries

    async def _keep_claimed(self) -> None:
        """While entries are in hand, reset their idle time every third of ``min_idle_ms``
        (XCLAIM to ourselves, JUSTID: no delivery counted), so that no other consumer claims an
        entry whose handler is merely slow and runs it a second time at once."""
        interval_s = self.spec.min_idle_ms / 3000
        while True:
            await asyncio.sleep(interval_s)
            done = set(self.unacked)
            unfinished = [entry_id for entry_id in self.in_hand if entry_id not in done]
            if not unfinished:  # all handled: the round is about to acknowledge them
                continue
            with contextlib.suppress(*REDIS_DOWN):  # the round itself notices an outage
                await self.redis.xclaim(
                    self.spec.stream, self.spec.group, self.consumer, 0, unfinished, justid=True
                )

    async def _measure_lag(self) -> None:
        """Every LAG_INTERVAL_S: entries the group has not been given yet (XINFO GROUPS lag)."""
        now = time.monotonic()
        if now - self._lag_at < LAG_INTERVAL_S:
            return
        self._lag_at = now
        for group in await self.redis.xinfo_groups(self.spec.stream):
            name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
            if name == self.spec.group:
                self.lag = int(group.get("lag") or 0)

    async def _read(self) -> list[Entry]:
        spec = self.spec
        if self._recovered:
            return await self._deliver_recovered()
        self.paused = bool(await self.pauses.of([spec.stream]))
        if self.paused:  # what we hold stays pending, ours, until resumed (or claimed if we die)
            await asyncio.sleep(PAUSED_IDLE_S)
            return []
        if self.read_own:
            reply = await self.redis.xreadgroup(
                spec.group, self.consumer, {spec.stream: self._own_cursor}, count=spec.batch_size
            )
            entries = reply[0][1] if reply else []
            if entries:
                # one pass over what we hold: an entry that fails now is not read again next round
                # (a retry storm) but like any failure, by XAUTOCLAIM once idle for min_idle_ms
                self._own_cursor = entries[-1][0]
                return await self.with_attempts(self.spec.stream, entries)
            self._own_cursor, self.read_own = b"0", False
        if time.monotonic() - self._claimed_at >= spec.claim_interval_s:
            self._claimed_at = time.monotonic()
            claimed = await self._claim_idle()
            if claimed:
                return claimed
        count = spec.batch_size if spec.batch else self.sizer.size(spec.concurrency)
        reply = await self.redis.xreadgroup(
            spec.group, self.consumer, {spec.stream: ">"}, count=count, block=spec.block_ms
        )
        return [(entry_id, fields, 1) for entry_id, fields in (reply[0][1] if reply else [])]

    async def _deliver_recovered(self) -> list[Entry]:
        """A dead consumer's entries, precisely (XCLAIM counts the delivery); not one that was
        delivered to us since (by a pass over what we hold, after an outage): its count moved."""
        spec = self.spec
        batch = dict(list(self._recovered.items())[: spec.batch_size])
        for entry_id in batch:
            del self._recovered[entry_id]
        first, last = min(batch), max(batch)
        pending = await self.redis.xpending_range(
            spec.stream, spec.group, min=first, max=last, count=len(batch) * 2, consumername=self.consumer
        )
        due = [p["message_id"] for p in pending if batch.get(p["message_id"]) == p["times_delivered"]]
        if not due:
            return []
        claimed = await self.redis.xclaim(spec.stream, spec.group, self.consumer, 0, due)
        return await self.with_attempts(spec.stream, [(i, f) for i, f in claimed if f])

    async def _claim_idle(self) -> list[Entry]:
        reply = await self.redis.xautoclaim(
            self.spec.stream,
            self.spec.group,
            self.consumer,
            self.spec.min_idle_ms,
            "0-0",
            count=self.spec.batch_size,
        )
        entries = [(entry_id, fields) for entry_id, fields in reply[1] if fields is not None]
        if entries:
            self.log.info("stream {}: claimed {} idle entries", self.spec.stream, len(entries))
        return await self.with_attempts(self.spec.stream, entries) if entries else []

    async def _handle(self, entry_id: bytes, raw_fields: dict[bytes, bytes], attempt: int) -> None:
        try:
            await self._handle_entry(entry_id, raw_fields, attempt)
        finally:
            self.in_flight = max(0, self.in_flight - 1)

    async def _handle_entry(self, entry_id: bytes, raw_fields: dict[bytes, bytes], attempt: int) -> None:
        if attempt > self.spec.max_deliveries:
            await self.dead_letter(self.spec.stream, entry_id, raw_fields, attempt)
            return
        message = self.message(self.spec.stream, entry_id, raw_fields, attempt)
        try:
            await self.call(message)
        except Reject as reject:  # can never succeed: dead-lettered at once, no retries
            self.errors[entry_id] = f"rejected: {reject.reason}"
            await self.dead_letter(self.spec.stream, entry_id, raw_fields, attempt)
            return
        except Exception as exc:  # the handler's failure, whatever it raised (its own Redis errors too)
            self.failed += 1
            self.errors[entry_id] = error_summary(exc, 1000)
            self.log.bind(job=message.id).warning(
                "stream {}: entry {} attempt {} failed: {!r}", self.spec.stream, message.id, attempt, exc
            )
            if attempt >= self.spec.max_deliveries:  # the last allowed delivery: its error at hand
                await self.dead_letter(self.spec.stream, entry_id, raw_fields, attempt)
            return  # stays pending: claimed again after min_idle_ms
        self.processed += 1
        self.errors.pop(entry_id, None)
        self.unacked.append(entry_id)

    async def _ack(self) -> None:
        if not self.unacked:
            return
        spec, ids = self.spec, self.unacked
        self.unacked = []  # lanes may go on handling meanwhile: what they add waits for the next ack
        try:
            acked = await self.durable.run(
                lambda client: client.xack(spec.stream, spec.group, *ids), [spec.stream]
            )
        except BaseException:
            self.unacked[:0] = ids
            raise
        self.refused += len(ids) - int(acked)  # claimed away from us while we were cut off
        done = set(ids)
        self.in_hand = [entry_id for entry_id in self.in_hand if entry_id not in done]

    async def _create_group(self) -> None:
        await create_group(self.redis, self.spec.stream, self.spec.group, self.spec.start_id)
        self._group_ready = True

    async def recover(self, dead_consumer: str) -> int:
        """Take over a dead consumer's pending entries (handled next round), then delete it. No
        group (the stream or the group is gone): nothing is pending, nothing to recover."""
        try:
            return await self._claim_all_of(dead_consumer)
        except ResponseError as exc:
            if not is_nogroup(exc):
                raise
            self._group_ready = False
            return 0

    async def _claim_all_of(self, dead_consumer: str) -> int:
        """Its pending entries become ours (JUSTID: no delivery counted yet), handled first from the
        next round on, each delivered once, by id: not by a pass over all we hold, which would
        also re-read at once what just failed in our hands."""
        moved = 0
        while True:
            pending = await self.redis.xpending_range(
                self.spec.stream, self.spec.group, min="-", max="+", count=1000, consumername=dead_consumer
            )
            if not pending:
                break
            ids = [p["message_id"] for p in pending]
            await self.redis.xclaim(self.spec.stream, self.spec.group, self.consumer, 0, ids, justid=True)
            self._recovered.update((p["message_id"], p["times_delivered"]) for p in pending)
            moved += len(ids)
        await self.redis.xgroup_delconsumer(self.spec.stream, self.spec.group, dead_consumer)
        return moved

    async def _maybe_trim(self) -> None:
        """Keep about ``trim_maxlen`` entries, but never cut past what some group still needs."""
        if self.spec.trim_maxlen is None or time.monotonic() - self._trimmed_at < self.spec.trim_interval_s:
            return
        self._trimmed_at = time.monotonic()
        excess = int(await self.redis.xlen(self.spec.stream)) - self.spec.trim_maxlen
        if excess <= 0:
            return
        # the first entry to keep: at most 10k entries are looked at per round (the next continues)
        head = await self.redis.xrange(self.spec.stream, min="-", max="+", count=min(excess + 1, 10_000))
        minid = bytes(head[-1][0])
        floor = await self._oldest_unacknowledged()
        if floor is not None and _id_key(floor) < _id_key(minid):
            self.log.warning(
                "stream {}: trimming held back at {} (not acknowledged yet), not {}",
                self.spec.stream,
                floor.decode(),
                minid.decode(),
            )
            minid = floor
        await self.redis.xtrim(self.spec.stream, minid=minid, approximate=True)

    async def _oldest_unacknowledged(self) -> bytes | None:
        """The lowest id some group still needs: its oldest pending entry or its next undelivered one."""
        floors: list[bytes] = []
        for group in await self.redis.xinfo_groups(self.spec.stream):
            summary = await self.redis.xpending(self.spec.stream, group["name"])
            if summary["pending"]:
                floors.append(_as_id(summary["min"]))
            last = _as_id(group["last-delivered-id"])
            floors.append(_next_id(last))
        return min(floors, key=_id_key) if floors else None

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "lag": self.lag}


def _as_id(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def _next_id(entry_id: bytes) -> bytes:
    ms, seq = _id_key(entry_id)
    return f"{ms}-{seq + 1}".encode()
