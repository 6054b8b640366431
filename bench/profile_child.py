"""Where a corral child spends its CPU per job: one child drains N jobs (or stream entries) of the
throughput bench's trivial job while py-spy samples it; the samples are summed by where their
innermost frame is (corral's own code, redis-py, asyncio, other).

    .venv/bin/pip install py-spy   # a tool for this script, not a dependency of corral
    .venv/bin/python bench/profile_child.py stream [--n 100000] [--concurrency 8] [--top 15]

The child runs as in ``bench/throughput.py`` (``concurrency`` lanes, uvloop, hiredis, a private
valkey-server over TCP); py-spy samples at 400 Hz, which slows it down a little.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))  # for `bench.*`

from loguru import logger  # noqa: E402

from bench.handlers import COUNTER  # noqa: E402
from bench.server import Server  # noqa: E402
from bench.throughput import GROUP, STREAM, payloads, push, work_spec  # noqa: E402
from corral.supervisor.pool import WorkerPool  # noqa: E402


def area(frame: str) -> str:
    """``function (path:line)`` (py-spy shortens a path to its package) -> where that code is."""
    parts = Path(frame.rpartition("(")[2].partition(":")[0]).parts
    if "redis" in parts:
        return "redis-py"
    if {"corral", "workers", "ipc", "supervisor", "bench"} & set(parts) or parts[:1] == ("handlers.py",):
        return "corral (and the bench's handler)"
    if "asyncio" in parts:
        return "asyncio"
    return parts[-1] if parts else frame


def summarize(raw: Path, top: int) -> None:
    by_area: Counter[str] = Counter()
    by_frame: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        innermost = stack.rsplit(";", 1)[-1]
        by_area[area(innermost)] += int(count)
        by_frame[innermost] += int(count)
    total = sum(by_area.values()) or 1
    print(f"{total} samples; by where the innermost frame is:")
    for name, n in by_area.most_common(8):
        print(f"  {n / total:6.1%}  {name}")
    print(f"the {top} busiest frames:")
    for name, n in by_frame.most_common(top):
        print(f"  {n / total:6.1%}  {name[:130]}")


async def drain(kind: str, n: int, concurrency: int, raw: Path) -> float:
    with tempfile.TemporaryDirectory(prefix="corral-prof-") as tmp:
        server = Server(Path(tmp))
        server.start()
        try:
            client = server.client()
            if kind == "stream":
                client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
            push(client, kind, payloads(kind, n))
            spec = work_spec(kind, server.tcp_url, concurrency=concurrency).to_json()
            pool = WorkerPool("prof", 1, "corral.workers.base:BaseWorker", work=spec, log_level="WARNING")
            pids: list[int] = []
            pool.on("spawning", lambda conn: pids.append(conn.pid))
            try:
                if not await pool.spawn_all(30.0):
                    raise RuntimeError("the child was not ready within 30 s")
                return await asyncio.to_thread(sample, pids[0], client, n, raw)
            finally:
                await pool.stop(graceful_timeout_s=5.0)
        finally:
            server.stop()


def sample(pid: int, client: Any, n: int, raw: Path) -> float:
    """py-spy on ``pid`` until the counter reaches ``n`` (60 s at most); the seconds that took."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    argv = [spy, "record", "-p", str(pid), "-o", str(raw), "-f", "raw", "-r", "400", "-d", "60"]
    sampler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started, deadline = time.perf_counter(), time.monotonic() + 60
    while int(client.get(COUNTER) or 0) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    sampler.send_signal(signal.SIGINT)  # py-spy writes its samples when interrupted
    sampler.wait(30)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("kind", choices=("queue", "stream"))
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    with tempfile.TemporaryDirectory(prefix="corral-prof-out-") as out:
        raw = Path(out) / "samples.txt"
        elapsed = asyncio.run(drain(args.kind, args.n, args.concurrency, raw))
        print(
            f"one child, {args.kind}, concurrency {args.concurrency}: {args.n / elapsed:,.0f}/s while sampled"
        )
        summarize(raw, args.top)


if __name__ == "__main__":
    main()
