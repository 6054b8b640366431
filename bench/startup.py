"""Start-up to the first job done: ``corral run`` (a fresh supervisor, 2 slots) against a raw redis-py
loop started the same way (a fresh interpreter that imports redis, connects and BRPOPs).

    .venv/bin/python bench/startup.py [--reps 7] [--json PATH] [--update BENCHMARKS.md]

- given URL: a private valkey-server (TCP) runs already and the job waits on the queue before the
  process is spawned; the clock runs from the spawn of ``corral run`` (or of the raw loop) until the
  handler has written its timestamp.
- embedded server: ``corral run`` with no ``[redis] url`` starts its own valkey-server; the job is
  pushed as soon as that server's socket answers (the server's start is inside the time).

Medians of ``--reps`` runs, the three alternating. The handler is ``bench.handlers:mark_done`` (one
SET of the time); the raw loop does the same SET.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench.idle import corral  # noqa: E402
from bench.report import update_doc  # noqa: E402
from bench.server import Server  # noqa: E402

QUEUE = "bench:start"
DONE = "bench:done"
TARGET = 1.5  # corral run's start-up <= this x the raw loop's
RAW = """
import sys, time, redis
r = redis.Redis.from_url(sys.argv[1])
_, job = r.brpop(["bench:start"], timeout=30)
r.set("bench:done", repr(time.time()))
"""
SYSTEMS = ("raw redis-py loop", "corral run, given URL", "corral run, embedded server")


def config(folder: Path, url: str | None) -> Path:
    redis_table = f'[redis]\nurl = "{url}"\n' if url else ""
    text = (
        f'[pool]\nname = "start"\nworkers = 2\n[paths]\nstate_dir = "run"\nlog_dir = "logs"\n'
        f'python_path = ["{ROOT}"]\n[logging]\nstderr = false\n{redis_table}'
        f'[[queues]]\nnames = ["{QUEUE}"]\nhandler = "bench.handlers:mark_done"\n'
    )
    path = folder / "corral.toml"
    path.write_text(text)
    return path


def wait_done(client: Any, deadline_s: float = 30.0) -> float:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = client.get(DONE)
        if value:
            return float(value)
        time.sleep(0.002)
    raise TimeoutError("the first job was not done within 30 s")


def push_when_up(client: redis.Redis, proc: subprocess.Popen[bytes], deadline_s: float = 30.0) -> None:
    """The embedded server: push the job as soon as its socket answers."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            client.lpush(QUEUE, json.dumps({"n": 1}))
            return
        except (redis.ConnectionError, FileNotFoundError):
            if proc.poll() is not None or time.monotonic() > end:
                raise
            time.sleep(0.002)


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM ``corral run``; it must be gone within 30 s (then SIGKILL, and its output shown)."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        print(f"corral run did not stop within 30 s:\n{log.read_text()[-3000:]}", file=sys.stderr)
        proc.kill()
        proc.wait(10)
        raise


def run_corral(url: str | None, server: Server) -> float:
    with tempfile.TemporaryDirectory(prefix="corral-start-") as tmp:
        path, log = config(Path(tmp), url), Path(tmp) / "out.log"
        client = server.client()
        client.flushall()
        if url:
            client.lpush(QUEUE, json.dumps({"n": 1}))
        else:
            client = redis.Redis(unix_socket_path=str(Path(tmp) / "run" / "redis.sock"))
        with log.open("wb") as out:
            started = time.time()
            proc = subprocess.Popen(corral("run", "-c", str(path)), cwd=tmp, stdout=out, stderr=out)
        try:
            if not url:
                push_when_up(client, proc)
            return wait_done(client) - started
        finally:
            stop(proc, log)
            client.close()


def run_raw(server: Server) -> float:
    client = server.client()
    client.flushall()
    client.lpush(QUEUE, json.dumps({"n": 1}))
    started = time.time()
    subprocess.run([sys.executable, "-c", RAW, server.tcp_url], check=True, timeout=60)
    return wait_done(client) - started


def measure(reps: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in SYSTEMS}
    with tempfile.TemporaryDirectory(prefix="corral-start-server-") as tmp:
        server = Server(Path(tmp))
        server.start()
        try:
            for _ in range(reps):
                times[SYSTEMS[0]].append(run_raw(server))
                times[SYSTEMS[1]].append(run_corral(server.tcp_url, server))
                times[SYSTEMS[2]].append(run_corral(None, server))
                print("  rep:", {k: f"{v[-1] * 1000:.0f} ms" for k, v in times.items()}, flush=True)
        finally:
            server.stop()
    return times


def table(times: dict[str, list[float]], reps: int, load: float) -> tuple[str, list[dict[str, Any]]]:
    raw = statistics.median(times[SYSTEMS[0]])
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        ratio = median / raw
        verdict = "" if name == SYSTEMS[0] else ("PASS" if ratio <= TARGET else "FAIL")
        rows.append(
            {
                "system": name,
                "median ms": f"{median * 1000:.0f}",
                "range ms": f"{min(values) * 1000:.0f}-{max(values) * 1000:.0f}",
                "vs raw": f"{ratio:.2f}x",
                f"target <= {TARGET:g}x": verdict,
            }
        )
    head = (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC: spawn -> first job done, medians of {reps}, python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, load average {load:.2f} at the start"
    )
    return head, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--json", metavar="PATH", help="also write every time as JSON")
    parser.add_argument("--update", metavar="DOC", type=Path, help="write the table into DOC (BENCHMARKS.md)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    times = measure(args.reps)
    head, rows = table(times, args.reps, load)
    columns = list(rows[0])
    print(head)
    for row in rows:
        print("  " + " | ".join(f"{row[c]:<28}" if c == "system" else f"{row[c]:>10}" for c in columns))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"head": head, "rows": rows, "times_s": times}, indent=2) + "\n"
        )
    if args.update:
        lines = [f"`{' '.join(['bench/startup.py', *sys.argv[1:]])}`, {head}.", ""]
        lines += ["| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 2) + "---|"]
        lines += ["| " + " | ".join(row[c].replace("->", "→") for c in columns) + " |" for row in rows]
        update_doc(args.update, "startup", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
