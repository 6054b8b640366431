"""An idle ``corral run`` measured from outside (``bench/lifecycle.py``): the CPU of its supervisor,
its zygote and its workers once every slot is ready; and the real ``corral`` command line, which
``bench/startup.py`` runs too."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

CONFIG = """\
[pool]
name = "bench"
workers = {size}
worker = "{worker}"
[paths]
state_dir = "{tmp}/run"
log_dir = "{tmp}/logs"
[logging]
stderr = false
[options]
tick_interval_s = 1.0
"""


def corral(*args: str) -> list[str]:
    """The real ``corral`` command line (the venv's script, else ``python -m``) with ``args``."""
    script = Path(sys.executable).parent / "corral"
    return (
        [str(script), *args] if script.exists() else [sys.executable, "-m", "corral.entrypoints.cli", *args]
    )


def ready_count(config: Path) -> int:
    done = subprocess.run(
        corral("status", "--json", "-c", str(config)), capture_output=True, timeout=15, check=False
    )
    if done.returncode != 0:
        return 0
    return sum(row["state"] == "ready" for row in json.loads(done.stdout)["slots"])


def cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def idle_cpu(window_s: float, size: int, worker: str) -> dict[str, float]:
    """CPU (% of one core) of an idle ``corral run`` of ``size`` x ``worker``: its supervisor, its
    zygote and its workers, over ``window_s`` once every slot is ready."""
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        config = Path(tmp, "corral.toml")
        config.write_text(CONFIG.format(size=size, worker=worker, tmp=tmp))
        with Path(tmp, "supervisor.out").open("wb") as out:
            proc = subprocess.Popen(corral("run", "-c", str(config)), stdout=out, stderr=subprocess.STDOUT)
        sup = psutil.Process(proc.pid)
        children: list[psutil.Process] = []
        try:
            deadline = time.monotonic() + 60.0
            while ready_count(config) < size:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"supervisor: not {size} ready within 60s; see its output:\n"
                        + Path(tmp, "supervisor.out").read_text()[-2000:]
                    )
                time.sleep(0.5)
            time.sleep(2.0)  # the status client and the children's start-up are over
            children = sup.children(recursive=True)
            zygote = [p for p in children if p.cmdline()[:1] == ["corral: bench zygote"]]
            workers = [p for p in children if p not in zygote]
            before = cpu_s([sup]), cpu_s(zygote), cpu_s(workers), time.perf_counter()
            time.sleep(window_s)
            after = cpu_s([sup]), cpu_s(zygote), cpu_s(workers), time.perf_counter()
            children = sup.children(recursive=True) + children
        finally:
            alive = stop_supervisor(proc, sup, children)
        wall = after[3] - before[3]
        sup_pct, zygote_pct, workers_pct = ((after[i] - before[i]) / wall * 100 for i in range(3))
        return {
            "supervisor_pct": sup_pct,
            "zygote_pct": zygote_pct,
            "zygotes": float(len(zygote)),
            "children_pct": workers_pct,
            "window_s": wall,
            "children_left": float(len(alive)),
        }


def stop_supervisor(
    proc: subprocess.Popen[bytes], sup: psutil.Process, children: list[psutil.Process]
) -> list[psutil.Process]:
    """SIGTERM the supervisor; kill what outlives it; what was still alive after its exit."""
    if proc.poll() is None:
        with contextlib.suppress(psutil.NoSuchProcess):
            children += sup.children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20.0)
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL to proc.pid
            proc.wait(10.0)
    _, alive = psutil.wait_procs(children, timeout=10.0)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()  # psutil checks the pid was not reused
    psutil.wait_procs(alive, timeout=5.0)
    return list(alive)
