"""Makespan benchmark: a mixed workload of long and short jobs against the ideal schedule.

    .venv/bin/python bench/makespan.py [--workers 2] [--concurrency 2] [--reps 3] [--prefetch-ms 100]

A queue gets, in order, ``--long`` jobs of ``--long-s`` seconds, each followed by ``--short`` jobs of
``--short-s`` seconds (handlers sleep on the loop: no CPU, so the schedule alone decides the makespan);
then a pool of ``--workers`` children (``concurrency`` lanes each, default settings otherwise) drains
it. The makespan runs from the first job's start to the last job's end (the handlers note both). The
ideal is the greedy schedule of the same jobs, in queue order, on ``workers x concurrency`` lanes with
no overhead (each job starts on the first lane free): what a pool that never holds a job while a lane
is free would do. Target: within 10 % of it. The lower bound (the longest job, or the total work over
the lanes) is printed too: no schedule beats it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import heapq
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(ROOT))

from bench.harness import stop_pool  # noqa: E402
from bench.server import Server  # noqa: E402
from corral.contract import QueueSpec, RedisSpec, WorkSpec  # noqa: E402
from corral.supervisor.pool import WorkerPool  # noqa: E402
from corral.workers.jobs.wire import encode_job  # noqa: E402

QUEUE = "bench:mixed"


def workload(args: argparse.Namespace) -> list[float]:
    """Job durations in queue order: each long job followed by its short ones."""
    return [s for _ in range(args.long) for s in [args.long_s] + [args.short_s] * args.short]


def ideal_makespan(durations: list[float], lanes: int) -> float:
    """Greedy list schedule in queue order: each job starts on the first lane free."""
    free_at = [0.0] * lanes
    for duration in durations:
        heapq.heappush(free_at, heapq.heappop(free_at) + duration)
    return max(free_at)


async def run_once(server: Server, args: argparse.Namespace, durations: list[float]) -> float:
    client = server.client()
    client.flushall()
    jobs = [encode_job({"n": n, "s": s}) for n, s in enumerate(durations)]
    client.lpush(QUEUE, *jobs)  # the first pushed is the first taken
    settings = {"concurrency": args.concurrency, "prefetch_ms": args.prefetch_ms}
    if "prefetch_ms" not in {f.name for f in dataclasses.fields(QueueSpec)}:  # a corral before refill
        del settings["prefetch_ms"]
    spec = QueueSpec(handler="bench.handlers:timed_sleep", names=(QUEUE,), **settings)
    work = WorkSpec(redis=RedisSpec(url=server.tcp_url), queues=(spec,))
    output = bytearray()
    pool = WorkerPool(
        "makespan",
        args.workers,
        "corral.workers.base:BaseWorker",
        work=work.to_json(),
        output=lambda _slot: output.extend,
        log_level="WARNING",
        cwd=str(ROOT),
    )
    conns: list[Any] = []
    pool.on("spawning", conns.append)
    try:
        if not await pool.spawn_all(60.0):
            raise RuntimeError(f"children not ready:\n{output.decode(errors='replace')[-3000:]}")
        deadline = time.monotonic() + 10 * sum(durations) + 60
        while int(client.get("bench:count") or 0) < len(durations):
            if time.monotonic() > deadline:
                raise RuntimeError("the workload did not finish in time")
            await asyncio.sleep(0.05)
    finally:
        await stop_pool(pool, conns)
    runs = [line.split() for line in (raw.decode() for raw in client.lrange("bench:runs", 0, -1))]
    starts, ends = [float(run[1]) for run in runs], [float(run[2]) for run in runs]
    return max(ends) - min(starts)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--long", type=int, default=4, help="long jobs")
    parser.add_argument("--long-s", type=float, default=3.0)
    parser.add_argument("--short", type=int, default=10, help="short jobs after each long one")
    parser.add_argument("--short-s", type=float, default=0.1)
    parser.add_argument("--prefetch-ms", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    durations = workload(args)
    lanes = args.workers * args.concurrency
    ideal_s = ideal_makespan(durations, lanes)
    bound_s = max(*durations, sum(durations) / lanes)  # no schedule does better
    measured: list[float] = []
    with tempfile.TemporaryDirectory(prefix="corral-makespan-") as tmp:
        server = Server(Path(tmp))
        server.start()
        try:
            for _ in range(args.reps):
                measured.append(asyncio.run(run_once(server, args, durations)))
        finally:
            server.stop()
    median_s = statistics.median(measured)
    ratio = median_s / ideal_s
    runs = ", ".join(f"{m:.2f}" for m in measured)
    print(
        f"{len(durations)} jobs ({args.long} x {args.long_s:g} s, each followed by {args.short} x "
        f"{args.short_s:g} s) on {args.workers} workers x {args.concurrency} lanes, prefetch_ms "
        f"{args.prefetch_ms}: makespan median {median_s:.2f} s (runs {runs}), "
        f"ideal {ideal_s:.2f} s, {ratio:.3f}x ideal: {'PASS' if ratio <= 1.10 else 'FAIL'} "
        f"(target <= 1.10x); "
        f"lower bound {bound_s:.2f} s ({median_s / bound_s:.3f}x)"
    )


if __name__ == "__main__":
    main()
