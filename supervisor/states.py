"""Worker lifecycle states and the restart policy (pure logic, driven by an injected clock)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from corral.contract import Check, setting


class WorkerState(StrEnum):
    STARTING = "starting"  # process spawned, no `ready` yet
    READY = "ready"  # announced ready, taking work
    STOPPING = "stopping"  # asked to stop: finishing or handing back its work
    STOPPED = "stopped"  # process exited and was reaped
    BACKOFF = "backoff"  # slot waiting before the next restart after a failure
    FATAL = "fatal"  # slot gave up: crash loop or a boot error that cannot heal by itself


@dataclass(frozen=True)
class RestartPolicy:
    """``[restart]`` of ``corral.toml``."""

    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    backoff_factor: float = setting(2.0, Check.POSITIVE)
    stable_after_s: float = 30.0  # an uptime this long resets the failure streak
    max_restarts: int = 5  # more failures than this within restart_window_s: the slot is fatal
    restart_window_s: float = setting(60.0, Check.POSITIVE)


@dataclass(frozen=True)
class RestartDecision:
    delay_s: float
    fatal: bool
    reason: str


@dataclass
class SlotHistory:
    """What one slot's failures were; decides how long to wait before restarting it, or to give up."""

    policy: RestartPolicy
    streak: int = 0
    failures: deque[float] = field(default_factory=deque)
    restarts: int = 0

    def record_failure(self, now: float, uptime_s: float, heals: bool = True) -> RestartDecision:
        """A child of this slot exited without being asked to. ``heals=False``: a boot error that a
        restart cannot fix (bad import path) — fatal at once."""
        policy = self.policy
        if uptime_s >= policy.stable_after_s:
            self.streak = 0
        self.failures.append(now)
        while self.failures and now - self.failures[0] > policy.restart_window_s:
            self.failures.popleft()
        if not heals:
            return RestartDecision(0.0, True, "boot error that a restart cannot fix")
        if len(self.failures) > policy.max_restarts:
            reason = f"{len(self.failures)} failures within {policy.restart_window_s:g}s"
            return RestartDecision(0.0, True, reason)
        delay = 0.0
        if self.streak:
            delay = policy.backoff_initial_s * policy.backoff_factor ** (self.streak - 1)
            delay = min(delay, policy.backoff_max_s)
        self.streak += 1
        self.restarts += 1
        return RestartDecision(delay, False, f"restart #{self.restarts} in {delay:.2f}s")

    def reset(self) -> None:
        """Forget the failures (a reload with new config or code gives a fatal slot a new chance)."""
        self.streak = 0
        self.failures.clear()
