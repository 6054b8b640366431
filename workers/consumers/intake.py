"""What a queue consumer may take this round: which of its queues (not the paused ones), in what
order (``order``: in turn, strict priority, or weighted), and how many (``rate_limit``).

- ``rotate`` (default): every queue each round, a share of the batch each, starting one further
  each round: no queue starves another.
- ``strict``: the names in the order listed; a queue is taken from only when every queue before it
  gave less than the batch. A busy first queue starves the rest, by design (RQ's order).
- ``weighted``: each round the names are ranked at random, a name with weight ``w`` first with
  probability ``w / sum(weights)`` (Sidekiq's weighted queues): never starved, the busier share
  follows the weights while every queue has work.

A rate limit (``"200/s"``) is a GCRA in the take script itself (``jobs.scripts.TAKE``), one per
queue across every host and slot: the script takes only as many jobs as the limit allows now, so a
job is never taken and put back. The burst is a tenth of a second's worth (at least one job). An
idle rate-limited consumer looks again every ``RATE_POLL_S`` instead of blocking in BLMOVE (a
blocking take would bypass the limit). A sharded queue's limit is split evenly over its shards.
"""

from __future__ import annotations

import math
import random
from typing import Any

from corral.contract import QueueSpec, parse_rate
from corral.workers.consumers.discovery import QueueSet
from corral.workers.consumers.pauses import PauseWatch
from corral.workers.jobs.keys import queue_shards

RATE_BURST_S = 0.1
RATE_POLL_S = 0.05


class Intake:
    def __init__(self, spec: QueueSpec, discovery: QueueSet, pauses: PauseWatch) -> None:
        self.spec = spec
        self.discovery = discovery
        self.pauses = pauses
        self.ranked = [list(queue_shards(name, spec.shards)) for name in spec.names]
        self.weights = list(spec.weights)
        self.rng = random.Random()
        rate_per_s = parse_rate(spec.rate_limit) / spec.shards if spec.rate_limit else 0.0
        self.per_job_us = 1e6 / rate_per_s if rate_per_s else 0.0
        self.burst = max(1, math.ceil(rate_per_s * RATE_BURST_S))
        self.wait_s = 0.0  # after a round the limit held back: until the next job is allowed
        self.paused: set[str] = set()
        self._turn = 0

    @property
    def limited(self) -> bool:
        return self.per_job_us > 0

    @property
    def ranked_order(self) -> bool:
        return self.spec.order != "rotate"

    async def order(self) -> list[str]:
        """This round's queues in the order they are taken from, the paused ones left out."""
        self.paused = await self.pauses.of(self.discovery.queues)
        self.wait_s = 0.0
        if not self.ranked_order:
            return [queue for queue in self.discovery.rotated() if queue not in self.paused]
        groups = self.ranked if self.spec.order == "strict" else self._weighted()
        self._turn += 1
        order = [group[(self._turn + i) % len(group)] for group in groups for i in range(len(group))]
        return [queue for queue in order if queue not in self.paused]

    def _weighted(self) -> list[list[str]]:
        """The names ranked at random by weight (each first with probability w / sum)."""
        keys = [self.rng.random() ** (1.0 / weight) for weight in self.weights]
        ranked = sorted(zip(keys, self.ranked, strict=True), key=lambda pair: pair[0], reverse=True)
        return [group for _, group in ranked]

    def take_args(self, count: int, worker_id: str) -> list[Any]:
        return [count, worker_id, f"{self.per_job_us:.0f}", self.burst]

    def held_back(self, queue: str, wait_us: int) -> None:
        """The take script's answer when the limit allowed nothing: how long until it does."""
        wait_s = max(0.001, wait_us / 1e6)
        self.wait_s = min(self.wait_s, wait_s) if self.wait_s else wait_s

    def idle_s(self, block_s: float) -> float:
        """How long a rate-limited consumer that took nothing waits before looking again."""
        return min(block_s, self.wait_s or RATE_POLL_S)
