"""The dead letters of a queue or stream: counted, listed, found, retried and purged.

A queue's dead letters are the JSON records ``DeadLetter.queue_record`` LPUSHes to ``keys.dead(list)``
(newest at the head), one list per concrete list key of the queue; a stream's are the entries
``DeadLetter.stream_record`` adds to ``keys.stream_dead(key)``, one dead stream per stream key (shard).

A retry moves one letter per Lua script: it leaves the dead letters and goes back to its queue (or
stream shard) in the same step, and only if it was still there. So two retries never double a letter,
and an interrupted bulk retry, run again, goes on with what is left: nothing lost, nothing twice. A
script's keys are a dead-letter key and the list or stream it belongs to, which share a hash tag
(``keys.py``). A bulk action reads the letters in chunks and runs its scripts in pipelined batches.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import json
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from corral.workers.jobs.keys import Keys, hash_tag
from corral.workers.jobs.scripts import DROP_ALL, RETRY_ENTRY, RETRY_JOB
from corral.workers.jobs.wire import Malformed, decode_fields, decode_job
from corral.workers.ops.catalog import Kind, Target
from corral.workers.scripts import Script

READ_CHUNK = 1000  # letters per LRANGE / XRANGE
BATCH = 200  # scripts per pipeline
META = (b"_id", b"_stream", b"_deliveries", b"_error", b"_group", b"_worker", b"_failed_at")
ENTRY_ID = re.compile(r"^\d+-\d+$")


class CannotRetry(RuntimeError):
    """A letter's destination is not a list (queue) or a stream: it stays a dead letter."""


@dataclass(frozen=True)
class Letter:
    """One dead letter, and the handles that act on exactly it."""

    id: str  # a job's id (else from its record's bytes), or the entry id in the dead stream
    source: str  # the concrete list or stream key it came from
    failed_at: float | None
    attempts: int | None
    error: str
    worker: str
    payload: str  # the job's JSON text, or the entry's own fields as a JSON object
    dead_key: str = field(repr=False)  # the dead-letter list or stream it is in
    home: str = field(repr=False)  # where a retry puts it (in dead_key's slot)
    record: bytes = field(default=b"", repr=False)  # a queue letter: the record's exact bytes
    job: bytes = field(default=b"", repr=False)  # a queue letter: the job's original bytes
    fields: tuple[tuple[bytes, bytes], ...] = field(default=(), repr=False)  # a stream letter's own


Wanted = Callable[[Letter], bool]
Progress = Callable[[int], None]


def matcher(
    ids: Iterable[str] | None = None,
    grep: str | None = None,
    since_s: float | None = None,
    before_s: float | None = None,
) -> Wanted:
    """Every given condition holds: one of ``ids``; ``grep`` in the payload or error (any case);
    failed at ``since_s`` or later; failed before ``before_s``."""
    wanted_ids = set(ids) if ids is not None else None
    needle = grep.lower() if grep is not None else None

    def wanted(letter: Letter) -> bool:
        if wanted_ids is not None and letter.id not in wanted_ids:
            return False
        if needle is not None and needle not in letter.payload.lower() and needle not in letter.error.lower():
            return False
        at = letter.failed_at
        if since_s is not None and (at is None or at < since_s):
            return False
        return before_s is None or (at is not None and at < before_s)

    return wanted


def revived(job: bytes) -> bytes:
    """The job as it goes back to its queue: a corral envelope with its attempt reset to 1 (its other
    fields kept), anything else byte for byte."""
    try:
        decoded = decode_job(job, "")
        value = json.loads(job)
    except Malformed:
        return job
    if not (isinstance(value, dict) and value.get("id") == decoded.id and value.get("_corral") == 1):
        return job
    return json.dumps({**value, "attempt": 1}, separators=(",", ":"), ensure_ascii=False).encode()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _home(target: Target, named: str, key: str) -> str:
    """Where a letter of ``key`` goes back: the key it names if that is one of the target's in the
    same slot, else ``key`` itself."""
    return named if named in target.keys and hash_tag(named) == hash_tag(key) else key


def queue_letter(target: Target, key: str, dead_key: str, record: bytes) -> Letter:
    try:
        value = json.loads(record)
    except ValueError:
        value = None
    if not isinstance(value, dict):  # not a corral record: the whole value is the job
        value = {"job_base64": base64.b64encode(record).decode()}
    if isinstance(value.get("job_base64"), str):
        job = base64.b64decode(value["job_base64"])
    else:
        job = value["job"].encode() if isinstance(value.get("job"), str) else record
    job_id = value.get("id")
    attempts = value.get("attempt")
    return Letter(
        id=job_id if isinstance(job_id, str) else hashlib.sha1(record).hexdigest()[:20],
        source=key,
        failed_at=_number(value.get("failed_at")),
        attempts=attempts if type(attempts) is int else None,
        error=str(value.get("error") or ""),
        worker=str(value.get("worker") or ""),
        payload=job.decode("utf-8", "replace"),
        dead_key=dead_key,
        home=_home(target, str(value.get("queue") or ""), key),
        record=record,
        job=job,
    )


