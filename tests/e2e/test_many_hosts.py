"""Two supervisors of one pool on one Redis, as two hosts would run them: each sees the other's
live workers, and when one host dies whole (supervisor and children SIGKILLed at once, nobody left
to report the deaths) the other recovers its in-flight jobs within 2 x member_ttl_s."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from corral.workers.jobs.keys import Keys
from tests.e2e.conftest import Corral, wait_until

TTL_S = 2.0
# hang detection within 0.8 x the lease (the config reader's bound: a hang is caught before a fence)
FAST_HANGS = {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 1.2}
JOBS = 300
KEYS = Keys()


def processing_of(client: Any, host: str) -> dict[str, int]:
    lists = client.scan_iter(match=KEYS.processing("jobs", f"{host}:*"), _type="list")
    return {key.decode(): client.llen(key) for key in lists}


@pytest.mark.e2e
def test_a_host_that_dies_whole_is_recovered_by_the_other(
    corral: Callable[..., Corral], redis_clean: Any
) -> None:
    hosts = {}
    for host in ("alpha", "beta"):
        redis = {"url": redis_clean.url, "member_ttl_s": TTL_S}
        sup = corral(worker="corral.workers.base:BaseWorker", workers=2, redis=redis, health=FAST_HANGS)
        sup.config.write_text(
            sup.config.read_text()
            + '[[queues]]\nnames = ["jobs"]\nhandler = "tests.integration.workers.redis_handlers:slow_count"\n'
            + "batch_size = 5\nblock_s = 0.2\n"
        )
        hosts[host] = sup
    client = redis_clean.client()
    client.lpush("jobs", *(json.dumps({"n": n, "sleep": 0.02}) for n in range(JOBS)))
    alpha = hosts["alpha"].config
    alpha.write_text(alpha.read_text().replace("[pool]\n", '[pool]\nhost = "alpha"\n'))  # from the file
    hosts["alpha"].start()
    hosts["beta"].start(env={"CORRAL_HOST": "beta"})  # the identity from the environment
    for sup in hosts.values():
        sup.wait_all_ready(2, timeout_s=20)

    # each sees both hosts' live workers (read from Redis by `corral status`)
    def both_hosts() -> Any:
        fleet = json.loads(hosts["beta"].cli("status", "--json").stdout).get("fleet") or {}
        return fleet if set(fleet.get("hosts", {})) == {"alpha", "beta"} else None

    fleet = wait_until(both_hosts, timeout_s=10, what="both hosts in status")
    assert all(len(workers) == 2 for workers in fleet["hosts"].values()), fleet
    assert fleet["placement"] == {"jobs": str(redis_clean.socket_path)}

    wait_until(lambda: sum(processing_of(client, "alpha").values()), timeout_s=10, what="alpha holding jobs")
    held = sum(processing_of(client, "alpha").values())
    os.killpg(hosts["alpha"].pid, signal.SIGKILL)  # the whole host at once: nobody reports it
    killed = time.monotonic()
    wait_until(lambda: not sum(processing_of(client, "alpha").values()), timeout_s=4 * TTL_S, what="recovery")
    recovered_s = time.monotonic() - killed
    wait_until(lambda: client.hlen("test:handled") == JOBS, timeout_s=30, what="every job handled")
    counts = [int(v) for v in client.hgetall("test:handled").values()]
    duplicates = sum(counts) - JOBS
    print(f"two hosts: alpha killed holding {held} jobs; recovered by beta after {recovered_s:.2f}s "
          f"(member_ttl_s {TTL_S:g}); {JOBS} jobs, lost 0, duplicates {duplicates}")  # fmt: skip
    assert recovered_s <= 2 * TTL_S + 0.5, recovered_s
    assert duplicates <= held, (duplicates, held)  # only what alpha had in hand, at most once more
    assert "recovered worker alpha:" in "".join(hosts["beta"].log(str(slot)) for slot in (0, 1))
    hosts["beta"].send(signal.SIGTERM)
    assert hosts["beta"].wait_exit(30) == 0
