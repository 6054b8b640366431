"""Never twice at once, under a seeded sequence of faults against long jobs in a real ``corral run``.

Three queues feed a pool of 3, one handler each from ``tests/integration/workers/redis_handlers.py``:
``mark_sync`` (a thread sleeps), ``mark_async`` (the loop awaits) and ``mark_blocking`` (an async
handler that blocks its loop with ``time.sleep``). Each writes a start and an end mark per run (job,
attempt, pid, unix time) to a file that no Redis fault can lose. A seeded generator draws each step's
fault, applied while long jobs (5-8 s) run, the step's own job having just started:

- ``DEBUG SLEEP n`` or ``CLIENT PAUSE n ALL`` on the server the test started, ``n`` from 1 s to
  past the lease (``member_ttl_s`` = 4 s, so past the fence at 0.8 x 4 = 3.2 s: a holder fences
  itself and its jobs run again after the stall, never beside their first run);
- a blocked loop: a ``mark_blocking`` job holding its child's loop for 2 s (below hang detection,
  0.5 + 2.6 s, which itself ends a child before its lease could lapse);
- ``corral reload``, ``corral recycle SLOT`` (the slot of a child holding a running job), and a
  SIGKILL of a child holding a running job.

Every sequence has a stall past the lease. Then the pool runs undisturbed until every job ended,
and the marks are checked: OVERLAPS (two runs of one job under way at once; a run without an end
lasted until the supervisor saw its process exit) and LOSSES (a job that never ended, or was
dead-lettered) must be 0; every DUPLICATE (a job run again) must follow a run whose process was
killed or fenced itself; and no attempt is used up but by a kill (a fence or a stall is no death).

CI runs ``FAULT_STEPS`` steps (default 4) of seed ``FAULT_SEED`` (default 1). By hand:
``FAULT_STEPS=30 FAULT_SEED=7 .venv/bin/pytest -s -m chaos tests/chaos/test_long_job_faults.py``;
the figures are printed and written to ``long-faults-summary.json`` in the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from corral.contract import LEASE_FENCE_AT
from corral.workers.jobs.keys import Keys
from corral.workers.jobs.wire import encode_job
from corral.workers.ops.audit import audit
from tests.conftest import RedisServer
from tests.e2e.conftest import Corral, WaitTimeout, is_gone, wait_until
from tests.integration.conftest import H
from tests.integration.workers.test_never_twice import Run as Mark
from tests.integration.workers.test_never_twice import overlaps, runs
from tests.servers import async_client

STEPS = int(os.environ.get("FAULT_STEPS", "4"))
SEED = int(os.environ.get("FAULT_SEED", "1"))

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(90 + 20 * STEPS)]

POOL = "longjobs"
KEYS = Keys("corral")
WORKERS = 3
TTL_S = 4.0  # member_ttl_s
FENCE_S = LEASE_FENCE_AT * TTL_S  # a holder that could not renew this long ends itself
JOB_S = (5.0, 8.0)  # a long job's length
STALL_S = (1.0, TTL_S + 0.5)  # below the consumers' socket_timeout_s: their commands wait it out
BLOCK_S = 2.0  # below hang detection (heartbeat_interval_s + heartbeat_timeout_s = 3.1 s)
QUEUES = {"sync": "mark_sync", "async": "mark_async", "blocking": "mark_blocking"}
SETTLE_TIMEOUT_S = 45.0
Exits = dict[int, tuple[float, str]]  # pid -> (unix time its exit was seen, how it exited)
STOPPED = re.compile(r"^(\S+ \S+) \|.* slot \d+ pid (\d+): \w+ -> stopped(?: \((.*)\))?$")


def config_text(redis_url: str) -> str:
    queues = "".join(
        f"""
[[queues]]
names = ["long:{kind}"]
handler = "{H}:{handler}"
batch_size = 1
max_attempts = 50
block_s = 0.2
"""
        for kind, handler in QUEUES.items()
    )
    return f"""
