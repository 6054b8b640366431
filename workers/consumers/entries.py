"""What both stream consumers (plain and partitioned) share: the consumer group, delivery counts of
the entries a consumer holds, the last error seen per entry, and dead-lettering an entry (one
XADD to the stream's dead-letter stream and its XACK, in one transaction)."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from corral.contract import StreamSpec
from corral.workers.consumers.base import DeadLetter, HandlerUnit
from corral.workers.consumers.pauses import PauseWatch
from corral.workers.jobs.keys import Keys
from corral.workers.jobs.wire import decode_fields
from corral.workers.messages import Message
from corral.workers.topology import Kind, kind_of_client

Entry = tuple[bytes, dict[bytes, bytes], int]  # id, raw fields, delivery attempt


def is_nogroup(exc: ResponseError) -> bool:
    """The stream or its consumer group does not exist (any more)."""
    return str(exc).startswith("NOGROUP")


async def create_group(redis: Any, stream: str, group: str, start_id: str) -> None:
    """The consumer group (and the stream: MKSTREAM), unless it exists already. On a cluster it is
    sent to the stream's node by its slot: the cluster client finds the key of a subcommand like
    XGROUP CREATE through its command table, which was seen to come up empty ("Missing key") on a
    client started while the cluster healed from a failover."""
    try:
        if kind_of_client(redis) is Kind.CLUSTER:
            await redis.initialize()  # the slot map (a no-op once loaded)
            node = redis.get_node_from_key(stream)
            await redis.execute_command(
                "XGROUP CREATE", stream, group, start_id, "MKSTREAM", target_nodes=node
            )
        else:
            await redis.xgroup_create(stream, group, id=start_id, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class EntryUnit(HandlerUnit):
    """A stream consumer's handler, counters and failure memory; subclasses read and acknowledge."""

    def __init__(self, spec: StreamSpec, *, redis: Any, keys: Keys, worker_id: str, log: Any) -> None:
        super().__init__(spec, redis=redis, keys=keys, worker_id=worker_id, log=log)
        self.spec: StreamSpec = spec
        self.consumer = worker_id
        self.processed = self.failed = self.dead = self.in_flight = 0
        self.refused = 0  # acknowledgements of entries no longer ours (claimed away meanwhile)
        self.in_hand: list[bytes] = []  # the ids of the round's entries not acknowledged yet
        self.errors: dict[bytes, str] = {}  # entry id -> the last error seen here
        self.pauses = PauseWatch(redis, keys)
        self.paused = False  # an operator paused the stream (every shard of it): not read

    def message(self, stream: str, entry_id: bytes, raw_fields: dict[bytes, bytes], attempt: int) -> Message:
        return Message(entry_id.decode(), decode_fields(raw_fields), stream, attempt, raw_fields)

    async def with_attempts(self, stream: str, entries: list[Any]) -> list[Entry]:
        """Entries this consumer holds, with their delivery counts (one XPENDING over their id
        range); an entry deleted from the stream while pending is acknowledged, not handled."""
        ids = [entry_id for entry_id, _ in entries]
        pending = await self.redis.xpending_range(
            stream, self.spec.group, min=ids[0], max=ids[-1], count=len(ids) * 4, consumername=self.consumer
        )
        counts = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        out: list[Entry] = []
        gone: list[bytes] = []
        for entry_id, fields in entries:
            if not fields:  # deleted while pending: nil (XAUTOCLAIM) or {} (our own, XREADGROUP 0)
                gone.append(entry_id)
            else:
                out.append((entry_id, fields, counts.get(entry_id, 1)))
        if gone:
            await self.redis.xack(stream, self.spec.group, *gone)
        return out

    async def dead_letter(
        self, stream: str, entry_id: bytes, raw_fields: dict[bytes, bytes], attempt: int
    ) -> None:
        reason = self.errors.pop(entry_id, None) or (
            f"delivered {attempt} times without an outcome (the consumers that had it died or stalled)"
        )
        letter = DeadLetter(stream, entry_id.decode(), attempt, reason, self.worker_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.stream_dead(stream), letter.stream_record(raw_fields, self.spec.group))
            pipe.xack(stream, self.spec.group, entry_id)
            await pipe.execute()
        self.dead += 1
        self.log.error(
            "stream {}: entry {} delivered {} times, dead-lettered", stream, entry_id.decode(), attempt
        )

    def stats(self) -> dict[str, int]:
        return {
            "processed": self.processed,
            "failed": self.failed,
            "dead": self.dead,
            "in_flight": self.in_flight,
            "refused": self.refused,
            "lag": 0,
            "paused": int(self.paused),
        }
