"""Random fault sequences against a real pool: whatever happens, every job and entry is handled or
dead-lettered, nothing is stranded, and duplicates come only from work in hand at a fault.

A seeded generator draws a sequence of steps: produce (jobs, some of them poison, deadly or
stalling, and entries on a partitioned stream), SIGKILL a child, SIGKILL the supervisor and start a
new one, stop gracefully and start again, reload with one more partition, and a Redis fault: a
restart of a standalone server, a failover (the primary holding the queue SIGKILLed, its replica
promoted, the old one back as a replica) on a Valkey Cluster or under Sentinel; there producers,
takes and acks, and the handlers' records WAIT for a replica (``wait_replicas = 1``). A
``stall`` job blocks its child's event loop for 2.5 s (its lease, renewed by a thread, holds: no
peer runs its work meanwhile); a ``deadly`` job SIGKILLs whoever handles it; a ``poison`` job always fails. After the
sequence the pool runs undisturbed until quiet, then the test checks every item, the audit
(``corral.workers.ops.audit``: nothing stranded) and the duplicates against a bound computed from the
faults that happened.

CI runs a short sequence (``FAULT_STEPS`` steps, default 10, seed ``FAULT_SEED``, default 1). By
hand: ``FAULT_STEPS=80 FAULT_SEED=7 .venv/bin/pytest -s -m chaos tests/chaos/test_fault_sequences.py``;
the figures are printed and written to ``faults-summary.json`` in the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ResponseError

from corral.workers.jobs.keys import Keys
from corral.workers.jobs.wire import encode_job
from corral.workers.ops.audit import audit
from corral.workers.producer import publish, shard_name
from tests.chaos.fault_handlers import ENTRIES_SEEN, JOBS_SEEN
from tests.conftest import TOPOLOGIES, RedisServer
from tests.e2e.conftest import Corral, WaitTimeout, run_cli, wait_until
from tests.servers import async_client

pytestmark = pytest.mark.chaos

POOL = "faults"
QUEUE = "faults:jobs"
STREAM = "faults:events"
KEYS = Keys("corral")
WORKERS = 2
BATCH = 10  # batch_size of the queue and the stream: one consumer's work in hand
MAX_ATTEMPTS = 3
STEPS = int(os.environ.get("FAULT_STEPS", "10"))
SEED = int(os.environ.get("FAULT_SEED", "1"))
DRAIN_TIMEOUT_S = 60.0


def config_text(redis_url: str, partitions: int, wait_replicas: int = 0) -> str:
    return f"""
[pool]
name = "{POOL}"
workers = {WORKERS}
ready_timeout_s = 20
graceful_timeout_s = 5
kill_timeout_s = 2
[restart]
backoff_initial_s = 0.05
backoff_max_s = 0.5
stable_after_s = 2
max_restarts = 100000
[health]
heartbeat_interval_s = 0.5
heartbeat_timeout_s = 4
[paths]
state_dir = "run"
log_dir = "logs"
[redis]
url = "{redis_url}"
member_ttl_s = 6
wait_replicas = {wait_replicas}
[[queues]]
names = ["{QUEUE}"]
handler = "tests.chaos.fault_handlers:handle_job"
batch_size = {BATCH}
max_attempts = {MAX_ATTEMPTS}
backoff_initial_s = 0.05
backoff_max_s = 0.2
block_s = 0.2
[[streams]]
stream = "{STREAM}"
handler = "tests.chaos.fault_handlers:handle_entry"
partitions = {partitions}
batch_size = {BATCH}
block_ms = 200
"""


@dataclass
class Backend:
    """Where the pool's Redis lives: its URL, a client, and the fault it suffers."""

    url: str
    client: Callable[[], Any]
    fault: Callable[[], None]
    fault_name: str
    replicated: bool  # a failover can drop writes no replica saw: WAIT for one