[pool]
name = "{POOL}"
workers = {WORKERS}
ready_timeout_s = 20
graceful_timeout_s = 5
kill_timeout_s = 2
drain_timeout_s = 30
[restart]
backoff_initial_s = 0.05
backoff_max_s = 0.5
stable_after_s = 2
max_restarts = 100000
[health]
heartbeat_interval_s = 0.5
heartbeat_timeout_s = 2.6
[paths]
state_dir = "run"
log_dir = "logs"
[redis]
url = "{redis_url}"
member_ttl_s = {TTL_S}
socket_timeout_s = 10
{queues}"""


@dataclass
class Sequence:
    """What the faults did, for the checks and the summary."""

    sup: Corral
    server: RedisServer
    marks: Path
    rng: random.Random
    jobs: dict[int, str] = field(default_factory=dict)  # job number -> queue kind
    faults: Counter[str] = field(default_factory=Counter)
    steps: list[str] = field(default_factory=list)
    in_hand: list[int] = field(default_factory=list)  # runs under way when each fault struck
    killed: set[int] = field(default_factory=set)  # pids we SIGKILLed
    stalls: list[float] = field(default_factory=list)  # those that struck work in hand, in seconds

    def push(self, kind: str, seconds: float) -> int:
        n = len(self.jobs)
        self.jobs[n] = kind
        job = {"n": n, "s": round(seconds, 2), "out": str(self.marks)}
        client = self.server.client()
        try:
            client.lpush(f"long:{kind}", encode_job(job))
        finally:
            client.close()
        return n

    def started(self, n: int) -> Mark | None:
        return next((run for run in runs(self.marks) if run.n == str(n)), None)

    def running(self) -> list[Mark]:
        return [run for run in runs(self.marks) if run.end is None and not is_gone(run.pid)]

    def long_job(self) -> None:
        """A fresh long job, started: each fault strikes at least one job early in its run."""
        n = self.push(self.rng.choice(["sync", "async"]), self.rng.uniform(*JOB_S))
        wait_until(lambda: self.started(n), 20, what=f"job {n} started\n{self.sup.output()}")

    def fault(self, name: str, detail: str = "") -> None:
        self.faults[name] += 1
        self.in_hand.append(len(self.running()))
        self.steps.append(f"{name} {detail}".strip())

    # -- the faults ---------------------------------------------------------------------------

    def stall(self, seconds: float | None = None) -> None:
        seconds = round(seconds or self.rng.uniform(*STALL_S), 1)
        how = self.rng.choice(["DEBUG SLEEP", "CLIENT PAUSE"])
        self.fault(how, f"{seconds}s")
        if self.in_hand[-1]:
            self.stalls.append(seconds)
        admin = redis.Redis(unix_socket_path=str(self.server.socket_path), socket_timeout=seconds + 10)
        try:
            if how == "DEBUG SLEEP":
                admin.execute_command("DEBUG", "SLEEP", seconds)  # returns when the server wakes
            else:
                admin.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")
                time.sleep(seconds)  # the fault itself: the server answers nobody for this long
        finally:
            admin.close()

    def blocked_loop(self) -> None:
        n = self.push("blocking", BLOCK_S)
        wait_until(lambda: self.started(n), 20, what=f"blocking job {n} started")
        self.fault("blocked loop", f"{BLOCK_S}s")
        wait_until(lambda: (run := self.started(n)) and run.end, 20, what=f"blocking job {n} ended")

    def reload(self) -> None:
        before = self.ready_pids()
        self.fault("reload")
        done = self.sup.cli("reload", timeout_s=60)
        assert done.returncode == 0, done.stdout + done.stderr
        wait_until(lambda: not set(self.ready_pids().values()) & set(before.values()), 30, what="reloaded")

    def recycle(self) -> None:
        before = self.ready_pids()
        busy = {run.pid for run in self.running()}
        slot = next((s for s, pid in before.items() if pid in busy), self.rng.randrange(WORKERS))
        self.fault("recycle", f"slot {slot}")
        done = self.sup.cli("recycle", str(slot), timeout_s=60)
        assert done.returncode == 0, done.stdout + done.stderr
        wait_until(lambda: self.ready_pids().get(slot) not in (None, before.get(slot)), 30, what="recycled")

    def kill(self) -> None:
        victim = self.rng.choice(self.running()).pid  # long_job() made sure one runs
        self.fault("SIGKILL", f"pid {victim}")
        os.kill(victim, signal.SIGKILL)
        self.killed.add(victim)

    def step(self, fault: Callable[[], None] | None = None) -> None:
        self.long_job()
        actions = [self.stall, self.blocked_loop, self.reload, self.recycle, self.kill]
        (fault or self.rng.choices(actions, [4, 1, 1, 1, 2])[0])()
        wait_until(self.all_ready, 30, what=f"{WORKERS} ready slots\n{self.sup.output()}")
        time.sleep(self.rng.uniform(0.1, 1.0))  # the pool works on between faults (not a synchronisation)

    def ready_pids(self) -> dict[int, int]:
        """slot -> pid of its ready child (the draining old children of a reload left out)."""
        rows = (self.sup.status_fast() or {}).get("slots", [])
        return {row["slot"]: row["pid"] for row in rows if row["state"] == "ready" and row["pid"]}

    def all_ready(self) -> bool:
        return set(self.ready_pids()) == set(range(WORKERS))


def exits(sup: Corral) -> Exits:
    """pid -> (unix time the supervisor saw it exit, how it exited), from supervisor.log; that line
    is written before the supervisor has its work recovered."""
    found: Exits = {}
    for line in sup.log().splitlines():
        if match := STOPPED.match(line):
            at, pid, how = match.groups()
            found[int(pid)] = (datetime.strptime(at, "%Y-%m-%d %H:%M:%S.%f").timestamp(), how or "")
    return found


def settled(seq: Sequence, client: Any) -> bool:
    """Every job ended, every run without an end has its exit logged, nothing queued or held."""
    ended = {run.n for run in runs(seq.marks) if run.end is not None}
    seen = exits(seq.sup)
    if ended != {str(n) for n in seq.jobs} or any(
        run.end is None and run.pid not in seen for run in runs(seq.marks)
    ):
        return False
    held = [k for k in client.scan_iter(match="corral:*processing*") if client.llen(k)]
    return not held and not any(client.llen(f"long:{kind}") for kind in QUEUES)


def cause(run: Mark, seen: Exits, killed: set[int]) -> str:
    """How the process of a run ended: killed, fenced itself, or otherwise (how)."""
    how = seen.get(run.pid, (0.0, "still running"))[1]
    if run.pid in killed or how.startswith("killed by"):
        return "kill"
    return "fence" if "fenced" in how else f"other ({how})"


def by_job(found: list[Mark]) -> dict[str, list[Mark]]:
    jobs: dict[str, list[Mark]] = {}
    for run in found:
        jobs.setdefault(run.n, []).append(run)
    return jobs


def duplicates_by_cause(found: list[Mark], seen: Exits, killed: set[int]) -> Counter[str]:
    """Each run followed by another run of its job, by how its process ended: killed or fenced (its
    jobs recovered, as they should be), or otherwise (a job run again for no death: a bug)."""
    return Counter(cause(run, seen, killed) for runs_ in by_job(found).values() for run in runs_[:-1])


def attempts_without_a_death(found: list[Mark], seen: Exits, killed: set[int]) -> int:
    """Attempts used up beyond the kills before each run (a fence is no death: docs/design.md 5)."""
    extra = 0
    for runs_ in by_job(found).values():
        kills = 0
        for run in runs_:
            extra += max(0, run.attempt - 1 - kills)
            kills += cause(run, seen, killed) == "kill"
    return extra


@pytest.fixture
def stall_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The tests' standalone server (a short Unix socket path), with ``DEBUG`` allowed from local
    connections: started through a wrapper that adds ``--enable-debug-command local``."""
    workdir = tmp_path_factory.mktemp("stall")
    server = RedisServer(workdir)
    wrapper = workdir / "valkey-server"
    wrapper.write_text(f'#!/bin/sh\nexec "{server.binary}" "$@" --enable-debug-command local\n')
    wrapper.chmod(0o755)
    server.binary = str(wrapper)
    server.start()
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)


