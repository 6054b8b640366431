"""Lifecycle benchmark: how fast a pool heals and reloads, and what the idle supervisor costs.

    .venv/bin/python bench/lifecycle.py [--quick] [--json PATH] [--update BENCHMARKS.md]

Phases 1 and 2 run twice in the same run: children forked from the preloaded zygote
(``spawn = "zygote"``, the default) and exec'd (``spawn = "exec"``).

1. SIGKILL -> replacement ready: a WorkerPool of 8 ticker workers (Python API); one slot's child is
   SIGKILLed, the time until the pool emits ``ready`` for that slot's new child is recorded; the pool
   settles, the next slot (round-robin) is killed. The restart policy backs off only on a streak of
   quick failures, so ``stable_after_s`` is set to 0.5 s and every killed child has been up longer:
   this measures a slot that crashes once in a while (its restart is immediate).
2. Rolling reload of 8 workers: from ``pool.reload()`` until every slot has a new ready child and
   every old child has exited (median of several reloads).
3. Idle supervisor CPU: the real ``corral run`` with 8 ticker workers (tick_interval_s=1, default
   heartbeat settings); once ``corral status --json`` shows 8 ready, the CPU time (user+system,
   psutil) of the supervisor and its zygote over a window, as % of one core; the workers' CPU for
   context.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

# This file's folder holds bench/ipc.py: drop it from sys.path so `import ipc` finds the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))  # for `bench.*`

import psutil  # noqa: E402
from loguru import logger  # noqa: E402

from bench.harness import stop_pool  # noqa: E402
from bench.idle import idle_cpu  # noqa: E402
from bench.report import update_doc  # noqa: E402
from corral.supervisor.connection import WorkerConnection  # noqa: E402
from corral.supervisor.pool import WorkerPool  # noqa: E402
from corral.supervisor.states import RestartPolicy  # noqa: E402

WORKER = "corral.entrypoints.ticker:TickerWorker"
SIZE = 8
STABLE_AFTER_S = 0.5
READY_MEDIAN_TARGET_MS = 20.0  # with the zygote
IDLE_CPU_TARGET_PCT = 1.0
Event = tuple[str, float, WorkerConnection]


class Recorder:
    """Every pool event with its time.perf_counter(), and a way to wait (with a deadline) on them."""

    def __init__(self, pool: WorkerPool) -> None:
        self.events: list[Event] = []
        self.conns: list[WorkerConnection] = []
        self._changed = asyncio.Event()
        for name in ("spawning", "ready", "exit"):
            pool.on(name, partial(self._record, name))

    def _record(self, name: str, conn: WorkerConnection) -> None:
        self.events.append((name, time.perf_counter(), conn))
        if name == "spawning":
            self.conns.append(conn)
        self._changed.set()

    def time_of(self, name: str, conn: WorkerConnection) -> float | None:
        return next((t for e, t, c in self.events if e == name and c is conn), None)

    async def until(self, done: Callable[[], object], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{what}: not within {timeout_s:g}s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))


def ms(seconds: list[float], stat: str) -> float:
    if stat == "p99":
        return statistics.quantiles(seconds, n=100, method="inclusive")[98] * 1000
    return (max(seconds) if stat == "max" else statistics.median(seconds)) * 1000


async def settle(pool: WorkerPool) -> None:
    if not await pool.wait_ready(30.0):
        raise RuntimeError("the pool did not settle (every slot ready) within 30s")
    await asyncio.sleep(0.1)  # let the previous replacement's follow-up work (heartbeat task, stats) pass


def replacement(rec: Recorder, old: WorkerConnection, killed_at: float) -> WorkerConnection | None:
    """The new child of ``old``'s slot that became ready after the kill, if any yet."""
    return next(
        (
            c
            for e, t, c in rec.events
            if e == "ready" and c.slot == old.slot and c is not old and t > killed_at
        ),
        None,
    )


