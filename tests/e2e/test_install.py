"""The built wheel installs one import package, ``corral``, and clobbers nothing.

The wheel goes into a fresh virtualenv beside the ``supervisor`` (supervisord) and ``entrypoints``
distributions from PyPI, whose import names are the repository's folder names; all three must import
as themselves, and the installed ``corral`` must run a pool from outside the repository (its child
bootstrap found in the installed package, not in a source tree).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO_ROOT, wait_until

pytestmark = pytest.mark.e2e


def run(*argv: str | Path, cwd: Path | None = None, timeout_s: float = 300) -> str:
    done = subprocess.run(
        [str(a) for a in argv], check=False, cwd=cwd, capture_output=True, text=True, timeout=timeout_s
    )
    assert done.returncode == 0, f"{argv} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", REPO_ROOT, "-w", out)
    [built] = out.glob("corral-*.whl")
    return built


def test_the_wheel_holds_one_top_level_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = archive.read(next(n for n in names if n.endswith("top_level.txt"))).decode().split()
    assert top_level == ["corral"]
    tops = {name.split("/", 1)[0] for name in names if not name.startswith("corral-")}
    assert tops == {"corral"}
    for room in ("ipc", "supervisor", "workers", "entrypoints"):
        assert f"corral/{room}/__init__.py" in names
    assert "corral/contract.py" in names and "corral/entrypoints/demo/corral.toml" in names
    assert "corral/entrypoints/dashboard/static/app.js" in names  # the dashboard works offline


def test_installs_beside_supervisord_and_entrypoints_and_runs_a_pool(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python, corral = venv / "bin" / "python", venv / "bin" / "corral"
    run(
        python,
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        wheel,
        "supervisor",
        "entrypoints",
    )
    probe = (
        "import entrypoints, supervisor.supervisord, corral.workers, corral.supervisor, corral.ipc;"
        "from corral.workers import BaseWorker; from corral.supervisor import WorkerPool;"
        "print(supervisor.__file__); print(entrypoints.__file__); print(corral.workers.__file__)"
    )
    files = run(python, "-c", probe, cwd=tmp_path).split()
    site = str(venv / "lib")
    assert all(path.startswith(site) for path in files), files
    assert files[0].endswith("supervisor/__init__.py") and files[1].endswith("entrypoints.py")

    config = tmp_path / "corral.toml"
    config.write_text('[pool]\nworkers = 1\nworker = "corral.entrypoints.ticker:TickerWorker"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    supervisor = subprocess.Popen(
        [corral, "run", "-c", config], cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        status = wait_until(
            lambda: "ready" in subprocess.run(
                [corral, "status", "-c", config], check=False, cwd=tmp_path, env=env, capture_output=True, text=True
            ).stdout,
            timeout_s=60,
            what="the installed corral's pool ready",
        )  # fmt: skip
        assert status
        run(corral, "stop", "-c", config, cwd=tmp_path)
        assert supervisor.wait(30) == 0
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait(10)
