"""Every Redis key corral itself owns, built here and nowhere else.

Queue and stream names in the config are the literal keys producers write to. corral's bookkeeping
keys for one of them live under ``<prefix>:{<tag>}:...`` where ``<tag>`` is that key's own Redis
Cluster hash tag (the text between its first ``{`` and the next ``}``, or the whole name), so a queue
or stream and its processing lists, retry set and dead letters always share one cluster slot.
Pool-wide keys (the member registry) are tagged ``{pool:<name>}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot


def hash_tag(name: str) -> str:
    """The part of ``name`` Redis Cluster hashes: ``a{b}c`` -> ``b``; no (non-empty) tag -> the name."""
    start = name.find("{")
    if start != -1:
        end = name.find("}", start + 1)
        if end > start + 1:
            return name[start + 1 : end]
    return name


@lru_cache(maxsize=1024)
def queue_shards(queue: str, shards: int) -> tuple[str, ...]:
    """The lists of a queue spread over ``shards`` cluster slots: ``<queue>{<queue>#<i>[.<n>]}``.

    Shard ``i``'s hash tag is the first of ``<queue>#<i>``, ``<queue>#<i>.1``, ... whose slot lies in
    the ``i``-th of ``shards`` equal ranges of the 16384 slots, so on a cluster whose primaries hold
    equal ranges (what ``--cluster create`` makes) the shards land on different primaries. The same
    names on every host and in every language that computes CRC16 slots; ``corral shards`` lists them.
    """
    if shards <= 1:
        return (queue,)
    names = []
    for shard in range(shards):
        low, high = (
            shard * REDIS_CLUSTER_HASH_SLOTS // shards,
            (shard + 1) * REDIS_CLUSTER_HASH_SLOTS // shards,
        )
        salt = 0
        while True:
            tag = f"{queue}#{shard}" + (f".{salt}" if salt else "")
            if low <= key_slot(tag.encode()) < high:
                break
            salt += 1
        names.append(f"{queue}{{{tag}}}")
    return tuple(names)


@dataclass(frozen=True)
class Keys:
    prefix: str = "corral"

    def _of(self, name: str, kind: str) -> str:
        tag = hash_tag(name)
        return f"{self.prefix}:{{{tag}}}:{kind}" if tag == name else f"{self.prefix}:{{{tag}}}:{name}:{kind}"

    # -- queues ---------------------------------------------------------------------------------

    def processing(self, queue: str, worker_id: str) -> str:
        """The list a worker's taken-but-unacknowledged jobs of ``queue`` sit in."""
        return f"{self._of(queue, 'processing')}:{worker_id}"

    def retry(self, queue: str) -> str:
        """Sorted set of jobs waiting for their retry time (score: due, unix seconds)."""
        return self._of(queue, "retry")

    def retry_pattern(self, kind: str = "retry") -> str:
        """SCAN pattern for every retry set (or ``delayed`` set): discovery must find queues whose
        list is empty now but that have jobs waiting."""
        return f"{self.prefix}:{{*}}*:{kind}"

    def queue_of_retry(self, key: str, kind: str = "retry") -> str | None:
        """The queue a retry-set (or ``delayed``-set) key belongs to (the inverse of ``retry``)."""
        head, tail = f"{self.prefix}:{{", f":{kind}"
        if not key.startswith(head) or not key.endswith(tail):
            return None
        body = key[len(head) : -len(tail)]
        tag, _, rest = body.partition("}")  # a tag never holds a "}", a whole name may: check both
        if rest.startswith(":") and hash_tag(rest[1:]) == tag != rest[1:]:
            return rest[1:]  # <prefix>:{<tag>}:<name>:<kind>
        if body.endswith("}") and hash_tag(body[:-1]) == body[:-1]:
            return body[:-1]  # <prefix>:{<name>}:<kind>
        return None

    def delayed(self, queue: str) -> str:
        """Sorted set of jobs enqueued with a delay (score: due, unix seconds), not due yet."""
        return self._of(queue, "delayed")

    def deaths(self, queue: str) -> str:
        """Hash: job (its exact bytes) -> how often a worker holding it died (counted by recovery)."""
        return self._of(queue, "deaths")

    def holders(self, queue: str) -> str:
        """Set of the workers that took jobs of ``queue`` (registered by the take itself, in the
        queue's own slot): with the pool's held-queues sets, how recovery finds a processing list."""
        return self._of(queue, "holders")

    def in_hand(self, queue: str, worker_id: str) -> str:
        """The suspect job (one a worker died holding before) a worker is handling now, if any."""
        return f"{self._of(queue, 'inhand')}:{worker_id}"

    def dead(self, queue: str) -> str:
        """List of jobs that failed ``max_attempts`` times or could not be decoded."""
        return self._of(queue, "dead")

    def rate(self, queue: str) -> str:
        """The queue's rate limiter: the GCRA's theoretical arrival time (microseconds, server clock)."""
        return self._of(queue, "rate")

    def unique(self, queue: str, unique_key: str) -> str:
        """A unique job's lock (its value: the job id), held from enqueue to ack or dead letter."""
        return f"{self._of(queue, 'unique')}:{unique_key}"

    # -- job control ----------------------------------------------------------------------------

    def paused(self, name: str) -> str:
        """Set while a queue or stream key is paused (its value: when, unix seconds)."""
        return self._of(name, "paused")

    def schedule_queue(self, schedule: str) -> str:
        """The queue a handler schedule's ticks go to (consumed with the schedule's handler)."""
        return f"{self.prefix}:schedule:{schedule}"

    def schedule_state(self, schedule: str, queue: str) -> str:
        """Hash: a schedule's last fired tick and its counts, in the slot of the queue it feeds (so
        that the fence and the push are one script)."""
        return self._of(queue, f"schedule:{schedule}")

    # -- streams --------------------------------------------------------------------------------

    def stream_dead(self, stream: str) -> str:
        """Stream of entries delivered more than ``max_deliveries`` times, with the reason: one per
        stream key, so a partitioned stream has one per shard (``<stream>:<shard>``, in its slot)."""
        return self._of(stream, "dead")

    # -- the pool -------------------------------------------------------------------------------

    def members(self, pool: str) -> str:
        """Sorted set: worker id -> the time (ms) after which it counts as dead if not renewed."""
        return f"{self.prefix}:{{pool:{pool}}}:members"

    def held_queues(self, pool: str, worker_id: str) -> str:
        """Set of the queues a worker may hold a processing list of (what to recover if it dies)."""
        return f"{self.prefix}:{{pool:{pool}}}:held:{worker_id}"

    def history(self, pool: str, host: str) -> str:
        """List of a host's dashboard samples (JSON, newest first): the graphs outlive a restart."""
        return f"{self.prefix}:{{pool:{pool}}}:history:{host}"

    def host_status(self, pool: str) -> str:
        """Hash: host -> its supervisor's latest slot rows (JSON, with their time): every dashboard
        shows every host's slots."""
        return f"{self.prefix}:{{pool:{pool}}}:hosts"

    def recovery_lock(self, pool: str, worker_id: str) -> str:
        return f"{self.prefix}:{{pool:{pool}}}:recovering:{worker_id}"
