"""A worker with no units of work, only IPC handlers (blargbot's pattern: a ``tick`` handler and
``start()``), stays up until asked to stop; it used to end its loop at once and crash-loop to fatal."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.e2e.conftest import Corral

pytestmark = pytest.mark.e2e


def test_a_worker_that_only_answers_requests_stays_up(corral: Callable[..., Corral]) -> None:
    sup = corral(worker="tests.e2e.apps:TickOnly", workers=2)
    sup.start()
    first = {row["slot"]: row["pid"] for row in sup.wait_all_ready(2, timeout_s=20)["slots"]}
    deadline = time.monotonic() + 3  # several restart windows' worth of a crash loop
    while time.monotonic() < deadline:
        status = sup.status()
        assert {row["slot"]: row["pid"] for row in status["slots"]} == first, status
        assert all(row["state"] == "ready" and row["restarts"] == 0 for row in status["slots"])
        time.sleep(0.5)  # polling for a change that must not come, until the deadline
    done = sup.cli("request", "1", "tick", "3")
    assert done.returncode == 0 and done.stdout.strip() == "4", done.stderr
    sup.send(signal.SIGTERM)
    assert sup.wait_exit(30) == 0
