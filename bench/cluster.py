"""One queue sharded over a Valkey Cluster's primaries beside one queue on a standalone server, and how
keys and commands spread over the primaries.

    .venv/bin/python -m bench.cluster [--jobs 20000] [--shards 3] [--workers 2] [--reps 3]

Each run: N jobs pushed first (pipelined, round-robin over the shards), then a pool of ``--workers``
corral children (``BaseWorker``, one ``[[queues]]`` table, the bench's trivial handler: ``a+b`` and
one INCR) is spawned, and the clock runs from spawn to the last job. Rows: a standalone server (TCP),
the cluster with the queue unsharded (one primary does all of it), sharded, and sharded with
``wait_replicas = 1`` (every take and ack waits for a replica: the durability option's cost). The
spread is read off each primary: its keys after the push, and the commands it served during the
run (``INFO commandstats``). On this 2-core machine the cluster's six servers share the cores with the
workers: the figures say what sharding costs or buys per host, not what six machines would do.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.handlers import COUNTER
from bench.harness import stop_pool
from bench.server import Server
from corral.contract import QueueSpec, RedisSpec, WorkSpec
from corral.supervisor import WorkerPool
from corral.workers.producer import enqueue
from tests.servers import Cluster

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "bench:jobs"


def commands_served(node_client: Any) -> int:
    stats = node_client.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


def push(client: Any, n: int, shards: int) -> None:
    for start in range(0, n, 1000):
        with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + 1000)):
                enqueue(pipe, QUEUE, {"a": i, "b": 1}, shards=shards)
            pipe.execute()


async def drain(url: str, client: Any, n: int, *, workers: int, shards: int, wait_replicas: int) -> float:
    """Spawn the pool, wait for the counter to reach ``n``; seconds from spawn to the last job."""
    queue = QueueSpec(handler="bench.handlers:add", names=(QUEUE,), shards=shards)
    output = bytearray()
    pool = WorkerPool(
        "bench",
        workers,
        "corral.workers.base:BaseWorker",
        work=WorkSpec(redis=RedisSpec(url=url, wait_replicas=wait_replicas), queues=(queue,)).to_json(),
        output=lambda _slot: output.extend,
        log_level="WARNING",
        cwd=str(ROOT),
    )
    conns: list[Any] = []
    pool.on("spawning", conns.append)
    started = time.perf_counter()
    try:
        if not await pool.spawn_all(60.0):
            raise RuntimeError(f"children not ready:\n{output.decode(errors='replace')[-3000:]}")
        deadline = time.monotonic() + 120
        while int(client.get(COUNTER) or 0) < n:
            if time.monotonic() > deadline or any(not c.alive for c in conns):
                raise RuntimeError(f"not drained:\n{output.decode(errors='replace')[-3000:]}")
            await asyncio.sleep(0.002)
        return time.perf_counter() - started
    finally:
        await stop_pool(pool, conns)


def run_once(
    url: str, client: Any, nodes: list[Any], n: int, *, workers: int, shards: int, wait_replicas: int = 0
) -> dict[str, Any]:
    for node in nodes:
        node.flushall()
    push(client, n, shards)
    keys = [node.dbsize() for node in nodes]
    before = [commands_served(node) for node in nodes]
    seconds = asyncio.run(drain(url, client, n, workers=workers, shards=shards, wait_replicas=wait_replicas))
    served = [commands_served(node) - b for node, b in zip(nodes, before, strict=True)]
    return {"jobs_per_s": n / seconds, "keys": keys, "commands": served}


def row(label: str, runs: list[dict[str, Any]]) -> str:
    rates = [r["jobs_per_s"] for r in runs]
    last = runs[-1]
    total = sum(last["commands"]) or 1
    spread = " / ".join(f"{c / total:.0%}" for c in last["commands"])
    keys = " / ".join(str(k) for k in last["keys"])
    rate = f"{statistics.median(rates):,.0f} | {min(rates):,.0f}-{max(rates):,.0f}"
    return f"| {label} | {rate} | {keys} | {spread} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    lines = [
        f"{args.jobs:,} jobs, {args.workers} corral workers, medians of {args.reps} (spawn to last job)",
        "",
        "| where | jobs/s | range | keys per primary (after the push) | commands per primary (run) |",
        "|---|---:|---|---|---|",
    ]
    server = Server(Path(tempfile.mkdtemp(prefix="corral-bench-")))
    server.start()
    try:
        client = server.client()
        runs = [
            run_once(server.tcp_url, client, [client], args.jobs, workers=args.workers, shards=1)
            for _ in range(args.reps)
        ]
        lines.append(row("standalone server, one queue", runs))
    finally:
        server.stop()
    cluster = Cluster().start()
    try:
        client = cluster.client()
        nodes = [node.client() for node in cluster.primaries()]
        rows = (
            (1, 0, "cluster 3+3, one queue (unsharded)"),
            (args.shards, 0, f"cluster 3+3, shards = {args.shards}"),
            (args.shards, 1, f"cluster 3+3, shards = {args.shards}, wait_replicas = 1"),
        )
        for shards, wait, label in rows:
            runs = [
                run_once(
                    cluster.url,
                    client,
                    nodes,
                    args.jobs,
                    workers=args.workers,
                    shards=shards,
                    wait_replicas=wait,
                )
                for _ in range(args.reps)
            ]
            lines.append(row(label, runs))
    finally:
        cluster.stop()
    print("\n".join(lines))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
