"""The probes: ``/health/live`` and ``/health/ready`` on the metrics address, and ``corral health
[--ready]`` for exec probes, asked through a real HTTP client and the real CLI while the faults they
report happen (a slot fatal; the Redis server killed, then started again on the same port)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import Corral, outage_pool, wait_until
from tests.e2e.test_metrics import free_port
from tests.servers import Standalone

pytestmark = pytest.mark.e2e

CRASH_LOOP = {"max_restarts": 2, "restart_window_s": 30, "backoff_initial_s": 0.1}


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except urllib.error.URLError:  # nobody listens yet (or any more)
        return 0, {}


def test_ready_until_redis_goes_away_and_again_once_it_is_back(
    corral: Callable[..., Corral], locked_redis: Standalone
) -> None:
    port = free_port()
    sup = outage_pool(corral, locked_redis, workers=2, extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    sup.start()
    sup.wait_all_ready(2, timeout_s=30)
    assert probe(port, "/health/live") == (200, {"live": True})
    assert probe(port, "/health/ready") == (200, {"live": True, "ready": True, "reasons": []})
    ready = sup.cli("health", "--ready")
    assert (ready.returncode, ready.stdout.strip()) == (0, "ready"), ready.stderr

    locked_redis.kill()
    _, said = wait_until(
        lambda: (found := probe(port, "/health/ready"))[0] == 503 and found,
        timeout_s=10,
        what=f"/health/ready to say Redis is away\n{sup.output()}",
    )
    assert (
        said["ready"] is False and f"Redis at {locked_redis.shown_url} does not answer" in said["reasons"][-1]
    )
    assert locked_redis.password not in json.dumps(said)
    assert probe(port, "/health/live")[0] == 200  # the supervisor itself is fine
    not_ready = sup.cli("health", "--ready")
    assert not_ready.returncode == 1 and "not ready: " in not_ready.stderr, not_ready
    assert sup.cli("health").returncode == 0

    locked_redis.start()  # the same port
    wait_until(lambda: probe(port, "/health/ready")[0] == 200, timeout_s=30, what="ready again")


def test_a_fatal_slot_is_not_ready_and_no_supervisor_is_not_live(corral: Callable[..., Corral]) -> None:
    port = free_port()
    metrics = {"listen": f"127.0.0.1:{port}"}
    sup = corral("tests.e2e.apps:SlotOneFailsWorker", workers=2, restart=CRASH_LOOP, metrics=metrics).start()

    def only_slot_one_fatal() -> dict[str, Any] | None:
        code, found = probe(port, "/health/ready")
        reasons = found.get("reasons", [])
        return found if code == 503 and len(reasons) == 1 and reasons[0].startswith("slot 1: fatal") else None

    wait_until(only_slot_one_fatal, timeout_s=20, what=f"slot 1 fatal, slot 0 ready\n{sup.output()}")
    assert sup.cli("health", "--ready").returncode == 1
    assert sup.cli("stop").returncode == 0
    gone = sup.cli("health")
    assert gone.returncode == 5, gone  # no supervisor answers
