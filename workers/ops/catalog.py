"""What a pool's names stand for: which declared queue or stream an operator's ``NAME`` is, and the
Redis keys behind it (a sharded queue's lists, a partitioned stream's shards, a schedule's queue).

Built from the pool's ``WorkSpec``; a name matching a queue ``pattern`` is a queue too. A name that
is neither is ``UnknownName``, whose text is the one line the CLI prints.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from enum import StrEnum

from corral.contract import QueueSpec, StreamSpec, WorkSpec
from corral.workers.jobs.keys import Keys, queue_shards
from corral.workers.producer import shard_name
from corral.workers.schedules import queue_specs


class UnknownName(ValueError):
    """A name that is not a queue or stream of this pool."""


class Kind(StrEnum):
    QUEUE = "queue"
    STREAM = "stream"


@dataclass(frozen=True)
class Target:
    """One queue or stream by its declared name, and the Redis keys it is made of."""

    kind: Kind
    name: str
    keys: tuple[str, ...]  # the lists (a sharded queue: one per shard) or stream keys (per partition)
    queue: QueueSpec | None = None
    stream: StreamSpec | None = None


class Catalog:
    def __init__(self, work: WorkSpec, keys: Keys | None = None) -> None:
        self.work = work
        self.keys = keys or Keys(work.redis.key_prefix)

    def queue_specs(self) -> list[QueueSpec]:
        return queue_specs(self.work, self.keys)

    def resolve(self, name: str) -> Target:
        for spec in self.queue_specs():
            if name in spec.names:
                return Target(Kind.QUEUE, name, queue_shards(name, spec.shards), queue=spec)
        for stream in self.work.streams:
            if name == stream.stream:
                keys = tuple(shard_name(name, i) for i in range(stream.partitions)) or (name,)
                return Target(Kind.STREAM, name, keys, stream=stream)
        for spec in self.queue_specs():
            if spec.pattern and fnmatch.fnmatchcase(name, spec.pattern):
                return Target(Kind.QUEUE, name, (name,), queue=spec)
        raise UnknownName(f"{name!r} is neither a queue nor a stream of this pool{self._known()}")

    def names(self) -> list[Target]:
        """Every declared queue (by name; not a pattern's) and stream."""
        found: list[Target] = []
        for spec in self.queue_specs():
            found.extend(self.resolve(name) for name in spec.names)
        found.extend(self.resolve(spec.stream) for spec in self.work.streams)
        return found

    def _known(self) -> str:
        known = [t.name for t in self.names()]
        known += [spec.pattern for spec in self.work.queues if spec.pattern]
        return f" (known: {', '.join(known)})" if known else " (it declares no queues or streams)"
