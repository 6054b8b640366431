"""The restart policy: backoff growth, cap, reset after a stable run, crash-loop limit."""

from __future__ import annotations

import pytest

from corral.supervisor.states import RestartPolicy, SlotHistory

POLICY = RestartPolicy(
    backoff_initial_s=0.5, backoff_max_s=4.0, backoff_factor=2.0, stable_after_s=30.0,
    max_restarts=5, restart_window_s=60.0,
)  # fmt: skip


def test_first_failure_of_a_stable_slot_restarts_at_once_then_backs_off_exponentially() -> None:
    history = SlotHistory(POLICY)
    delays = [history.record_failure(now=t, uptime_s=1.0).delay_s for t in (0.0, 1.0, 2.0, 3.0, 4.0)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0]


def test_backoff_is_capped() -> None:
    history = SlotHistory(RestartPolicy(backoff_initial_s=1.0, backoff_max_s=3.0, max_restarts=100))
    delays = [history.record_failure(now=t * 100.0, uptime_s=0.1).delay_s for t in range(8)]
    assert max(delays) == 3.0
    assert delays[-1] == 3.0


def test_a_stable_uptime_resets_the_streak() -> None:
    history = SlotHistory(POLICY)
    for t in (0.0, 1.0, 2.0):
        history.record_failure(now=t, uptime_s=1.0)
    decision = history.record_failure(now=40.0, uptime_s=31.0)
    assert decision.delay_s == 0.0 and not decision.fatal


def test_more_failures_than_max_restarts_in_the_window_is_fatal() -> None:
    history = SlotHistory(POLICY)
    decisions = [history.record_failure(now=float(t), uptime_s=0.1) for t in range(6)]
    assert [d.fatal for d in decisions] == [False] * 5 + [True]
    assert "6 failures within 60s" in decisions[-1].reason


def test_failures_outside_the_window_are_forgotten() -> None:
    history = SlotHistory(POLICY)
    for t in range(5):
        history.record_failure(now=float(t), uptime_s=0.1)
    decision = history.record_failure(now=100.0, uptime_s=0.1)  # the first five are > 60 s old
    assert not decision.fatal
    assert history.restarts == 6


def test_a_boot_error_that_cannot_heal_is_fatal_at_once() -> None:
    decision = SlotHistory(POLICY).record_failure(now=0.0, uptime_s=0.1, heals=False)
    assert decision.fatal


@pytest.mark.parametrize("max_restarts", [1, 3])
def test_reset_gives_a_fatal_slot_a_new_chance(max_restarts: int) -> None:
    history = SlotHistory(RestartPolicy(max_restarts=max_restarts))
    decisions = [history.record_failure(now=float(t), uptime_s=0.1) for t in range(max_restarts + 1)]
    assert decisions[-1].fatal
    history.reset()
    assert not history.record_failure(now=10.0, uptime_s=0.1).fatal


def test_max_restarts_zero_means_the_first_failure_is_fatal() -> None:
    assert SlotHistory(RestartPolicy(max_restarts=0)).record_failure(now=0.0, uptime_s=0.1).fatal
