"""Job control across hosts: two supervisors of one pool (host identities alpha and beta) on one
Redis, as two machines would run them. A schedule's ticks fire exactly once though both see them
due and one is SIGKILLed whole midway; a rate limit holds across four slots on the two hosts; a
pause stops both within a second and a resume starts them again.

Lengths for CI; the figures of the closing note ran longer (by hand):
``SCHEDULE_EVERY_S=1 RATE_WINDOW_S=30 .venv/bin/pytest -s tests/e2e/test_job_control_hosts.py``.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from tests.e2e.conftest import Corral, wait_until

EVERY_S = float(os.environ.get("SCHEDULE_EVERY_S", "0.2"))
TICKS = 100
RATE_PER_S = 200
WINDOW_S = float(os.environ.get("RATE_WINDOW_S", "6"))
H = "tests.integration.workers.redis_handlers"


def two_hosts(corral: Callable[..., Corral], url: str, tables: str) -> dict[str, Corral]:
    hosts = {}
    for host in ("alpha", "beta"):
        sup = corral(
            worker="corral.workers.base:BaseWorker",
            workers=2,
            redis={"url": url, "member_ttl_s": 2.0},
            health={"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 1.2},  # within 0.8 x the lease
        )
        sup.config.write_text(
            sup.config.read_text().replace("[pool]\n", f'[pool]\nhost = "{host}"\n') + tables
        )
        hosts[host] = sup.start()
    for sup in hosts.values():
        sup.wait_all_ready(2, timeout_s=30)
    return hosts


def tick_of(job: bytes) -> float:
    stamp = json.loads(job)["id"].split("@", 1)[1]
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@pytest.mark.e2e
def test_each_tick_fires_once_across_hosts_with_one_killed(
    corral: Callable[..., Corral], redis_clean: Any
) -> None:
    """Nobody consumes the queue the schedule feeds: what is on it is exactly what fired."""
    schedule = f'[[schedules]]\nname = "beat"\nevery_s = {EVERY_S}\nqueue = "ticks"\noverlap = true\n'
    hosts = two_hosts(corral, redis_clean.url, schedule)
    client = redis_clean.client()
    wait_until(
        lambda: client.llen("ticks") >= TICKS // 2, timeout_s=TICKS * EVERY_S + 20, what="half the ticks"
    )
    os.killpg(hosts["alpha"].pid, signal.SIGKILL)  # the whole host, mid-run
    wait_until(lambda: client.llen("ticks") >= TICKS + 2, timeout_s=TICKS * EVERY_S + 20, what="every tick")
    hosts["beta"].send(signal.SIGTERM)
    assert hosts["beta"].wait_exit(30) == 0
    ticks = sorted(tick_of(job) for job in client.lrange("ticks", 0, -1))
    first = ticks[:TICKS]
    steps = {round(b - a, 3) for a, b in itertools.pairwise(first)}
    print(f"schedule every {EVERY_S:g}s on two hosts, alpha SIGKILLed after {TICKS // 2} ticks: "
          f"{len(ticks)} ticks fired, {len(ticks) - len(set(ticks))} twice, steps {sorted(steps)}")  # fmt: skip
    assert len(set(ticks)) == len(ticks), "a tick fired twice"
    assert steps == {EVERY_S}, f"a tick missed: steps {steps}"
    fired_by = {host: hosts[host].log("0") + hosts[host].log("1") for host in hosts}
    assert all("schedule beat: fired" in text for text in fired_by.values()), "both hosts fired some"


@pytest.mark.e2e
def test_a_rate_limit_holds_across_four_slots_on_two_hosts(
    corral: Callable[..., Corral], redis_clean: Any
) -> None:
    jobs = int(RATE_PER_S * (WINDOW_S + 4))
    client = redis_clean.client()
    client.lpush("limited", *(json.dumps({"n": n}) for n in range(jobs)))
    queue = (
        f'[[queues]]\nnames = ["limited"]\nhandler = "{H}:note_time"\nrate_limit = "{RATE_PER_S}/s"\n'
        "block_s = 0.2\nbatch_size = 50\nconcurrency = 8\n"
    )
    hosts = two_hosts(corral, redis_clean.url, queue)
    wait_until(
        lambda: client.hlen("test:handled") >= RATE_PER_S, timeout_s=20, what="the first second's jobs"
    )
    start = time.time()
    wait_until(lambda: time.time() - start >= WINDOW_S + 1, timeout_s=WINDOW_S + 5, interval_s=0.5, what="")
    for sup in hosts.values():
        sup.send(signal.SIGTERM)
    for sup in hosts.values():
        assert sup.wait_exit(30) == 0
    times = [float(t) for t in client.hvals("test:handled_at")]
    in_window = sum(start <= t < start + WINDOW_S for t in times)
    rate = in_window / WINDOW_S
    by_host = {
        h: sum(1 for k in client.scan_iter(match=f"corral:{{limited}}:processing:{h}:*")) for h in hosts
    }
    print(f"rate limit {RATE_PER_S}/s, 4 slots on 2 hosts: {rate:.1f} jobs/s over {WINDOW_S:g} s "
          f"({(rate / RATE_PER_S - 1) * 100:+.1f} %)")  # fmt: skip
    assert abs(rate - RATE_PER_S) <= RATE_PER_S * 0.05, rate
    assert by_host is not None and len(times) < jobs  # it did not just drain the queue


@pytest.mark.e2e
def test_a_pause_stops_both_hosts_within_a_second(corral: Callable[..., Corral], redis_clean: Any) -> None:
    queue = f'[[queues]]\nnames = ["work"]\nhandler = "{H}:count_job"\nblock_s = 0.5\n'
    hosts = two_hosts(corral, redis_clean.url, queue)
    client = redis_clean.client()
    alpha = hosts["alpha"]
    assert alpha.cli("pause", "work").returncode == 0
    paused_at = time.monotonic()
    time.sleep(1.0)  # the documented bound: every host has seen the pause by now (the test's claim)
    client.lpush("work", *(json.dumps({"n": n}) for n in range(50)))
    held = wait_until(
        lambda: all(
            (json.loads(sup.cli("status", "--json").stdout)["work"]["queues"].get("work") or {}).get("paused")
            for sup in hosts.values()
        ),
        timeout_s=5,
        what="both hosts' status showing the pause",
    )
    time.sleep(max(0.0, 1.5 - (time.monotonic() - paused_at)))
    assert held and client.llen("work") == 50 and client.hlen("test:handled") == 0
    assert hosts["beta"].cli("resume", "work").returncode == 0
    wait_until(lambda: client.hlen("test:handled") == 50, timeout_s=10, what="every job after the resume")
    for sup in hosts.values():
        sup.send(signal.SIGTERM)
        assert sup.wait_exit(30) == 0