def reloaded(pool: WorkerPool, rec: Recorder, old: list[WorkerConnection]) -> bool:
    new = [pool.get(s) for s in range(SIZE)]
    fresh = all(c is not None and c not in old and c.state.value == "ready" for c in new)
    return fresh and all(rec.time_of("exit", c) is not None for c in old)


async def kills(pool: WorkerPool, rec: Recorder, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"ready": [], "exit_seen": [], "respawn": [], "boot": [], "uptime": []}
    for i in range(n):
        await settle(pool)
        slot = i % SIZE
        old = pool.get(slot)
        assert old is not None
        if old.uptime_s < STABLE_AFTER_S + 0.1:  # a "stable" child: its death restarts at once
            await asyncio.sleep(STABLE_AFTER_S + 0.1 - old.uptime_s)
        out["uptime"].append(old.uptime_s)
        started = time.perf_counter()
        os.kill(old.pid, signal.SIGKILL)
        await rec.until(partial(replacement, rec, old, started), 30.0, f"slot {slot}: replacement ready")
        new = replacement(rec, old, started)
        assert new is not None
        ready, spawning, exited = (
            rec.time_of(e, c) for e, c in (("ready", new), ("spawning", new), ("exit", old))
        )
        assert ready is not None and spawning is not None and exited is not None
        out["ready"].append(ready - started)
        out["exit_seen"].append(exited - started)
        out["respawn"].append(spawning - exited)
        out["boot"].append(ready - spawning)
    return out


async def reloads(pool: WorkerPool, rec: Recorder, n: int) -> list[float]:
    times: list[float] = []
    for _ in range(n):
        await settle(pool)
        old = [c for c in map(pool.get, range(SIZE)) if c is not None]
        started = time.perf_counter()
        if not await asyncio.wait_for(pool.reload(), 120.0):
            raise RuntimeError("pool.reload() reported a failed replacement")
        await rec.until(partial(reloaded, pool, rec, old), 60.0, "reload: new children ready, old ones gone")
        ends = [rec.time_of("exit", c) for c in old]
        ends += [rec.time_of("ready", c) for c in map(pool.get, range(SIZE)) if c is not None]
        times.append(max(t for t in ends if t is not None) - started)
    return times


async def pool_phases(n_kills: int, n_reloads: int, spawn: str) -> dict[str, list[float]]:
    policy = RestartPolicy(stable_after_s=STABLE_AFTER_S, max_restarts=n_kills + 1)
    pool = WorkerPool(
        "bench",
        SIZE,
        WORKER,
        spawn=spawn,
        policy=policy,
        log_level="WARNING",
        options={"tick_interval_s": 1.0},
        output=lambda _slot: lambda _data: None,
    )
    rec = Recorder(pool)
    try:
        if not await pool.spawn_all(60.0):
            raise RuntimeError("the pool's 8 workers were not ready within 60s")
        results = await kills(pool, rec, n_kills)
        results["reload"] = await reloads(pool, rec, n_reloads)
        return results
    finally:
        await stop_pool(pool, rec.conns)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def rows_of(res: dict[str, dict[str, list[float]]], idle: dict[str, float]) -> list[tuple[str, ...]]:
    """(metric, zygote, exec, target, result) rows."""
    z, e = res["zygote"], res["exec"]
    ready_ms = ms(z["ready"], "median")
    both = [
        ("SIGKILL -> replacement ready, median", "ready", "median", "{:.0f} ms"),
        ("SIGKILL -> replacement ready, p99", "ready", "p99", "{:.0f} ms"),
        ("  of which: SIGKILL -> exit seen, median", "exit_seen", "median", "{:.1f} ms"),
        ("  of which: exit seen -> spawn, max", "respawn", "max", "{:.1f} ms"),
        ("  of which: spawn -> ready (boot), median", "boot", "median", "{:.0f} ms"),
        (f"rolling reload of {SIZE}, median", "reload", "median", "{:.0f} ms"),
        (f"rolling reload of {SIZE}, max", "reload", "max", "{:.0f} ms"),
    ]
    rows = [(name, fmt.format(ms(z[k], st)), fmt.format(ms(e[k], st)), "", "") for name, k, st, fmt in both]
    rows[0] = (
        *rows[0][:3],
        f"<= {READY_MEDIAN_TARGET_MS:.0f} ms",
        verdict(ready_ms <= READY_MEDIAN_TARGET_MS),
    )
    idle_pct = idle["supervisor_pct"] + idle["zygote_pct"]
    rows += [
        (
            "idle supervisor + zygote CPU (one core)",
            f"{idle_pct:.2f} %",
            "",
            f"< {IDLE_CPU_TARGET_PCT:g} %",
            verdict(idle_pct < IDLE_CPU_TARGET_PCT),
        ),
        ("  of which: the zygote", f"{idle['zygote_pct']:.2f} %", "", "", ""),
        (f"idle workers CPU (sum of {SIZE})", f"{idle['children_pct']:.2f} %", "", "", ""),
    ]
    return rows


