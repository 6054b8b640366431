"""``corral init``: the scaffolded project is complete, refuses to be overwritten, and runs as is.

The real CLI runs the scaffolded pool from the project's folder, on its embedded Valkey: 2 slots
get ready, one enqueued job is handled (the handler's Redis counter reaches 1), and ``corral stop``
ends it with exit code 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import redis

from corral.entrypoints.scaffold import ScaffoldError, add_parser, default_name, run, scaffold
from tests.e2e.conftest import wait_until

pytestmark = pytest.mark.e2e

CORRAL = Path(sys.executable).with_name("corral")
FILES = {"corral.toml", "proj.py", "corral.service", "README.md"}


def init_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corral")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CORRAL), *args, "-c", "corral.toml"],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def check_files(proj: Path, written: list[Path]) -> None:
    assert {path.name for path in written} == FILES
    assert all(path.parent == proj and path.is_file() for path in written)
    config = tomllib.loads((proj / "corral.toml").read_text())
    assert config["pool"] == {"name": "proj", "workers": 2, "worker": "proj:Worker"}
    assert config["queues"] == [{"names": ["proj:jobs"], "handler": "proj:handle_job"}]
    assert config["paths"] == {"state_dir": "run", "log_dir": "logs"}
    assert "redis" not in config and "streams" not in config
    toml_text = (proj / "corral.toml").read_text()
    assert '# url = "redis://' in toml_text and "CORRAL_REDIS_URL" in toml_text
    assert "# [[streams]]" in toml_text
    code = (proj / "proj.py").read_text()
    assert "class Worker(BaseWorker):" in code and 'self.on("ping"' in code
    assert "await super().start()" in code and "async def handle_job(job" in code
    unit = (proj / "corral.service").read_text().splitlines()
    for line in (
        "Type=notify",
        f"ExecStart={CORRAL} run -c {proj}/corral.toml",
        f"WorkingDirectory={proj}",
        f"ExecReload={CORRAL} reload -c {proj}/corral.toml",
        "KillMode=mixed",
        "Restart=on-failure",
    ):
        assert line in unit, line
    readme = (proj / "README.md").read_text().splitlines()
    assert len(readme) == 3
    assert f"corral run -c {proj}/corral.toml" in readme[0]
    assert """corral enqueue proj:jobs '{"hello": 1}' -c corral.toml""" in readme[1]
    assert "corral status -c corral.toml" in readme[2]


def check_refusals(proj: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = {path: path.read_text() for path in proj.iterdir()}
    with pytest.raises(ScaffoldError, match="already"):
        scaffold(proj, "proj")
    assert run(init_parser().parse_args(["init", str(proj)])) == 2
    assert run(init_parser().parse_args(["init", str(proj.parent / "other"), "--name", "no way"])) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "already" in err[0] and "not a valid pool name" in err[1], err
    assert "Traceback" not in "".join(err) and not (proj.parent / "other").exists()
    assert {path: path.read_text() for path in proj.iterdir()} == before  # nothing overwritten
    assert default_name(proj.parent / "my project!") == "my-project"
    assert len(scaffold(proj, "proj", force=True)) == 4


def slots_ready(proj: Path, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, f"corral run exited early with {proc.returncode}"
    done = cli("status", "--json", cwd=proj)
    if done.returncode != 0:
        return False
    slots = json.loads(done.stdout)["slots"]
    return len(slots) == 2 and all(slot["state"] == "ready" for slot in slots)


def handled(client: redis.Redis) -> int:
    value = client.get("proj:handled")
    return int(value) if value is not None else 0


def test_init_scaffolds_a_project_that_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proj = tmp_path / "proj"
    check_files(proj, scaffold(proj, "proj"))
    check_refusals(proj, capsys)

    output = (tmp_path / "supervisor.out").open("wb")
    supervisor = subprocess.Popen(
        # from elsewhere: the children import the project's module from the config's folder
        [CORRAL, "run", "-c", str(proj / "corral.toml")], cwd=proj.parent, start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
    )  # fmt: skip
    client = redis.Redis.from_url("unix://" + str(proj / "run" / "redis.sock"), socket_timeout=5)
    try:
        wait_until(lambda: slots_ready(proj, supervisor), timeout_s=60, interval_s=0.2, what="2 ready slots")
        done = cli("enqueue", "proj:jobs", '{"n": 1}', cwd=proj)
        assert done.returncode == 0, done.stderr
        wait_until(lambda: handled(client) >= 1, timeout_s=30, what="proj:handled == 1")
        assert handled(client) == 1
        done = cli("stop", cwd=proj)
        assert done.returncode == 0, done.stderr
        assert supervisor.wait(30) == 0
        logs = "".join(path.read_text() for path in (proj / "logs").glob("worker-*.log"))
        assert "(attempt 1): {'n': 1}" in logs, logs[-2000:]
    finally:
        client.close()
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
        supervisor.wait(10)
        output.close()
