"""Throughput benchmark: how fast 2 workers drain trivial jobs from a queue and entries from a stream.

    .venv/bin/python bench/throughput.py [--quick] [--json PATH] [--no-peers] [--peers-dir DIR] [--unix]

Every system runs 2 worker processes against one private valkey-server (TCP on a free 127.0.0.1 port,
no persistence) and does the same job: a+b, then one INCR of ``bench:count``. The bench polls that
counter every 2 ms.

- corral queue: a WorkerPool of ``corral.workers.base:BaseWorker`` with one ``[[queues]]`` spec
  (defaults: batch 50, reliable: processing list + acknowledgement) and ``bench.handlers:add``.
- corral stream: the same with one ``[[streams]]`` spec (defaults: XREADGROUP COUNT 100) and
  ``bench.handlers:add_entry``.
- raw (``bench/baselines.py``, synchronous redis-py): the per-job reliable loop (BLMOVE, INCR, LREM)
  and the batched loop (XREADGROUP COUNT 100, INCR each, one XACK); for reference, the batched loop
  again on redis.asyncio, the client corral's handlers get.
- peers (``bench/peers.py``; RQ, dramatiq, arq, Celery, each in a venv of its own under
  ``--peers-dir``, created on the first run and reused), with their own clients.

Every system is measured the same way: N jobs are enqueued first (corral and raw: pipelines of LPUSH
of 1000 jobs, or XADD; peers: their own client), then its 2 workers are spawned and the clock runs
from the spawn to the counter reaching N. Reported: the whole run (N / spawn -> last job, start-up
included), the steady rate (from the first completed job on) and the start-up (spawn -> first job
done). A system still short of N at its deadline is DNF, with the rate of what it did.

corral and raw run 3 times (--quick: once), alternating, and the median is reported; peers run once,
but dramatiq, the fastest (the peer corral's 3x target is measured against), 3 times: the median.
The CPU time of the worker processes (and of valkey-server) per job is reported too: unlike the rates
it hardly moves when other work shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# This file's folder holds bench/ipc.py: drop it from sys.path so `import ipc` finds the package.
_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(ROOT))  # for `bench.*`

import psutil  # noqa: E402
import redis  # noqa: E402
from loguru import logger  # noqa: E402

from bench import peers  # noqa: E402
from bench.harness import check_alive, measured, stop_pool, stop_processes, watch  # noqa: E402
from bench.report import Result, Targets, markdown, median_run, rate_text, report, update_doc  # noqa: E402
from bench.server import Server  # noqa: E402
from corral.contract import QueueSpec, RedisSpec, StreamSpec, WorkSpec  # noqa: E402
from corral.supervisor.pool import WorkerPool  # noqa: E402
from corral.workers.jobs.wire import encode_job  # noqa: E402

WORKERS = 2
QUEUE = "bench:queue"
STREAM = "bench:stream"
GROUP = "bench"
CHUNK = 1000  # jobs per LPUSH, commands per pipeline round trip
BASELINES = _HERE / "baselines.py"
TARGET_VS_PEER = 3.0
TARGET_VS_RAW_QUEUE = 1.5
TARGET_VS_RAW_STREAM = 0.9


# -- the setup --------------------------------------------------------------------------------------


@dataclass
class Setup:
    server: Server
    url: str  # what corral and raw connect to (peers: always the TCP port)
    n: int
    deadline_s: float
    workdir: Path  # logs, the peers' modules
    peers_dir: Path  # the peers' venvs


# -- measuring -----------------------------------------------------------------------------------------


def payloads(kind: str, n: int) -> list[Any]:
    """What producers push, built before the clock starts: corral job envelopes, or entry fields."""
    if kind == "queue":
        return [encode_job({"a": i, "b": 1}) for i in range(n)]
    return [{"a": i, "b": 1} for i in range(n)]


def push(client: redis.Redis, kind: str, items: list[Any]) -> None:
    for start in range(0, len(items), CHUNK):
        chunk = items[start : start + CHUNK]
        with client.pipeline(transaction=False) as pipe:
            if kind == "queue":
                pipe.lpush(QUEUE, *chunk)
            else:
                for fields in chunk:
                    pipe.xadd(STREAM, fields)
            pipe.execute()


# -- raw redis-py -----------------------------------------------------------------------------------


RAW_SYSTEMS = {
    "queue": "raw BLMOVE/INCR/LREM per job",
    "stream": "raw XREADGROUP 100 + XACK",
    "stream-async": "raw XREADGROUP 100 + XACK, redis.asyncio",
}


def run_raw(setup: Setup, mode: str) -> Result:
    """``bench/baselines.py MODE`` in 2 processes; mode: queue, stream or stream-async."""
    kind, n = ("queue" if mode == "queue" else "stream"), setup.n
    client = setup.server.client()
    client.flushall()
    if kind == "stream":
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    items = payloads(kind, n)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        push(client, kind, items)
        started = time.perf_counter()
        with (setup.workdir / f"raw-{mode}.log").open("ab") as log:
            for i in range(WORKERS):
                argv = [sys.executable, str(BASELINES), mode, setup.url, f"raw-{i}"]
                procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        check = check_alive(procs, f"raw {mode}")
        limits = (setup.deadline_s, setup.deadline_s)
        pids = [p.pid for p in procs]
        seen = watch(client, n, limits_s=limits, workers=pids, server=setup.server.pid, check=check)
    finally:
        stop_processes(procs)
    return measured(Result(RAW_SYSTEMS[mode], kind, n), seen, started)


# -- corral -----------------------------------------------------------------------------------------


CONCURRENCY = [8]  # handlers of a batch in flight at once in each corral child (--concurrency)


def work_spec(kind: str, url: str, batch: bool = False, concurrency: int | None = None) -> WorkSpec:
    """The bench's queue or stream; ``batch``: its batch handler (the INCRs pipelined)."""
    concurrency = concurrency or CONCURRENCY[0]
    if kind == "queue":
        handler = "bench.handlers:add_batch" if batch else "bench.handlers:add"
        queue = QueueSpec(handler=handler, names=(QUEUE,), concurrency=concurrency, batch=batch)
        return WorkSpec(redis=RedisSpec(url=url), queues=(queue,))
    handler = "bench.handlers:add_entries" if batch else "bench.handlers:add_entry"
    stream = StreamSpec(stream=STREAM, handler=handler, group=GROUP, concurrency=concurrency, batch=batch)
    return WorkSpec(redis=RedisSpec(url=url), streams=(stream,))