def failover(topology: Any) -> None:
    """SIGKILL the primary holding the queue; wait for its replica to take over, then bring it back
    (as a replica of the new primary) before the sequence goes on."""
    node = topology.node_of(QUEUE) if topology.kind == "cluster" else topology.primary()
    node.kill()
    topology.wait_failover(node)
    topology.heal()


def wait_for_replica(client: Any, pipe: Any, keys: list[str]) -> None:
    """Add to ``pipe`` a WAIT for one replica after its writes to ``keys`` (per node on a cluster)."""
    if hasattr(client, "get_node_from_key"):
        for node in {
            client.get_node_from_key(key).name: client.get_node_from_key(key) for key in keys
        }.values():
            pipe.execute_command("WAIT", 1, 5000, target_nodes=node)
    else:
        pipe.execute_command("WAIT", 1, 5000)


@dataclass
class Run:
    """What the sequence did, for the checks and the summary."""

    server: Backend
    sup: Corral
    launch: Callable[[str], Corral]
    rng: random.Random
    partitions: int = 2
    jobs: dict[int, str] = field(default_factory=dict)  # job number -> kind
    entries: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    steps: list[str] = field(default_factory=list)

    def config(self) -> str:
        return config_text(self.server.url, self.partitions, int(self.server.replicated))

    def produce(self) -> None:
        client = self.server.client()
        with client.pipeline(transaction=False) as pipe:
            for _ in range(self.rng.randint(20, 60)):
                n = len(self.jobs)
                kind = self.rng.choices(["ok", "poison", "deadly", "stall"], [94, 3, 2, 1])[0]
                self.jobs[n] = kind
                pipe.lpush(QUEUE, encode_job({"n": n, "kind": kind}))
            for _ in range(self.rng.randint(20, 60)):
                n = self.entries
                self.entries += 1
                publish(pipe, STREAM, {"n": str(n)}, key=f"k{n % 17}", partitions=self.partitions)
            if self.server.replicated:
                shards = [shard_name(STREAM, s) for s in range(self.partitions)]
                wait_for_replica(client, pipe, [QUEUE, *shards])
            pipe.execute()

    def kill_child(self) -> None:
        status = self.sup.status_fast()
        pids = [row["pid"] for row in (status or {}).get("slots", []) if row["pid"]]
        if pids:
            try:
                os.kill(self.rng.choice(pids), signal.SIGKILL)
            except ProcessLookupError:  # it died a moment ago (a deadly job): no fault of ours
                return
            self.faults["child SIGKILL"] += 1

    def kill_supervisor(self) -> None:
        os.kill(self.sup.pid, signal.SIGKILL)  # its children follow (PR_SET_PDEATHSIG, channel EOF)
        self.sup.wait_exit(10)
        self.faults["supervisor SIGKILL"] += 1
        self.restart()

    def stop_and_start(self) -> None:
        done = run_cli("stop", "-c", str(self.sup.config), timeout_s=60)
        assert done.returncode == 0, done.stderr
        self.sup.wait_exit(30)
        self.faults["graceful restart"] += 1
        self.restart()

    def restart(self) -> None:
        self.sup = self.launch(self.config())  # (a new folder: the Redis is the shared state)
        self.sup.wait_all_ready(WORKERS, timeout_s=30)

    def reload_partitions(self) -> None:
        self.partitions += 1  # only up: entries already in a shard that disappears would wait forever
        self.sup.config.write_text(self.config())
        self.sup.send(signal.SIGHUP)
        self.faults["reload"] += 1

    def redis_fault(self) -> None:
        self.server.fault()
        self.faults[self.server.fault_name] += 1

    def step(self) -> None:
        actions = [self.produce, self.kill_child, self.kill_supervisor, self.stop_and_start,
                   self.reload_partitions, self.redis_fault]  # fmt: skip
        weights = [8, 4, 1, 1, 1, 1]
        action = self.rng.choices(actions, weights)[0]
        self.steps.append(action.__name__)
        action()
        time.sleep(self.rng.uniform(0.1, 0.6))  # the pool works on between faults (not a synchronisation)


