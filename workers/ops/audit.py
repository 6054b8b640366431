"""What a pool's workers hold in Redis, and whether anybody will ever give it back (``corral inspect``).

One pass over the keys corral owns (SCAN): every worker's processing lists and every retry set, and
the member sets of leases; then the pending entries of the given streams' groups (XPENDING). Each
holding gets a fate:

- ``held by a live member``: its worker's lease is current;
- ``will be swept (lease expired <n> ms ago)``: its worker is still in a member set, expired, and a
  live member of that pool will recover it on its next sweep;
- ``claimable after idle``: stream entries pending under a consumer that is in no member set, while
  some member of the pool is alive (XAUTOCLAIM takes them once idle ``min_idle_ms``);
- ``stranded``: nothing running will pick it up (a processing list whose worker is in no member set,
  or whose queue a sweep would not find; anything held by an expired or unknown worker while no
  member of the pool is alive);
- ``waiting for a retry``: a retry set (moved back to its queue when due by any live consumer).

Every Redis call is bounded (SCAN COUNT, XPENDING with a count, pipelines in chunks); no loop but
SCAN's, which ends when its cursor comes back to 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.exceptions import ResponseError

from corral.workers.consumers.membership import redis_now_ms
from corral.workers.jobs.keys import Keys

PROCESSING = "processing list"
PENDING = "pending entries"
RETRY = "retry set"

HELD = "held by a live member"
CLAIMABLE = "claimable after idle"
STRANDED = "stranded"
WAITING = "waiting for a retry"

SCAN_COUNT = 1000
CHUNK = 500  # commands per pipeline round trip
MAX_LISTED_MEMBERS = 100


def swept(expired_ms_ago: int) -> str:
    return f"will be swept (lease expired {expired_ms_ago} ms ago)"


@dataclass(frozen=True)
class Holding:
    kind: str  # PROCESSING, PENDING or RETRY
    where: str  # the key, or "<stream> <group>" for pending entries
    count: int  # jobs or entries
    holder: str | None  # the worker id (a consumer's name); None for a retry set
    fate: str
    detail: str = ""  # why it is stranded, how long idle, when the first retry is due
    earliest_due: float | None = None  # a retry set's first due time (unix seconds)

    @property
    def stranded(self) -> bool:
        return self.fate == STRANDED


@dataclass
class Report:
    pool: str
    server_time_ms: int
    live_count: int  # live members of the pool
    live_members: list[str]  # the first MAX_LISTED_MEMBERS of them
    holdings: list[Holding] = field(default_factory=list)

    @property
    def stranded(self) -> list[Holding]:
        return [h for h in self.holdings if h.stranded]

    @property
    def ok(self) -> bool:
        return not self.stranded

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "server_time_ms": self.server_time_ms,
            "live_count": self.live_count,
            "live_members": self.live_members,
            "ok": self.ok,
            "stranded": len(self.stranded),
            "holdings": [asdict(h) for h in self.holdings],
        }


@dataclass(frozen=True)
class Lease:
    pool: str  # the pool whose member set holds the worker
    expires_ms: int


@dataclass
class Found:
    """What one SCAN pass saw: processing lists (key -> (queue, worker id)), retry sets (key ->
    queue) and member sets (pool -> key)."""

    processing: dict[str, tuple[str, str]] = field(default_factory=dict)
    retry: dict[str, str] = field(default_factory=dict)
    members: dict[str, str] = field(default_factory=dict)


async def audit(redis: Any, keys: Keys, pool: str, streams: list[tuple[str, str]]) -> Report:
    """Everything the pool's workers hold, each with its fate (see the module's docstring)."""
    now_ms = await redis_now_ms(redis)
    found = await _scan(redis, keys)
    found.members.setdefault(pool, keys.members(pool))
    lists = await _counts(redis, [("llen", key) for key in found.processing])
    pending = [p for stream, group in streams for p in await _pending(redis, stream, group)]
    holders = {worker for _, worker in found.processing.values()} | {p[2] for p in pending}
    leases = await _leases(redis, found.members, sorted(holders))
    live = {name: await redis.zcount(key, f"({now_ms}", "+inf") for name, key in found.members.items()}
    listed = await redis.zrangebyscore(
        keys.members(pool), f"({now_ms}", "+inf", start=0, num=MAX_LISTED_MEMBERS
    )
    report = Report(pool, now_ms, live[pool], sorted(m.decode() for m in listed))
    expired = [(k, q, w) for k, (q, w) in found.processing.items() if _expired(leases.get(w), now_ms)]
    in_held = await _held(redis, keys, [(q, w, leases[w].pool) for _, q, w in expired])
    for key, (queue, worker) in found.processing.items():
        if lists.get(key):
            fate, detail = _list_fate(leases.get(worker), now_ms, live, in_held.get((queue, worker), False))
            unowned = fate == STRANDED and leases.get(worker) is None
            if unowned and not await _still_unowned(redis, key, worker, found.members):
                continue  # read mid-recovery (moved, then the member removed) or mid-start: not stranded
            report.holdings.append(Holding(PROCESSING, key, lists[key], worker, fate, detail))
    for where, count, consumer, idle_ms in pending:
        fate, detail = _pending_fate(leases.get(consumer), now_ms, live, pool, idle_ms)
        report.holdings.append(Holding(PENDING, where, count, consumer, fate, detail))
    report.holdings.extend(await _retries(redis, found.retry, now_ms))
    report.holdings.sort(key=lambda h: (not h.stranded, h.kind, h.where, h.holder or ""))
    return report


# -- what is there --------------------------------------------------------------------------------


async def _scan(redis: Any, keys: Keys) -> Found:
    """One SCAN over ``<prefix>:{*}*`` (every key corral owns), sorted out by name."""
    found = Found()
    async for raw in redis.scan_iter(match=f"{keys.prefix}:{{*}}*", count=SCAN_COUNT):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        if (processing := parse_processing(keys, key)) is not None:
            found.processing[key] = processing
        elif (queue := keys.queue_of_retry(key)) is not None:
            found.retry[key] = queue
        elif (member_pool := parse_members(keys, key)) is not None:
            found.members[member_pool] = key
    return found


def parse_processing(keys: Keys, key: str) -> tuple[str, str] | None:
    """``(queue, worker id)`` of a processing-list key (the inverse of ``Keys.processing``). A worker
    id never holds ``:processing:``; a queue's name might, so the last one is the separator."""
    at = key.rfind(":processing:")
    if at == -1:
        return None
    worker_id = key[at + len(":processing:") :]
    queue = keys.queue_of_retry(f"{key[:at]}:retry")  # a queue's bookkeeping keys share one base
    if not worker_id or queue is None or keys.processing(queue, worker_id) != key:
        return None
    return queue, worker_id