def stream_letter(
    target: Target, key: str, dead_key: str, entry_id: bytes, raw: dict[bytes, bytes]
) -> Letter:
    own = tuple((name, value) for name, value in raw.items() if name not in META)
    meta = {name.decode(): value.decode("utf-8", "replace") for name, value in raw.items() if name in META}
    try:
        failed_at: float | None = float(meta.get("_failed_at", ""))
    except ValueError:
        failed_at = None
    deliveries = meta.get("_deliveries", "")
    return Letter(
        id=entry_id.decode(),
        source=meta.get("_stream") or key,
        failed_at=failed_at,
        attempts=int(deliveries) if deliveries.isdigit() else None,
        error=meta.get("_error", ""),
        worker=meta.get("_worker", ""),
        payload=json.dumps(decode_fields(dict(own)), ensure_ascii=False),
        dead_key=dead_key,
        home=_home(target, meta.get("_stream", ""), key),
        fields=own,
    )


def _newest_first(letter: Letter) -> float:
    return -(letter.failed_at if letter.failed_at is not None else float("-inf"))


class DeadLetters:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis: Any = redis
        self.keys = keys
        self._retry_job = Script(redis, RETRY_JOB)
        self._retry_entry = Script(redis, RETRY_ENTRY)
        self._drop_all = Script(redis, DROP_ALL)

    def dead_key(self, target: Target, key: str) -> str:
        return self.keys.dead(key) if target.kind is Kind.QUEUE else self.keys.stream_dead(key)

    async def count(self, target: Target) -> int:
        total = 0
        for key in target.keys:
            dead = self.dead_key(target, key)
            total += int(
                await (self.redis.llen(dead) if target.kind is Kind.QUEUE else self.redis.xlen(dead))
            )
        return total

    async def list(
        self,
        target: Target,
        *,
        grep: str | None = None,
        since_s: float | None = None,
        limit: int | None = None,
    ) -> list[Letter]:
        """The letters that match, newest first (at most ``limit``)."""
        wanted = matcher(grep=grep, since_s=since_s)
        found: list[Letter] = []
        for key in target.keys:
            matched = 0
            async with aclosing(self.newest(target, key)) as letters:
                async for letter in letters:
                    if wanted(letter):
                        found.append(letter)
                        matched += 1
                        if limit is not None and matched >= limit:
                            break
        found.sort(key=_newest_first)
        return found[:limit] if limit is not None else found

    async def find(self, target: Target, letter_id: str) -> Letter | None:
        for key in target.keys:
            if target.kind is Kind.STREAM:
                if not ENTRY_ID.match(letter_id):
                    return None
                dead = self.keys.stream_dead(key)
                for entry_id, raw in await self.redis.xrange(dead, letter_id, letter_id):
                    return stream_letter(target, key, dead, entry_id, raw)
                continue
            async with aclosing(self.newest(target, key)) as letters:
                async for letter in letters:
                    if letter.id == letter_id:
                        return letter
        return None

    async def missing(self, target: Target, ids: Iterable[str]) -> builtins.list[str]:
        """Those of ``ids`` that are no dead letter of ``target`` (one pass over them all)."""
        wanted = list(dict.fromkeys(ids))
        if target.kind is Kind.STREAM:
            return [i for i in wanted if await self.find(target, i) is None]
        left = set(wanted)
        for key in target.keys:
            async with aclosing(self.newest(target, key)) as letters:
                async for letter in letters:
                    left.discard(letter.id)
                    if not left:
                        return []
        return [i for i in wanted if i in left]

    async def newest(self, target: Target, key: str) -> AsyncGenerator[Letter, None]:
        """The dead letters of one list or stream key, newest first, read in chunks (a list by its
        offset from the head: a letter that arrives meanwhile can make one be read twice)."""
        dead = self.dead_key(target, key)
        if target.kind is Kind.QUEUE:
            start = 0
            while chunk := await self.redis.lrange(dead, start, start + READ_CHUNK - 1):
                for record in chunk:
                    yield queue_letter(target, key, dead, record)
                start += len(chunk)
            return
        high = "+"
        while entries := await self.redis.xrevrange(dead, high, "-", count=READ_CHUNK):
            for entry_id, raw in entries:
                yield stream_letter(target, key, dead, entry_id, raw)
            high = "(" + entries[-1][0].decode()

    async def retry(
        self,
        target: Target,
        *,
        ids: builtins.list[str] | None = None,
        grep: str | None = None,
        on_progress: Progress | None = None,
    ) -> int:
        """Put the letters that match back (all of them without ``ids`` or ``grep``), the oldest
        first; how many moved. ``CannotRetry`` when a destination has the wrong type."""
        return await self._each_batch(target, matcher(ids=ids, grep=grep), self._send_back, on_progress)

    async def purge(
        self,
        target: Target,
        *,
        ids: builtins.list[str] | None = None,
        grep: str | None = None,
        before_s: float | None = None,
        on_progress: Progress | None = None,
    ) -> int:
        """Delete the letters that match (every one without a filter); how many went."""
        if ids is None and grep is None and before_s is None:
            gone = 0
            for key in target.keys:
                dropped = int(await self._drop_all(keys=[self.dead_key(target, key)]))
                gone += dropped
                if on_progress is not None:
                    on_progress(dropped)
            return gone
        wanted = matcher(ids=ids, grep=grep, before_s=before_s)
        return await self._each_batch(target, wanted, self._drop, on_progress)

    async def _each_batch(
        self,
        target: Target,
        wanted: Wanted,
        act: Callable[[Kind, builtins.list[Letter]], Awaitable[int]],
        on_progress: Progress | None,
    ) -> int:
        done = 0
        for key in target.keys:
            async with aclosing(self._oldest_chunks(target, key, wanted)) as chunks:
                async for letters in chunks:
                    for start in range(0, len(letters), BATCH):
                        moved = await act(target.kind, letters[start : start + BATCH])
                        done += moved
                        if on_progress is not None:
                            on_progress(moved)
        return done

    async def _oldest_chunks(
        self, target: Target, key: str, wanted: Wanted
    ) -> AsyncGenerator[builtins.list[Letter], None]:
        """The matching letters of one key, oldest first, a chunk at a time, read afresh after each
        chunk was acted on. A list is read from its tail (new letters arrive at its head): the
        letters left there are skipped by their count; a stream after the last id read."""
        dead = self.dead_key(target, key)
        # only the letters there when the pass began: one dead-lettered again meanwhile (a retried
        # poison job) is not retried again by the same pass, which therefore ends
        if target.kind is Kind.STREAM:
            newest = await self.redis.xrevrange(dead, "+", "-", count=1)
            low, high = "-", newest[0][0] if newest else None
            while high is not None and (
                entries := await self.redis.xrange(dead, low, high, count=READ_CHUNK)
            ):
                letters = [stream_letter(target, key, dead, entry_id, raw) for entry_id, raw in entries]
                yield [letter for letter in letters if wanted(letter)]
                low = "(" + entries[-1][0].decode()
            return
        kept, left = 0, int(await self.redis.llen(dead))
        while left > 0 and (
            chunk := await self.redis.lrange(dead, -(kept + min(READ_CHUNK, left)), -(kept + 1))
        ):
            letters = [queue_letter(target, key, dead, record) for record in reversed(chunk)]
            chosen = [letter for letter in letters if wanted(letter)]
            yield chosen
            kept += len(chunk) - len(chosen)
            left -= len(chunk)

    async def _send_back(self, kind: Kind, letters: builtins.list[Letter]) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            for letter in letters:
                if kind is Kind.QUEUE:
                    args: builtins.list[Any] = [letter.record, revived(letter.job)]
                    await self._retry_job(keys=[letter.dead_key, letter.home], args=args, client=pipe)
                else:
                    args = [letter.id, *(part for pair in letter.fields for part in pair)]
                    await self._retry_entry(keys=[letter.dead_key, letter.home], args=args, client=pipe)
            replies = [int(reply) for reply in await pipe.execute()]
        refused = [letter for letter, reply in zip(letters, replies, strict=True) if reply < 0]
        if refused:
            what = "a list" if kind is Kind.QUEUE else "a stream (or the entry has no fields)"
            raise CannotRetry(f"cannot put dead letter {refused[0].id} back: {refused[0].home} is not {what}")
        return sum(replies)

    async def _drop(self, kind: Kind, letters: builtins.list[Letter]) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            for letter in letters:
                if kind is Kind.QUEUE:
                    pipe.lrem(letter.dead_key, -1, letter.record)
                else:
                    pipe.xdel(letter.dead_key, letter.id)
            return sum(int(reply) for reply in await pipe.execute())
