"""Checkpoints: a queue job's handler saves its place with the job itself.

``ctx.checkpoint(state)`` replaces the job, where it sits in this worker's processing list, by the
same job carrying ``state`` (its envelope's ``"checkpoint"``), in one script that first checks the
job is still ours (``CHECKPOINT``, run by ``Settlement.checkpoint``). Whatever happens next — a
retry, a ``Requeue`` on a stop, the worker killed and its list recovered — the job goes on with its
checkpoint, and the next attempt reads it back as ``job.checkpoint``. ``publish=(channel,
message)`` announces the step in the same script: saved and said, or neither (a screen never sees a
step that a resumed job repeats). A job that is not ours any more (recovered away from a worker
that was cut off) is not changed: the call raises ``JobLost``, and the job's outcome here is only
counted as refused (its next holder goes on).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

from corral.workers.consumers.settlement import Settlement
from corral.workers.jobs.wire import ENVELOPE_MARK, encode_job
from corral.workers.messages import Job, JobLost


class InHand:
    """A job being handled: the bytes it is held as (they change with each checkpoint)."""

    __slots__ = ("_lock", "job", "loop", "queue", "raw", "settlement", "state")

    def __init__(
        self, queue: str, raw: bytes, job: Job, settlement: Settlement, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.queue = queue
        self.raw = raw
        self.job = job  # as taken
        self.settlement = settlement
        self.loop = loop  # the worker's: a sync handler's thread saves through it
        self.state: Any = job.checkpoint
        self._lock: asyncio.Lock | None = None  # made by the first checkpoint (most jobs take none)

    async def save(self, state: Any, publish: tuple[str, str | bytes] | None = None) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            new_raw = with_checkpoint(self.raw, self.job, state)
            if not await self.settlement.checkpoint(self.queue, self.raw, new_raw, publish):
                raise JobLost(f"job {self.job.id} of {self.queue} is no longer this worker's")
            self.raw, self.state = new_raw, state

    def latest(self, job: Job) -> Job:
        """``job`` as it is held now (with its last checkpoint)."""
        if self.raw is self.job.raw:
            return job
        return dataclasses.replace(job, raw=self.raw, checkpoint=self.state)


def with_checkpoint(raw: bytes, job: Job, state: Any) -> bytes:
    """The job's bytes carrying ``state``: its envelope with ``"checkpoint"`` set, or (a bare job)
    corral's envelope around its value, under the same id."""
    value = json.loads(raw)
    if isinstance(value, dict) and value.get(ENVELOPE_MARK) == 1:
        value["checkpoint"] = state
        return json.dumps(value, separators=(",", ":")).encode()
    return encode_job(value, job.id, job.attempt, job.enqueued_at, checkpoint=state)
