"""This worker process's lease in the pool's member set, renewed from threads of its own: the fence
that keeps a job from running twice at once (docs/design.md, section 5, "Fencing").

A lease says "this process is alive and may hold work" until a time on the Redis server's clock
(the member set's score). A peer recovers a member's work only once its lease ran out, so:

- the lease is renewed every ``member_ttl_s / 3`` by a thread with its own blocking client, not by
  the event loop: a loop blocked by a handler, a stopping child finishing its jobs (reload, recycle,
  scale down, graceful stop) and a child waiting for its sync handlers all keep their lease until the
  process exits (a hung loop is the heartbeat's to end, and the supervisor recovers on the exit);
- a worker that cannot renew **fences itself** before its lease can lapse, on its own monotonic
  clock: ``valid_until`` is the send time of the last renewal that succeeded plus the lease less a
  margin; past it, no take is sent (``valid``), and a watchdog thread ends the process
  (``ExitCode.FENCED``) if it holds anything (a take in flight, a job or entry in hand), which stops
  async and sync handlers alike. The margin (a fifth of the lease, at least 0.2 s) covers the
  process's exit and the two clocks' drift;
- ``steady_s`` says how long renewals have been succeeding: a worker back from an outage does not
  sweep its peers until they too had a full lease to renew (``Membership``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from loguru import logger
from redis.exceptions import RedisError

from corral.contract import LEASE_FENCE_AT, ExitCode, RedisSpec
from corral.workers.topology import connect_sync

FENCE_MARGIN = 1 - LEASE_FENCE_AT  # of the lease: one that could not renew stops this much before
MIN_MARGIN_S = 0.2
RETRY_S = 0.25  # after a failed renewal, the next try


def exit_fenced(reason: str) -> None:
    """The default fence: end the process now (its handlers with it); the supervisor replaces it and
    has its work recovered."""
    logger.complete()
    os._exit(ExitCode.FENCED)


class Lease:
    def __init__(
        self,
        spec: RedisSpec,
        *,
        members: str,
        worker_id: str,
        holding: Callable[[], bool],
        on_fence: Callable[[str], None] = exit_fenced,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = spec.member_ttl_s
        self.margin_s = max(self.ttl_s * FENCE_MARGIN, MIN_MARGIN_S)
        timeout_s = min(spec.socket_timeout_s, spec.connect_timeout_s, self.ttl_s / 4)
        self._spec = dataclasses.replace(spec, socket_timeout_s=timeout_s, connect_timeout_s=timeout_s)
        self.members = members
        self.worker_id = worker_id
        self.holding = holding
        self.on_fence = on_fence
        self.clock = clock
        self.valid_until = -math.inf  # monotonic: takes are sent only before it
        self.last_failure: float | None = None
        self.down_since: float | None = None  # the first failed renewal of the current streak
        self.failures = 0
        self._client: Any = None
        self._lock = threading.Lock()  # one renewal at a time
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._joined: asyncio.Future[None] | None = None  # the first renewal, then the threads

    def valid(self) -> bool:
        """Whether a take may be sent now: the lease cannot lapse before the fence would act."""
        return self.clock() < self.valid_until

    def down_s(self) -> float | None:
        """How long renewals have been failing (None: they succeed)."""
        return None if self.down_since is None else self.clock() - self.down_since

    def steady_s(self) -> float:
        """Seconds since the last failed renewal (infinite when none failed)."""
        return math.inf if self.last_failure is None else self.clock() - self.last_failure

    def renew(self) -> bool:
        """One renewal (blocking): the lease runs ``member_ttl_s`` from the server's now."""
        with self._lock:
            sent = self.clock()
            try:
                if self._client is None:
                    self._client = connect_sync(self._spec)
                seconds, micros = self._client.time()
                now_ms = int(seconds) * 1000 + int(micros) // 1000
                self._client.zadd(self.members, {self.worker_id: now_ms + int(self.ttl_s * 1000)})
            except (RedisError, OSError) as exc:
                self._failed(exc)
                return False
            if self.failures:
                logger.info("lease renewed again after {} failed tries", self.failures)
                self.failures, self.down_since = 0, None
            self.valid_until = max(self.valid_until, sent + self.ttl_s - self.margin_s)
            return True

    def _failed(self, exc: BaseException) -> None:
        self.last_failure = self.clock()
        if self.down_since is None:
            self.down_since = self.last_failure
        self.failures += 1
        if self.failures == 1:
            left_s = max(0.0, self.valid_until - self.last_failure)
            logger.warning(
                "lease not renewed ({!r}); {:.1f}s left before this worker fences itself", exc, left_s
            )
        self._client = None  # a new connection next time (a failover may have moved the primary)

    def start(self) -> None:
        """The renewing and the fencing threads (once)."""
        if self._threads:
            return
        for target, name in ((self._renewing, "lease-renew"), (self._fencing, "lease-fence")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """No more renewals (a clean exit: then the member leaves the set); waits for a renewal in
        flight, which would otherwise add the member back after it left."""
        self._stop.set()
        with self._lock:
            pass

    def _renewing(self) -> None:
        while not self._stop.is_set():
            ok = self.renew()
            self._stop.wait(self.ttl_s / 3 if ok else RETRY_S)

    def _fencing(self) -> None:
        while not self._stop.is_set():
            left_s = self.valid_until - self.clock()
            if left_s > 0:
                self._stop.wait(min(left_s, 1.0))
            elif self.holding():
                reason = f"lease not renewed for {self.ttl_s - self.margin_s:.1f}s while holding work"
                logger.error("{}: fencing this worker (its work is recovered once it is gone)", reason)
                self.on_fence(reason)
                return
            else:
                self._stop.wait(0.1)

    async def join(self) -> None:
        """The first renewal (off the loop), then the threads: once, whoever asks first (the others
        wait for it; a caller cancelled meanwhile does not cancel it)."""
        if self._joined is None:
            self._joined = asyncio.ensure_future(self._first_renewal())
        await asyncio.shield(self._joined)

    async def _first_renewal(self) -> None:
        await asyncio.to_thread(self.renew)
        self.start()


class Gated:
    """A consumer unit that sends takes only under a valid lease, and says when a round is under
    way (``busy``: a take may be in flight, or work in hand)."""

    def __init__(self, unit: Any, lease: Lease) -> None:
        self.unit = unit
        self.lease = lease
        self.name: str = unit.name
        self.idle_sleep_s: float = unit.idle_sleep_s
        self.transient_errors: tuple[type[BaseException], ...] = ()  # set by Consumers.units()
        self.busy = False

    async def run(self) -> int:
        await self.lease.join()
        if not self.lease.valid():  # Redis away or stalled for us: nothing new until renewed
            await asyncio.sleep(RETRY_S)
            return 0
        self.busy = True
        try:
            return int(await self.unit.run())
        finally:
            self.busy = False
