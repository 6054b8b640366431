"""What a child consumes: the contract between the config (validated by the supervisor) and the
consumers. Plain dataclasses: the supervisor checks ``corral.toml`` against their fields and types,
and hands them to each child as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class RedisSpec:
    url: str | None = None  # None: the supervisor's embedded server
    key_prefix: str = "corral"  # corral's own keys: <prefix>:{<hash tag>}:...
    socket_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    health_check_interval_s: float = 15.0
    member_ttl_s: float = 10.0  # a worker silent this long is dead: its work is recovered (<= 2x this)


@dataclass(frozen=True)
class StreamSpec:
    stream: str  # the literal stream key producers XADD to
    handler: str  # import path: f(message) or f(message, ctx), sync or async
    group: str = ""  # consumer group; default: the pool name
    batch_size: int = 100  # XREADGROUP COUNT
    concurrency: int = 1  # handlers of a batch running at once (ignored when partitioned: order)
    block_ms: int = 1000  # XREADGROUP BLOCK
    max_deliveries: int = 5  # failed this often (or delivered more often): dead-lettered with the error
    min_idle_ms: int = 30_000  # a pending entry idle this long may be claimed by another consumer
    claim_interval_s: float = 5.0
    start_id: str = "0"  # where a new group starts: "0" everything, "$" only new entries
    trim_maxlen: int | None = None  # keep about this many entries, never dropping unacknowledged ones
    trim_interval_s: float = 30.0
    partitions: int = 0  # > 0: shards <stream>:0..P-1, each owned by one slot at a time (ordering)


@dataclass(frozen=True)
class QueueSpec:
    handler: str  # import path: f(job) or f(job, ctx), sync or async
    names: tuple[str, ...] = ()  # literal list keys producers LPUSH to
    pattern: str | None = None  # discover queues with SCAN MATCH (e.g. "contest:submissions:*")
    registry: str | None = None  # or a set whose members are queue names
    refresh_s: float = 5.0  # how often discovery runs again
    batch_size: int = 50  # jobs taken per round trip
    concurrency: int = 1  # handlers of a batch running at once (1: one after another, in order)
    block_s: float = 1.0  # BLMOVE timeout when every queue is empty
    max_attempts: int = 5  # failures up to this many are retried with backoff, then dead-lettered
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0
    at_most_once: bool = False  # plain RPOP: no processing list, a crash loses the job in hand

    @property
    def label(self) -> str:
        return ",".join(self.names) or self.pattern or self.registry or "?"


@dataclass(frozen=True)
class WorkSpec:
    """Everything a child consumes; empty when the pool runs only a custom worker."""

    redis: RedisSpec = field(default_factory=RedisSpec)
    streams: tuple[StreamSpec, ...] = ()
    queues: tuple[QueueSpec, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.streams and not self.queues

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> WorkSpec:
        if not data:
            return cls()
        queues = tuple(QueueSpec(**{**q, "names": tuple(q.get("names", ()))}) for q in data.get("queues", ()))
        return cls(
            redis=RedisSpec(**data.get("redis", {})),
            streams=tuple(StreamSpec(**s) for s in data.get("streams", ())),
            queues=queues,
        )
