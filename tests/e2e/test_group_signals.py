"""A terminal's Ctrl-C (SIGINT to the foreground process group) or ``timeout``'s group SIGTERM reach
the supervisor and its children at once: that must be one clean graceful stop. The embedded Valkey
lives in a session of its own, so the signal does not reach it; the supervisor stops it last."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import psutil
import pytest

from tests.e2e.conftest import Corral

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "group-term"])
def test_a_signal_to_the_whole_group_is_one_clean_graceful_stop(
    corral: Callable[..., Corral], sig: int
) -> None:
    sup = corral(worker="tests.integration.supervisor.pool_apps:RedisUser", workers=2)
    sup.config.write_text(sup.config.read_text() + "\n[redis]\n")  # the embedded server
    sup.start()
    sup.wait_all_ready(2, timeout_s=20)
    [server] = [p for p in psutil.Process(sup.pid).children() if p.name().startswith("valkey")]
    assert os.getpgid(server.pid) != os.getpgid(sup.pid)  # out of the group's reach
    os.killpg(sup.pid, sig)  # the supervisor leads its session: this is the whole foreground group
    assert sup.wait_exit(30) == 0
    assert not server.is_running()  # stopped by the supervisor, last
    text = sup.output() + "".join(p.read_text() for p in sup.log_dir.glob("*.log"))
    for bad in ("| ERROR", "| WARNING", "Traceback", "died", "restarting"):  # (loguru levels)
        assert bad not in text, f"{bad!r} in the logs of a clean stop:\n{text}"
