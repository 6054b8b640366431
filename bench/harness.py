"""How ``bench/throughput.py`` watches a run: the counter polled every 2 ms, the CPU time of the
processes, their liveness, and their teardown by pid (``stop_pool`` for a corral pool); ``measured``
turns a watch into a ``Result``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psutil
import redis

from bench.handlers import COUNTER
from bench.report import Result

POLL_S = 0.002


@dataclass
class Watch:
    first_t: float | None = None  # perf_counter of the first non-zero reading
    first_count: int = 0
    end_t: float = 0.0
    count: int = 0
    cpu_first: tuple[float, float] = (0.0, 0.0)  # CPU seconds (workers, server) at the first reading
    cpu_end: tuple[float, float] = (0.0, 0.0)


def cpu_seconds(pids: list[int]) -> float:
    """User+system CPU of these processes, their live descendants and their reaped children."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            top = psutil.Process(pid)
            times = top.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
            for child in top.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += sum(child.cpu_times()[:2])
    return total


def watch(
    client: redis.Redis,
    n: int,
    *,
    limits_s: tuple[float, float],
    workers: list[int],
    server: int,
    check: Callable[[], None],
) -> Watch:
    """Poll the counter until it reaches ``n``; ``limits_s``: at most this long for the first job to
    complete, then at most this long from there. ``check`` raises if a worker died. The CPU used by
    the ``workers`` (pids) and the ``server`` is sampled at the first reading and the last."""
    seen, started = Watch(), time.perf_counter()
    startup_s, deadline_s = limits_s
    while True:
        seen.count, seen.end_t = int(client.get(COUNTER) or 0), time.perf_counter()
        if seen.count and seen.first_t is None:
            seen.first_t, seen.first_count = seen.end_t, seen.count
            seen.cpu_first = (cpu_seconds(workers), cpu_seconds([server]))
        done = seen.count >= n
        if done or (seen.first_t is not None and seen.end_t - seen.first_t > deadline_s):
            seen.cpu_end = (cpu_seconds(workers), cpu_seconds([server]))
            return seen
        if seen.first_t is None and seen.end_t - started > startup_s:
            raise TimeoutError(f"no job done within {startup_s:g}s")
        check()
        time.sleep(POLL_S)


def check_alive(procs: list[subprocess.Popen[bytes]], what: str) -> Callable[[], None]:
    def check() -> None:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{what}: worker pid {dead[0].pid} exited with code {dead[0].returncode}")

    return check


def wait_until(done: Callable[[], bool], timeout_s: float, what: str, check: Callable[[], None]) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:g}s")
        time.sleep(0.01)


def stop_processes(procs: list[subprocess.Popen[bytes]], group: bool = False) -> None:
    """SIGTERM each process (its whole process group: it was started in a session of its own), then
    SIGKILL whatever is left of it and its descendants after 10 s; by pid, checked by psutil."""
    family: list[psutil.Process] = []
    for proc in procs:
        if proc.poll() is not None:
            continue
        with contextlib.suppress(psutil.NoSuchProcess):
            family += [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.terminate()
    _, alive = psutil.wait_procs(family, timeout=10.0)
    for leftover in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()
    psutil.wait_procs(alive, timeout=5.0)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5.0)


def measured(result: Result, seen: Watch, spawned_at: float) -> Result:
    """Whole run: from ``spawned_at`` (the workers started; every job was enqueued before) to the
    last job; steady: from the first completed job on; start-up: the span between the two."""
    if seen.first_t is None:
        result.error = "no job done"
        return result
    result.done, result.seconds = seen.count, seen.end_t - spawned_at
    result.startup_s = seen.first_t - spawned_at
    result.steady_done, result.steady_s = seen.count - seen.first_count, seen.end_t - seen.first_t
    if seen.count < result.n and result.error is None:
        result.error = f"DNF: {seen.count:,} of {result.n:,} done at the deadline"
    jobs = seen.count - seen.first_count  # CPU is sampled from the first reading on
    if jobs > 0:
        result.worker_cpu_us = (seen.cpu_end[0] - seen.cpu_first[0]) / jobs * 1e6
        result.server_cpu_us = (seen.cpu_end[1] - seen.cpu_first[1]) / jobs * 1e6
    return result


async def stop_pool(pool: Any, conns: Iterable[Any]) -> None:
    """A graceful stop of a corral ``WorkerPool`` (30 s at most), then SIGKILL through its pidfd for
    any child of ``conns`` the stop ladder missed."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(pool.stop(graceful_timeout_s=5.0), 30.0)
    for conn in conns:
        if conn.alive:
            conn.process.signal(signal.SIGKILL)
            await conn.process.wait(5.0)