def test_long_jobs_through_stalls_reloads_and_kills_never_run_twice_at_once(
    launch_corral: Callable[[str], Corral], stall_server: RedisServer, tmp_path: Path
) -> None:
    started = time.monotonic()
    sup = launch_corral(config_text(stall_server.url))
    seq = Sequence(sup, stall_server, tmp_path / "marks", random.Random(SEED))
    wait_until(seq.all_ready, 30, what=f"{WORKERS} ready slots\n{sup.output()}")
    for step in range(STEPS):
        seq.step()
        if step == STEPS // 2 and max(seq.stalls, default=0) <= TTL_S:  # every sequence has one
            seq.step(lambda: seq.stall(STALL_S[1]))
    with contextlib.closing(stall_server.client()) as client:
        try:
            wait_until(lambda: settled(seq, client), SETTLE_TIMEOUT_S, interval_s=0.2, what="all ended")
            quiet = True
        except WaitTimeout:
            quiet = False
        seen = exits(sup)
        found = runs(seq.marks, {pid: at for pid, (at, _) in seen.items()})
        summary = summarize(seq, found, seen, client, time.monotonic() - started)
    print(json.dumps(summary, indent=2))
    (tmp_path / "long-faults-summary.json").write_text(json.dumps(summary, indent=2))

    twice = {n: job_runs for n, job_runs in by_job(found).items() if overlaps(job_runs)}
    assert summary["overlaps"] == 0, f"runs of one job at once: {twice}\n{summary}"
    assert summary["losses"] == 0 and quiet, f"jobs never ended: {summary}\n{sup.log()[-3000:]}"
    assert not [cause for cause in summary["duplicates by cause"] if cause.startswith("other")], summary
    assert summary["attempts used without a death"] == 0, f"a fence or a stall counted as a death: {summary}"
    assert min(seq.in_hand) > 0, f"a fault struck no long job: {seq.steps} {seq.in_hand}"
    assert summary["fenced children"] > 0, "a stall past the lease with work in hand fenced no child"
    report = audit_pool(stall_server.url)
    assert report.ok, f"stranded: {report.stranded}"
    sup.send(signal.SIGTERM)
    assert sup.wait_exit(30) == 0


