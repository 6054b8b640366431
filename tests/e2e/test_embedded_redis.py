"""The embedded Valkey lives and dies with its supervisor: stopped last, gone when the supervisor is
killed, never started twice on one data dir, and nothing left behind by a start cut short."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from corral.supervisor.redis_server import find_server
from tests.e2e.conftest import Corral, wait_until

pytestmark = pytest.mark.e2e


def valkeys_on(state_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(state_dir / "redis.sock") in part for part in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def with_redis(corral: Callable[..., Corral], **sections: dict[str, object]) -> Corral:
    sup = corral(worker="tests.integration.supervisor.pool_apps:RedisUser", workers=1, **sections)
    sup.config.write_text(sup.config.read_text() + "\n[redis]\n")
    return sup


def test_a_killed_supervisor_takes_its_server_along_and_a_restart_works(
    corral: Callable[..., Corral],
) -> None:
    sup = with_redis(corral).start()
    sup.wait_all_ready(1, timeout_s=20)
    [server] = valkeys_on(sup.root / "run")
    os.kill(sup.pid, signal.SIGKILL)
    sup.wait_exit(10)
    server.wait(10)  # PR_SET_PDEATHSIG: it does not outlive the supervisor
    again = corral(like=sup).start()
    again.wait_all_ready(1, timeout_s=20)
    again.send(signal.SIGTERM)
    assert again.wait_exit(30) == 0


def test_a_server_already_on_the_state_dir_is_refused(corral: Callable[..., Corral]) -> None:
    sup = with_redis(corral)
    state = sup.root / "run"
    state.mkdir()
    stray = subprocess.Popen(
        [find_server(), "--port", "0", "--unixsocket", str(state / "redis.sock"), "--save", "", "--dir", str(state)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until((state / "redis.sock").exists, 10, what="the stray server")
        sup.start()
        assert sup.wait_exit(20) == 2
        assert "a Redis server already answers on" in sup.output()
        assert stray.poll() is None  # untouched
    finally:
        stray.kill()
        stray.wait(10)


def test_ctrl_c_during_the_start_up_checks_leaves_nothing_behind(
    corral: Callable[..., Corral], tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "slowimport.py").write_text(
        "import time\nfrom corral.workers import BaseWorker\ntime.sleep(20)\nWorker = BaseWorker\n"
    )
    sup = corral(worker="slowimport:Worker", workers=1, paths={"python_path": [str(code)]})
    sup.config.write_text(sup.config.read_text() + "\n[redis]\n")
    sup.start()
    wait_until(lambda: valkeys_on(sup.root / "run"), 20, what="the embedded server up, the check running")
    os.killpg(sup.pid, signal.SIGINT)
    assert sup.wait_exit(15) == 0
    assert not valkeys_on(sup.root / "run"), "the embedded server was left running"
    assert not (sup.root / "run" / "corral.pid").exists() and not (sup.root / "run" / "corral.sock").exists()
    assert "Traceback" not in sup.output()


def test_state_logs_and_the_server_data_are_private(corral: Callable[..., Corral]) -> None:
    sup = with_redis(corral).start()
    sup.wait_all_ready(1, timeout_s=20)
    state = sup.root / "run"
    paths = [state, sup.log_dir, state / "redis", *sup.log_dir.glob("*.log"), *(state / "redis").rglob("*")]
    modes = {str(path.relative_to(sup.root)): path.stat().st_mode & 0o777 for path in paths}
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes  # nothing for group or others
    assert modes["run"] == 0o700 and modes["logs"] == 0o700
    sup.send(signal.SIGTERM)
    assert sup.wait_exit(30) == 0