def parse_members(keys: Keys, key: str) -> str | None:
    """The pool of a member-set key (the inverse of ``Keys.members``)."""
    head, tail = f"{keys.prefix}:{{pool:", "}:members"
    if not key.startswith(head) or not key.endswith(tail):
        return None
    pool = key[len(head) : -len(tail)]
    return pool if pool and keys.members(pool) == key else None


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


async def _counts(redis: Any, commands: list[tuple[str, str]]) -> dict[str, int]:
    """``key -> LLEN/ZCARD``, pipelined; a key of another type (not ours after all) is left out."""
    counts: dict[str, int] = {}
    for chunk in _chunks(commands):
        async with redis.pipeline(transaction=False) as pipe:
            for command, key in chunk:
                getattr(pipe, command)(key)
            replies = await pipe.execute(raise_on_error=False)
        for (_, key), reply in zip(chunk, replies, strict=True):
            if isinstance(reply, int):
                counts[key] = reply
    return counts


async def _pending(redis: Any, stream: str, group: str) -> list[tuple[str, int, str, int]]:
    """``(where, count, consumer, idle ms of its oldest entry)`` per consumer with entries pending
    in the group; none when the stream or the group does not exist."""
    try:
        summary = await redis.xpending(stream, group)
    except ResponseError as exc:
        if "NOGROUP" in str(exc):
            return []
        raise
    found = []
    for consumer in summary.get("consumers") or []:
        name = _text(consumer["name"])
        oldest = await redis.xpending_range(stream, group, min="-", max="+", count=1, consumername=name)
        idle_ms = int(oldest[0]["time_since_delivered"]) if oldest else 0
        found.append((f"{stream} {group}", int(consumer["pending"]), name, idle_ms))
    return found