def audit_pool(url: str) -> Any:
    async def check() -> Any:
        client = async_client(url)
        try:
            return await audit(client, KEYS, POOL, [])
        finally:
            await client.aclose()

    return asyncio.run(check())


def summarize(seq: Sequence, found: list[Mark], seen: Exits, client: Any, elapsed_s: float) -> dict[str, Any]:
    ended = {run.n for run in found if run.end is not None}
    dead = sum(client.llen(KEYS.dead(f"long:{kind}")) for kind in QUEUES)
    causes = duplicates_by_cause(found, seen, seq.killed)
    hows = [how for _, how in seen.values()]
    return {
        "seed": SEED,
        "steps": len(seq.steps),
        "sequence": seq.steps,
        "faults": dict(seq.faults),
        "stalls in hand (s)": seq.stalls,
        "stalls past the fence": sum(1 for s in seq.stalls if s > FENCE_S),
        "stalls past the lease": sum(1 for s in seq.stalls if s > TTL_S),
        "runs in hand at each fault": seq.in_hand,
        "jobs": len(seq.jobs),
        "runs": len(found),
        "overlaps": overlaps(found),
        "losses": len(seq.jobs) - len(ended & {str(n) for n in seq.jobs}) + dead,
        "duplicates": len(found) - len({run.n for run in found}),
        "duplicates by cause": dict(causes),
        "attempts": dict(Counter(run.attempt for run in found)),
        "attempts used without a death": attempts_without_a_death(found, seen, seq.killed),
        "fenced children": sum(1 for how in hows if "fenced" in how),
        "killed children": sum(1 for how in hows if how.startswith("killed by")),
        "elapsed_s": round(elapsed_s, 1),
    }