TABLE_HEAD = ("metric", "zygote (default)", "exec", "target", "result")


def report(
    res: dict[str, dict[str, list[float]]], idle: dict[str, float], args: argparse.Namespace
) -> dict[str, Any]:
    rows = rows_of(res, idle)
    mode = "quick" if args.quick else "full"
    z = res["zygote"]
    head = (
        f"{mode} run, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {args.load:.2f} at the start, {SIZE} x {WORKER}; "
        f"{len(z['ready'])} kills per method round-robin over the slots (stable_after_s={STABLE_AFTER_S:g}, "
        f"every killed child up >= {min(z['uptime'] + res['exec']['uptime']):.2f} s: restarts without "
        f"backoff), {len(z['reload'])} reloads; idle: the real `corral run`, {idle['window_s']:.1f} s window."
    )
    print(head)
    widths = [max(len(str(r[i])) for r in [TABLE_HEAD, *rows]) for i in range(len(TABLE_HEAD))]
    for row in [TABLE_HEAD, *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if idle["zygotes"] != 1:
        print(f"WARNING: {idle['zygotes']:.0f} zygote processes found under the idle supervisor, not 1")
    if idle["children_left"]:
        print(f"WARNING: {idle['children_left']:.0f} children of the supervisor outlived it (killed)")
    return {
        "mode": mode,
        "head": head,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg_1m": args.load,
        "stable_after_s": STABLE_AFTER_S,
        "samples_s": res,
        "idle": idle,
        "table": [dict(zip(TABLE_HEAD, r, strict=True)) for r in rows],
    }


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [f"`{command}`: {result['head']}", "", "| " + " | ".join(TABLE_HEAD) + " |"]
    lines.append("|---|" + "---:|" * 3 + "---|")
    for row in result["table"]:
        cells = [str(row[h]).replace("->", "→").strip() for h in TABLE_HEAD]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16 kills, 2 reloads, a 5 s idle window")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--update", metavar="DOC", type=Path, help="write the table into DOC (BENCHMARKS.md)")
    args = parser.parse_args()
    args.load = os.getloadavg()[0]  # other work on the machine skews every figure below
    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    n_kills, n_reloads, window_s = (16, 2, 5.0) if args.quick else (40, 5, 20.0)
    try:
        res = {m: asyncio.run(pool_phases(n_kills, n_reloads, m)) for m in ("zygote", "exec")}
        idle = idle_cpu(window_s, SIZE, WORKER)
    finally:
        leftovers = psutil.Process().children(recursive=True)
        for child in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        if leftovers:
            print(f"WARNING: killed {len(leftovers)} leftover child process(es)", file=sys.stderr)
    result = report(res, idle, args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.update:
        update_doc(
            args.update, "lifecycle", markdown(result, " ".join(["bench/lifecycle.py", *sys.argv[1:]]))
        )


if __name__ == "__main__":
    main()