async def run_corral(setup: Setup, kind: str, batch: bool = False, concurrency: int | None = None) -> Result:
    n, client = setup.n, setup.server.client()
    client.flushall()
    items = payloads(kind, n)
    output = bytearray()
    pool = WorkerPool(
        "bench",
        WORKERS,
        "corral.workers.base:BaseWorker",
        work=work_spec(kind, setup.url, batch, concurrency).to_json(),
        output=lambda _slot: output.extend,
        log_level="WARNING",
        cwd=str(ROOT),
    )
    conns: list[Any] = []
    pids: list[int] = []  # the watch samples their CPU: filled as the children start
    pool.on("spawning", lambda conn: (conns.append(conn), pids.append(conn.pid)))

    def check() -> None:
        if any(not c.alive for c in conns):
            raise RuntimeError(f"corral {kind}: a child died:\n{output.decode(errors='replace')[-3000:]}")

    if kind == "stream":
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    await asyncio.to_thread(push, client, kind, items)
    try:
        started = time.perf_counter()
        spawning = asyncio.ensure_future(pool.spawn_all(60.0))
        limits = (setup.deadline_s, setup.deadline_s)
        seen = await asyncio.to_thread(
            watch, client, n, limits_s=limits, workers=pids, server=setup.server.pid, check=check
        )
        if not await spawning:
            raise RuntimeError(
                f"corral {kind}: children not ready:\n{output.decode(errors='replace')[-3000:]}"
            )
    finally:
        await stop_pool(pool, conns)
    if output.strip():
        print(f"corral {kind} children said:\n{output.decode(errors='replace')[-2000:]}", file=sys.stderr)
    label = f"corral {kind} batch handler" if batch else f"corral {kind}"
    label += " concurrency 1" if concurrency == 1 else ""
    return measured(Result(label, kind, n), seen, started)


# -- peers ------------------------------------------------------------------------------------------


def run_peer(setup: Setup, peer: peers.Peer, deadline_s: float) -> Result:
    """Enqueue N jobs with the peer's client, start its workers, time first job -> N-th job."""
    n, client, module_dir, tcp_url = setup.n, setup.server.client(), setup.workdir, setup.server.tcp_url
    client.flushall()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(BENCH_REDIS_URL=tcp_url, PYTHONPATH=str(module_dir), PYTHONUNBUFFERED="1")
    result = Result(peer.label, "queue", n)
    started = time.perf_counter()
    enqueue = peer.enqueue(setup.peers_dir, module_dir, n)
    done = subprocess.run(enqueue, cwd=module_dir, env=env, capture_output=True, timeout=300, check=False)
    if done.returncode != 0:
        result.error = f"enqueue failed: {done.stderr.decode(errors='replace')[-500:]}"
        return result
    result.enqueue_s = time.perf_counter() - started
    procs: list[subprocess.Popen[bytes]] = []
    log_path = module_dir / f"{peer.label.split()[0]}.log"
    try:
        with log_path.open("ab") as log:
            for argv in peer.workers(setup.peers_dir, tcp_url):
                options: dict[str, Any] = {"cwd": module_dir, "env": env, "stdout": log, "stderr": log}
                procs.append(subprocess.Popen(argv, **options, start_new_session=True))
        started = time.perf_counter()
        pids, check = [p.pid for p in procs], check_alive(procs, peer.label)
        seen = watch(
            client, n, limits_s=(60.0, deadline_s), workers=pids, server=setup.server.pid, check=check
        )
    except (TimeoutError, RuntimeError) as exc:
        result.error = f"{exc}; log: {log_path.read_text(errors='replace')[-500:]}"
        return result
    finally:
        stop_processes(procs, group=True)
    return measured(result, seen, started)


