"""Start-up to first job: ``corral run`` (a fresh supervisor, 2 slots) until its first job is done,
against a raw redis-py loop started the same way (a fresh interpreter that connects and BRPOPs).

    .venv/bin/python bench/startup.py [--reps 5] [--json PATH]

- given URL: a private valkey-server (TCP) runs already and the job waits on the queue before the
  process starts; the clock runs from the spawn of ``corral run`` (or of the raw loop) until the
  handler has written its timestamp.
- embedded server: ``corral run`` with no ``[redis] url`` starts its own valkey-server; the job is
  pushed as soon as that server's socket answers (so the server's start is inside the time).

Medians of ``--reps`` runs. The handler is ``bench.handlers:mark_done`` (one SET).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench.server import Server  # noqa: E402

QUEUE = "bench:start"
DONE = "bench:done"
CORRAL = [sys.executable, "-m", "corral.entrypoints.cli"]
RAW = """
import sys, time, redis
r = redis.Redis.from_url(sys.argv[1])
_, job = r.brpop(["bench:start"], timeout=30)
r.set("bench:done", time.time())
"""


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
        with_value = client.get(DONE)
        if with_value:
            return float(with_value)
        time.sleep(0.002)
    raise TimeoutError("the first job was not done in time")


def run_corral(url: str | None, server: Server) -> float:
    with tempfile.TemporaryDirectory(prefix="corral-start-") as tmp:
        path = config(Path(tmp), url)
        client = server.client() if url else None
        if client is not None:
            client.flushall()
            client.lpush(QUEUE, json.dumps({"n": 1}))
        started = time.time()
        out = (Path(tmp) / "out.log").open("wb")
        proc = subprocess.Popen([*CORRAL, "run", "-c", str(path)], cwd=tmp, stdout=out, stderr=out)
        try:
            if client is None:  # the embedded server: push once its socket answers
                client = redis.Redis(unix_socket_path=str(Path(tmp) / "run" / "redis.sock"))
                end = time.monotonic() + 30
                while True:
                    try:
                        client.lpush(QUEUE, json.dumps({"n": 1}))
                        break
                    except (redis.ConnectionError, FileNotFoundError):
                        if time.monotonic() > end:
                            raise
                        time.sleep(0.002)
            return wait_done(client) - started
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                print((Path(tmp) / "out.log").read_text()[-3000:], file=sys.stderr)
                proc.kill()
                raise


def run_raw(server: Server) -> float:
    client = server.client()
    client.flushall()
    client.lpush(QUEUE, json.dumps({"n": 1}))
    started = time.time()
    subprocess.run([sys.executable, "-c", RAW, server.tcp_url], check=True, timeout=60)
    return wait_done(client) - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="corral-start-server-") as tmp:
        server = Server(Path(tmp))
        server.start()
        try:
            times: dict[str, list[float]] = {
                "raw redis-py loop": [],
                "corral, given URL": [],
                "corral, embedded": [],
            }
            for _ in range(args.reps):
                times["raw redis-py loop"].append(run_raw(server))
                times["corral, given URL"].append(run_corral(server.tcp_url, server))
                times["corral, embedded"].append(run_corral(None, server))
                print("  rep:", {k: round(v[-1], 3) for k, v in times.items()}, flush=True)
        finally:
            server.stop()
    raw = statistics.median(times["raw redis-py loop"])
    print(f"start-up to the first job done, medians of {args.reps} (python {sys.version.split()[0]}):")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<20} {median * 1000:7.0f} ms  ({median / raw:.2f}x the raw loop; "
              f"range {min(values) * 1000:.0f}-{max(values) * 1000:.0f} ms)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(times, indent=2) + "\n")


if __name__ == "__main__":
    main()