def settled(client: Any, run: Run) -> dict[str, Any] | None:
    """The outcome once quiet: every item accounted for, nothing in flight; None until then."""
    seen_jobs = {int(k): int(v) for k, v in client.hgetall(JOBS_SEEN).items()}
    dead_jobs = {
        json.loads(json.loads(r)["job"])["data"]["n"] for r in client.lrange(KEYS.dead(QUEUE), 0, -1)
    }
    seen_entries = {int(k): int(v) for k, v in client.hgetall(ENTRIES_SEEN).items()}
    dead_entries = {
        int(f[b"n"])
        for s in range(run.partitions)
        for _, f in client.xrange(KEYS.stream_dead(shard_name(STREAM, s)))
    }
    missing_jobs = set(run.jobs) - set(seen_jobs) - dead_jobs
    missing_entries = set(range(run.entries)) - set(seen_entries) - dead_entries
    busy = (
        client.llen(QUEUE)
        or client.zcard(KEYS.retry(QUEUE))
        or any(_pending(client, shard_name(STREAM, s)) for s in range(run.partitions))
    )
    if missing_jobs or missing_entries or busy:
        return None
    return {
        "seen_jobs": seen_jobs,
        "dead_jobs": dead_jobs,
        "seen_entries": seen_entries,
        "dead_entries": dead_entries,
    }


def diagnose(client: Any, run: Run) -> dict[str, Any]:
    seen_jobs = {int(k) for k in client.hkeys(JOBS_SEEN)}
    dead = {json.loads(json.loads(r)["job"])["data"]["n"] for r in client.lrange(KEYS.dead(QUEUE), 0, -1)}
    seen_entries = {int(k) for k in client.hkeys(ENTRIES_SEEN)}
    held = {k.decode(): client.llen(k) for k in client.scan_iter(match="corral:*processing*")}
    return {
        "missing jobs": {n: run.jobs[n] for n in sorted(set(run.jobs) - seen_jobs - dead)},
        "missing entries": sorted(set(range(run.entries)) - seen_entries)[:20],
        "queue": client.llen(QUEUE),
        "retry": client.zcard(KEYS.retry(QUEUE)),
        "pending": {s: _pending(client, shard_name(STREAM, s)) for s in range(run.partitions)},
        "held": {k: v for k, v in held.items() if v},
        "members": client.zrange(KEYS.members(POOL), 0, -1, withscores=True),
        "time": client.time(),
        "steps": run.steps,
        "log": run.sup.log()[-3000:],
        "workers": [
            line
            for slot in range(WORKERS)
            for line in run.sup.log(str(slot)).splitlines()
            if "WARNING" in line or "ERROR" in line
        ][-40:],
    }


def _pending(client: Any, shard: str) -> int:
    try:
        return int(client.xpending(shard, POOL)["pending"])
    except ResponseError:  # no group yet (a shard added by a reload, not assigned yet)
        return 1 if client.exists(shard) else 0


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    topology = request.param
    if topology == "standalone":
        server = RedisServer(Path(tmp_path / "redis"))
        server.workdir.mkdir()
        server.start()
        try:  # SIGTERM: the append-only file is flushed, started again on it
            yield Backend(server.url, server.client, server.restart, "Redis restart", replicated=False)
        finally:
            server.stop(signal.SIGKILL)
        return
    servers = request.getfixturevalue(f"valkey_{topology}")
    servers.heal()
    servers.flushall()
    yield Backend(
        servers.url, servers.client, lambda: failover(servers), f"{topology} failover", replicated=True
    )
    servers.heal()


