"""`corral inspect` through the real CLI: a running pool holds nothing stranded; a processing list
nobody will recover is named, with exit 1; Redis gone is one line and exit 5."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

import pytest
import redis

from corral.workers.jobs.keys import Keys
from tests.e2e.conftest import Corral, wait_until

pytestmark = pytest.mark.e2e

GHOST = "ghost:e2e:9:abcdef"


def test_inspect_names_a_stranded_processing_list(corral: Callable[..., Corral]) -> None:
    sup = corral(worker="corral.workers.base:BaseWorker", workers=2)
    sup.config.write_text("""
[pool]
name = "e2e"
workers = 2
[paths]
state_dir = "run"
log_dir = "logs"
[[queues]]
names = ["jobs"]
handler = "tests.integration.workers.redis_handlers:noop"
[[streams]]
stream = "events"
handler = "tests.integration.workers.redis_handlers:noop"
""")
    sup.start()
    sup.wait_all_ready(2, timeout_s=20)
    for n in range(3):
        assert sup.cli("enqueue", "jobs", f'{{"n": {n}}}').returncode == 0

    def live_pool() -> dict[str, object] | None:
        done = sup.cli("inspect", "--json")
        report = json.loads(done.stdout) if done.returncode == 0 else None
        return report if report is not None and report["live_count"] == 2 else None

    report = wait_until(live_pool, timeout_s=15, what="both workers in the member set")
    assert report["ok"] is True and report["stranded"] == 0
    clean = sup.cli("inspect")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "nothing stranded" in clean.stdout
    assert "pool e2e: 2 live members" in clean.stdout

    planted = Keys().processing("jobs", GHOST)
    client = redis.Redis.from_url(f"unix://{sup.root}/run/redis.sock")
    try:
        client.lpush(planted, b'{"n": 99}')
    finally:
        client.close()
    stranded = sup.cli("inspect")
    assert stranded.returncode == 1, stranded.stdout + stranded.stderr
    assert f"processing list {planted}: 1 held by {GHOST}" in stranded.stdout
    assert "1 stranded:" in stranded.stdout and "nothing stranded" not in stranded.stdout
    as_json = sup.cli("inspect", "--json")
    assert as_json.returncode == 1
    items = json.loads(as_json.stdout)["holdings"]
    assert [(i["where"], i["holder"], i["fate"]) for i in items] == [(planted, GHOST, "stranded")]

    sup.send(signal.SIGTERM)
    assert sup.wait_exit(30) == 0
    gone = sup.cli("inspect")  # the embedded server stopped with its supervisor
    assert gone.returncode == 5, gone.stdout + gone.stderr
    assert gone.stderr.startswith(f"corral: cannot reach Redis at unix://{sup.root}/run/redis.sock")
    assert len(gone.stderr.strip().splitlines()) == 1 and "Traceback" not in gone.stderr