# -- the report ---------------------------------------------------------------------------------------


# -- main ---------------------------------------------------------------------------------------------


def progress(result: Result) -> None:
    extra = f", {result.worker_cpu_us:.0f} us CPU/job" if result.worker_cpu_us else ""
    extra += f", {result.error}" if result.error else ""
    steady = f"steady {result.steady_rate:,.0f}/s, start-up {result.startup_s or 0:.2f}s"
    print(
        f"  {result.system:<44} {rate_text(result):>10}/s  ({result.seconds:.2f}s, {steady}{extra})",
        flush=True,
    )


async def corral_and_raw(setup: Setup, reps: int) -> dict[str, list[Result]]:
    """--reps rounds; in each, every corral run next to its raw baselines, the order alternating."""
    runs: dict[str, list[Result]] = {}
    for rep in range(reps):
        for kind in ("queue", "stream"):
            systems = [f"raw {mode}" for mode in RAW_SYSTEMS if mode.startswith(kind)]
            systems += [f"corral {kind}", f"corral {kind} concurrency 1", f"corral {kind} batch handler"]
            for system in systems if rep % 2 == 0 else systems[::-1]:
                if system.startswith("raw "):
                    result = await asyncio.to_thread(run_raw, setup, system.removeprefix("raw "))
                else:
                    batch, one_lane = system.endswith("batch handler"), system.endswith("concurrency 1")
                    result = await run_corral(setup, kind, batch, 1 if one_lane else None)
                runs.setdefault(system, []).append(result)
                progress(result)
    return runs


def run_peers(setup: Setup, quick: bool) -> list[Result]:
    errors = peers.ensure_venvs(setup.peers_dir, {p.venv for p in peers.PEERS}, timeout_s=300.0)
    for name, error in errors.items():
        print(f"peer venv {name}: {error}", file=sys.stderr)
    peers.write_modules(setup.workdir)
    results = []
    for peer in peers.PEERS:
        if peer.venv in errors:
            results.append(Result(peer.label, "queue", setup.n, error=errors[peer.venv]))
            continue
        deadline_s = peer.deadline_s / 2 if peer.deadline_s and quick else peer.deadline_s or setup.deadline_s
        runs = []
        for _ in range(1 if quick else peer.reps):
            runs.append(run_peer(setup, peer, deadline_s))
            progress(runs[-1])
        results.append(median_run(runs))
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5,000 jobs, one run each, shorter deadlines")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--update",
        metavar="DOC",
        type=Path,
        help="write the table into DOC's <!-- throughput:begin/end --> block",
    )
    parser.add_argument("--no-peers", action="store_true", help="corral and raw redis-py only")
    parser.add_argument("--peers-dir", type=Path, default=_HERE / ".peers", help="the peers' venvs (cached)")
    parser.add_argument("--unix", action="store_true", help="corral and raw on the Unix socket (peers: TCP)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="corral: handlers of a batch in flight at once (1: one after another)",
    )
    args = parser.parse_args()
    args.mode = "quick" if args.quick else "full"
    args.n, args.reps, args.deadline = (5_000, 1, 30.0) if args.quick else (20_000, 3, 60.0)
    args.transport = "corral and raw over a Unix socket" if args.unix else "TCP"
    args.load = os.getloadavg()[0]  # other work on the machine skews every figure below
    return args


def run_everything(args: argparse.Namespace) -> tuple[dict[str, list[Result]], list[Result]]:
    """corral and the raw loops (and the peers), on one private server stopped on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix="corral-tput-"))
    server = Server(workdir)
    ok = False
    try:
        server.start()
        url = server.unix_url if args.unix else server.tcp_url
        setup = Setup(server, url, args.n, args.deadline, workdir, args.peers_dir)
        print(f"valkey-server on {server.tcp_url} and {server.unix_url}", flush=True)
        runs = asyncio.run(corral_and_raw(setup, args.reps))
        peer_runs = [] if args.no_peers else run_peers(setup, args.quick)
        ok = True
    finally:
        server.stop()
        leftovers = psutil.Process().children(recursive=True)
        for child in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        if leftovers:
            print(f"WARNING: killed {len(leftovers)} leftover child process(es)", file=sys.stderr)
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)
    return runs, peer_runs


def main() -> None:
    args = parse_args()
    CONCURRENCY[0] = args.concurrency
    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    began = time.monotonic()
    runs, peer_runs = run_everything(args)
    targets = Targets(TARGET_VS_PEER, TARGET_VS_RAW_QUEUE, TARGET_VS_RAW_STREAM)
    result = report(
        runs,
        peer_runs,
        args,
        targets,
        concurrency=CONCURRENCY[0],
        raw_modes=list(RAW_SYSTEMS),
        workers=WORKERS,
    )
    print(f"(whole run {time.monotonic() - began:.0f}s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.update:
        command = " ".join(["bench/throughput.py", *sys.argv[1:]])
        update_doc(args.update, "throughput", markdown(result, command))


if __name__ == "__main__":
    main()
