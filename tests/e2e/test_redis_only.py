"""A pool that runs only a custom worker still gets Redis when its config has a [redis] table:
the embedded server when no url is given, and a client in every child."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
import redis

from tests.e2e.conftest import Corral


@pytest.mark.e2e
def test_a_custom_worker_gets_the_embedded_redis(corral: Callable[..., Corral]) -> None:
    sup = corral(worker="tests.integration.supervisor.pool_apps:RedisUser", workers=2)
    sup.config.write_text(sup.config.read_text() + "\n[redis]\n")  # no url: the embedded server
    sup.start()
    status = sup.wait_all_ready(2, timeout_s=20)
    socket_path = sup.root / "run" / "redis.sock"
    assert status["redis_url"] == f"unix://{socket_path}"
    users = redis.Redis(unix_socket_path=str(socket_path)).hgetall("test:redis_users")
    assert {int(slot): worker.decode() for slot, worker in users.items()} == {
        row["slot"]: row["worker_id"] for row in status["slots"]
    }
    sup.send(signal.SIGTERM)
    assert sup.wait_exit(30) == 0
    assert not socket_path.exists()  # the embedded server stopped last
