"""The Prometheus endpoint and the queue/stream figures in `corral status`, from a real run."""

from __future__ import annotations

import re
import signal
import socket
import urllib.request
from collections.abc import Callable

import pytest

from tests.e2e.conftest import Corral, wait_until


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.e2e
def test_metrics_endpoint_and_status_show_queue_figures(corral: Callable[..., Corral]) -> None:
    port = free_port()
    sup = corral(worker="corral.workers.base:BaseWorker", workers=2)
    sup.config.write_text(f"""
[pool]
name = "e2e"
workers = 2
[paths]
state_dir = "run"
log_dir = "logs"
[logging]
summary_interval_s = 0.5
[metrics]
listen = "127.0.0.1:{port}"
[[queues]]
names = ["jobs"]
handler = "tests.integration.workers.redis_handlers:noop"
[[queues]]
names = ["doomed"]
handler = "tests.integration.workers.redis_handlers:fail_always"
max_attempts = 1
""")
    sup.start()
    sup.wait_all_ready(2, timeout_s=20)
    for n in range(5):
        assert sup.cli("enqueue", "jobs", f'{{"n": {n}}}').returncode == 0
    assert sup.cli("enqueue", "doomed", '{"n": 1}').returncode == 0

    def scrape() -> str | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        done = 'corral_queue_processed_total{pool="e2e",queue="jobs"} 5.0' in text
        return text if done and 'corral_queue_dead_total{pool="e2e",queue="doomed"} 1.0' in text else None

    text = wait_until(scrape, timeout_s=15, what="the queue figures on /metrics")
    assert 'corral_slot_ready{pool="e2e",slot="0"} 1.0' in text
    assert 'corral_queue_failed_total{pool="e2e",queue="doomed"} 1.0' in text
    table = sup.cli("status").stdout
    rows = [line.split() for line in table.splitlines()]
    assert ["queue", "jobs", "5"] in [row[:3] for row in rows] and ["queue", "doomed"] in [
        row[:2] for row in rows
    ]
    status = sup.status()
    assert status["work"]["queues"]["jobs"]["processed"] == 5
    assert status["work"]["queues"]["doomed"]["dead"] == 1
    # a slot counts what its queues count: successes as processed, errors as failed
    assert sum(row["processed"] for row in status["slots"]) == 5
    assert sum(row["failed"] for row in status["slots"]) == 1
    # the foreground's periodic summary: rates per queue (and failures) at INFO
    for pattern in (r"work: .*jobs \d+\.\d/s", r"work: .*doomed \d+\.\d/s \(\d+\.\d failed/s\)"):
        wait_until(lambda p=pattern: re.search(p, sup.log()), timeout_s=10, what=f"a summary like {pattern}")
    sup.send(signal.SIGTERM)
    assert sup.wait_exit(30) == 0