@pytest.mark.parametrize("backend", TOPOLOGIES, indirect=True)
def test_random_fault_sequences_lose_and_strand_nothing(
    launch_corral: Callable[[str], Corral], backend: Backend, tmp_path: Path
) -> None:
    run = Run(backend, launch_corral(config_text(backend.url, 2, int(backend.replicated))), launch_corral,
              random.Random(SEED))  # fmt: skip
    run.sup.wait_all_ready(WORKERS, timeout_s=30)
    started = time.monotonic()
    for step in range(STEPS):
        run.step()
        if step == STEPS // 2 and not run.faults[backend.fault_name]:
            run.redis_fault()  # every sequence has one (a restart, a failover), wherever it falls
    run.produce()  # the last work arrives after the last fault
    client = backend.client()
    try:
        outcome = wait_until(lambda: settled(client, run), DRAIN_TIMEOUT_S, interval_s=0.2, what="quiet")
    except WaitTimeout:
        pytest.fail(f"not quiet after {DRAIN_TIMEOUT_S:g}s: {diagnose(client, run)}")
    check(run, outcome, client)
    summary = summarize(run, outcome, time.monotonic() - started)
    print(json.dumps(summary, indent=2))
    (tmp_path / "faults-summary.json").write_text(json.dumps(summary, indent=2))
    run.sup.send(signal.SIGTERM)
    assert run.sup.wait_exit(30) == 0


def check(run: Run, outcome: dict[str, Any], client: Any) -> None:
    kinds = run.jobs
    for n, kind in kinds.items():
        if kind in ("poison", "deadly"):
            assert n in outcome["dead_jobs"] and n not in outcome["seen_jobs"], f"{kind} job {n}"
    report = asyncio.run(_audit(run))
    assert report.ok, f"stranded after quiescence: {report.stranded}"
    held = {k.decode(): client.lrange(k, 0, -1) for k in client.scan_iter(match="corral:*processing*")}
    held = {k: v for k, v in held.items() if v}
    assert not held, (
        f"still held after quiescence: {held}; members {client.zrange(KEYS.members(POOL), 0, -1, withscores=True)}; now {client.time()}"
    )
    bound = duplicate_bound(run)
    duplicates = sum(c - 1 for c in outcome["seen_jobs"].values()) + sum(
        c - 1 for c in outcome["seen_entries"].values()
    )
    assert duplicates <= bound, f"{duplicates} duplicates, more than the faults can explain ({bound})"


async def _audit(run: Run) -> Any:
    redis = async_client(run.server.url)
    try:
        streams = [(shard_name(STREAM, s), POOL) for s in range(run.partitions)]
        return await audit(redis, KEYS, POOL, streams)
    finally:
        await redis.aclose()


def duplicate_bound(run: Run) -> int:
    """What the faults can cause: a killed child re-runs what it had in hand (one queue batch and one
    stream batch); a supervisor kill or a Redis restart, every child's. A stalled loop causes none:
    its lease holds, so nobody takes its work over while it runs."""
    per_child = 2 * BATCH
    deadly = sum(MAX_ATTEMPTS for kind in run.jobs.values() if kind == "deadly")
    hits = run.faults["child SIGKILL"] + deadly
    hits += WORKERS * (
        run.faults["supervisor SIGKILL"] + run.faults[run.server.fault_name] + run.faults["reload"]
    )
    return hits * per_child


def summarize(run: Run, outcome: dict[str, Any], elapsed_s: float) -> dict[str, Any]:
    jobs, entries = outcome["seen_jobs"], outcome["seen_entries"]
    return {
        "redis": run.server.fault_name.split()[0],
        "seed": SEED,
        "steps": len(run.steps),
        "sequence": run.steps,
        "faults": dict(run.faults),
        "jobs": len(run.jobs),
        "job kinds": dict(Counter(run.jobs.values())),
        "entries": run.entries,
        "partitions at the end": run.partitions,
        "lost": 0,
        "stranded": 0,
        "dead-lettered jobs": len(outcome["dead_jobs"]),
        "ok jobs dead-lettered": sum(1 for n in outcome["dead_jobs"] if run.jobs[n] in ("ok", "stall")),
        "dead-lettered entries": len(outcome["dead_entries"]),
        "duplicate jobs": sum(c - 1 for c in jobs.values()),
        "duplicate entries": sum(c - 1 for c in entries.values()),
        "duplicate bound": duplicate_bound(run),
        "elapsed_s": round(elapsed_s, 1),
    }