async def _leases(redis: Any, member_sets: dict[str, str], holders: list[str]) -> dict[str, Lease]:
    """The lease of every holder found in some member set (the latest, if in several)."""
    leases: dict[str, Lease] = {}
    for pool, key in sorted(member_sets.items()):
        for chunk in _chunks(holders):
            for worker, score in zip(chunk, await redis.zmscore(key, chunk), strict=True):
                if score is not None and (worker not in leases or score > leases[worker].expires_ms):
                    leases[worker] = Lease(pool, int(score))
    return leases


async def _held(redis: Any, keys: Keys, wanted: list[tuple[str, str, str]]) -> dict[tuple[str, str], bool]:
    """``(queue, worker) -> whether the queue is in the worker's held-queues set`` (what a sweep
    moves back), for ``(queue, worker, pool)``."""
    held: dict[tuple[str, str], bool] = {}
    for chunk in _chunks(wanted):
        async with redis.pipeline(transaction=False) as pipe:
            for queue, worker, pool in chunk:
                pipe.sismember(keys.held_queues(pool, worker), queue)
                pipe.sismember(keys.holders(queue), worker)
            replies = await pipe.execute()
        for (queue, worker, _), in_set, in_holders in zip(chunk, replies[::2], replies[1::2], strict=True):
            held[queue, worker] = bool(in_set) or bool(in_holders)
    return held


async def _retries(redis: Any, retry_sets: dict[str, str], now_ms: int) -> list[Holding]:
    found: list[Holding] = []
    for chunk in _chunks(sorted(retry_sets)):
        async with redis.pipeline(transaction=False) as pipe:
            for key in chunk:
                pipe.zcard(key)
                pipe.zrange(key, 0, 0, withscores=True)
            replies = await pipe.execute(raise_on_error=False)
        for key, count, first in zip(chunk, replies[::2], replies[1::2], strict=True):
            if not isinstance(count, int) or not count or not isinstance(first, list) or not first:
                continue
            due = float(first[0][1])
            wait_s = due - now_ms / 1000
            detail = f"earliest due in {wait_s:.1f} s" if wait_s > 0 else f"earliest due {-wait_s:.1f} s ago"
            found.append(Holding(RETRY, key, count, None, WAITING, detail, earliest_due=due))
    return found


# -- fates -----------------------------------------------------------------------------------------


async def _still_unowned(redis: Any, key: str, worker: str, member_sets: dict[str, str]) -> bool:
    """A second look, in an order that cannot straddle a recovery (which moves the list, then drops
    the member): first that the worker is in no member set, then that its list still holds jobs.
    (Not one MULTI: on a cluster the list and the member sets live in different slots.)"""
    async with redis.pipeline(transaction=False) as pipe:
        for member_key in member_sets.values():
            pipe.zscore(member_key, worker)
        scores = await pipe.execute()
    return all(score is None for score in scores) and bool(await redis.llen(key))


def _expired(lease: Lease | None, now_ms: int) -> bool:
    return lease is not None and lease.expires_ms <= now_ms


def _list_fate(lease: Lease | None, now_ms: int, live: dict[str, int], in_held: bool) -> tuple[str, str]:
    if lease is None:
        return STRANDED, "its worker is in no member set: nothing will recover it"
    if lease.expires_ms > now_ms:
        return HELD, ""
    if not in_held:
        return STRANDED, "not in its worker's held-queues set: a sweep will not move it back"
    return _sweep(lease, now_ms, live)


def _pending_fate(
    lease: Lease | None, now_ms: int, live: dict[str, int], pool: str, idle_ms: int
) -> tuple[str, str]:
    if lease is not None and lease.expires_ms > now_ms:
        return HELD, ""
    if lease is not None:
        return _sweep(lease, now_ms, live)
    if not live.get(pool):
        return STRANDED, f"its consumer is in no member set and no member of pool {pool} is alive"
    return CLAIMABLE, f"its consumer is in no member set; oldest idle {idle_ms} ms"


def _sweep(lease: Lease, now_ms: int, live: dict[str, int]) -> tuple[str, str]:
    ago_ms = now_ms - lease.expires_ms
    if not live.get(lease.pool):
        detail = f"lease expired {ago_ms} ms ago and no member of pool {lease.pool} is alive to sweep it"
        return STRANDED, detail
    return swept(ago_ms), ""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
