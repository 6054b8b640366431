"""Chaos: a real ``corral run`` pool of 3 consuming one queue and one stream loses nothing while its
children are SIGKILLed every ~300 ms, Redis restarts once and a SIGHUP rolling reload runs.

20,000 queue jobs (bare JSON, LPUSH) and 20,000 stream entries (XADD) are produced progressively,
while the chaos runs. The handlers count every item they handle in a Redis hash (number -> times
handled). Once the chaos stops, the test waits (with a deadline) until every item was handled and
nothing is left in flight, then checks: nothing lost, nothing stuck, duplicates bounded by the
faults times the in-flight window. The figures are printed and written to ``chaos-summary.json``
in the test's tmp_path. ``CHAOS_SEED=<n>`` replays the victims and pauses of a run.

For a few seconds after the Redis restart nobody is killed: a consumer must get over the outage by
itself, so a job it took before the outage must not sit in its processing list until some later
kill or reload happens to recover it (a kill would hide exactly that bug).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import statistics
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from corral.workers.jobs.keys import Keys
from tests.chaos.handlers import ENTRIES_SEEN, JOBS_SEEN, WORKER_IDS
from tests.conftest import RedisServer
from tests.e2e.conftest import Corral, is_our_child_process

pytestmark = pytest.mark.chaos

QUEUE = "chaos:jobs"
STREAM = "chaos:events"
POOL = "chaos"  # the pool's name is also the stream's consumer group
KEYS = Keys("corral")
WORKERS = 3
ITEMS = 20_000  # queue jobs, and as many stream entries
BATCH = 25  # batch_size of both consumers: the in-flight window of one consumer
CHUNK = 250  # jobs (and entries) per producer round, one MULTI/EXEC
PRODUCE_S = 16.0  # production is spread over this long
KILL_PAUSE_S = (0.2, 0.4)  # a SIGKILL every ~300 ms
RESTART_AT_S = 5.0  # Redis restarts this long into the chaos
QUIET_S = (1.0, 4.0)  # no kills for 4 s after the restart; jobs in processing lists at +1 s ...
# ... must have left them at +4 s (a batch takes milliseconds)
RELOAD_AT_S = 10.0  # SIGHUP this long into the chaos
CHAOS_MAX_S = 40.0  # the producer must be done by then
DRAIN_TIMEOUT_S = 30.0  # after the chaos: everything handled, nothing in flight, by then
MIN_KILLS = 15
RECOVERED = re.compile(r"^(\S+ \S+) \|.* recovered (\S+) via slot (\d+) in (\d+) ms: (.*)$")


def config_text(redis_url: str) -> str:
    return f"""
[pool]
name = "{POOL}"
workers = {WORKERS}
ready_timeout_s = 20
graceful_timeout_s = 10
kill_timeout_s = 2

[restart]  # a slot killed again and again keeps coming back quickly and never goes fatal
backoff_initial_s = 0.05
backoff_max_s = 0.5
stable_after_s = 2
max_restarts = 100000
restart_window_s = 60

[health]
heartbeat_interval_s = 1
heartbeat_timeout_s = 15
monitor_interval_s = 0.5

[paths]
state_dir = "run"
log_dir = "logs"

[logging]
stderr = false

[redis]
url = "{redis_url}"
member_ttl_s = 21  # 0.8 x the lease above heartbeat_interval_s + heartbeat_timeout_s (the config reader checks)

[[queues]]
names = ["{QUEUE}"]
handler = "tests.chaos.handlers:count_job"
batch_size = {BATCH}
block_s = 0.5
max_attempts = 1000  # a job failing during the Redis restart is retried, never dead-lettered
backoff_initial_s = 0.1
backoff_max_s = 1.0

[[streams]]
stream = "{STREAM}"
handler = "tests.chaos.handlers:count_entry"
batch_size = {BATCH}
block_ms = 500
max_deliveries = 1000  # every kill mid-batch counts as a delivery: no dead letters from chaos
min_idle_ms = 5000
claim_interval_s = 1
"""


class Producer(threading.Thread):
    """LPUSHes ITEMS bare JSON jobs ``{"n": i}`` and XADDs ITEMS entries ``n=i``, CHUNK of each per
    round (one MULTI/EXEC), rounds spread over PRODUCE_S. A round is taken under ``gate``, which
    the Redis restart holds, so a restart never leaves a round half-applied or in doubt."""

    def __init__(self, server: RedisServer, gate: threading.Lock) -> None:
        super().__init__(name="chaos-producer", daemon=True)
        self.server = server
        self.gate = gate
        self.stop = threading.Event()
        self.produced = 0
        self.generation = 0  # bumped (under the gate) by each Redis restart
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._produce()
        except BaseException as exc:
            self.error = exc

    def _produce(self) -> None:
        client = self.server.client()
        seen_generation = 0
        rounds = ITEMS // CHUNK
        started = time.monotonic()
        try:
            for index in range(rounds):
                pause = started + index * PRODUCE_S / rounds - time.monotonic()
                if self.stop.wait(max(0.0, pause)):  # pacing; set: the test is over
                    return
                numbers = range(index * CHUNK, (index + 1) * CHUNK)
                with self.gate:
                    if self.generation != seen_generation:  # Redis restarted: drop dead connections
                        client.connection_pool.disconnect()
                        seen_generation = self.generation
                    pipe = client.pipeline(transaction=True)
                    pipe.lpush(QUEUE, *(json.dumps({"n": n}) for n in numbers))
                    for n in numbers:
                        pipe.xadd(STREAM, {"n": str(n)})
                    pipe.execute()
                self.produced += CHUNK
        finally:
            client.close()


def pick_victim(c: Corral, rng: random.Random) -> dict[str, Any] | None:
    """A random ready child of the supervisor (pid checked to be its child right before killing)."""
    status = c.status_fast()
    if status is None:
        return None
    ready = [s for s in status["slots"] if s["state"] == "ready" and s["pid"]]
    if not ready:
        return None
    row = rng.choice(ready)
    try:
        if psutil.Process(row["pid"]).ppid() != c.pid or not is_our_child_process(row["pid"]):
            return None
    except psutil.Error:
        return None
    return row


class Chaos:
    """The chaos loop (in the test's thread, while the producer runs): a SIGKILL every ~300 ms, one
    Redis restart at RESTART_AT_S followed by a quiet window (no kills) in which jobs must not
    stay in a live worker's processing list, and one SIGHUP at RELOAD_AT_S."""

    def __init__(
        self, c: Corral, server: RedisServer, producer: Producer, gate: threading.Lock, rng: random.Random
    ) -> None:
        self.c, self.server, self.producer, self.gate, self.rng = c, server, producer, gate, rng
        self.checker = server.client()
        self.kills: list[dict[str, Any]] = []
        self.restarts = self.reloads = 0
        self.restarted_at: float | None = None
        self.redis_down_s = 0.0
        self.before: dict[str, set[bytes]] | None = None  # processing lists QUIET_S[0] after it
        self.stuck: dict[str, int] | None = None  # jobs in the same list at QUIET_S[0] and [1]

    def run(self, started: float) -> None:
        while self.producer.is_alive() and time.monotonic() - started < CHAOS_MAX_S:
            assert self.c.running, f"the supervisor died during the chaos\n{self.c.output()}"
            elapsed = time.monotonic() - started
            if not self.restarts and elapsed >= RESTART_AT_S:
                self.restart_redis()
            if self.restarted_at is not None and self.stuck is None:
                self.quiet_window(time.monotonic() - self.restarted_at)
                time.sleep(0.1)  # the quiet window's pace
                continue
            if not self.reloads and elapsed >= RELOAD_AT_S:
                self.c.send(signal.SIGHUP)
                self.reloads += 1
            self.kill_one()
            time.sleep(self.rng.uniform(*KILL_PAUSE_S))  # the chaos' pace, not a synchronisation

    def restart_redis(self) -> None:
        with self.gate:  # no producer round is in flight while Redis is down
            began = time.monotonic()
            self.server.restart()  # SIGTERM (the AOF is flushed), started again on the same data
            self.redis_down_s = time.monotonic() - began
            self.producer.generation += 1
            self.checker.connection_pool.disconnect()
        self.restarts += 1
        self.restarted_at = time.monotonic()

    def quiet_window(self, since: float) -> None:
        if self.before is None and since >= QUIET_S[0]:
            self.before = processing_lists(self.checker)
        elif self.before is not None and since >= QUIET_S[1]:
            after = processing_lists(self.checker)
            both = {key: jobs & after.get(key, set()) for key, jobs in self.before.items()}
            dead = self.dead_worker_ids()  # a dead worker's list waits for its recovery, not for it
            self.stuck = {
                key: len(jobs)
                for key, jobs in both.items()
                if jobs and key.rpartition(":processing:")[2] not in dead
            }

    def dead_worker_ids(self) -> set[str]:
        known = {int(pid): wid.decode() for pid, wid in self.checker.hgetall(WORKER_IDS).items()}
        return {wid for pid, wid in known.items() if not is_our_child_process(pid)}

    def kill_one(self) -> None:
        victim = pick_victim(self.c, self.rng)
        if victim is not None:
            before = self.in_hand(victim["pid"])
            os.kill(victim["pid"], signal.SIGKILL)
            after = self.in_hand(victim["pid"])  # (read at once: before its recovery moves it)
            held = {kind: max(before[kind], after[kind]) for kind in before}
            self.kills.append({"at": time.time(), "slot": victim["slot"], "pid": victim["pid"], **held})
            self.c.child_pids.add(victim["pid"])

    def in_hand(self, pid: int) -> dict[str, int]:
        """What a worker holds: its processing list and its pending entries. What it had handled of
        that, and not acknowledged, is all a kill can make run twice."""
        worker_id = self.checker.hget(WORKER_IDS, str(pid))
        if worker_id is None:  # it has handled nothing yet: nothing of its can run twice
            return {"jobs": 0, "entries": 0}
        with self.checker.pipeline(transaction=False) as pipe:
            pipe.llen(KEYS.processing(QUEUE, worker_id.decode()))
            pipe.xpending_range(STREAM, POOL, "-", "+", BATCH * 4, consumername=worker_id.decode())
            jobs, entries = pipe.execute()
        return {"jobs": int(jobs), "entries": len(entries)}


def processing_lists(r: Any) -> dict[str, set[bytes]]:
    keys = r.scan_iter(match=KEYS.processing(QUEUE, "*"))
    return {key.decode(): set(r.lrange(key, 0, -1)) for key in keys}


def backlog(r: Any) -> dict[str, Any]:
    """What is not done yet: items never handled, jobs waiting or in flight, entries pending, and
    bookkeeping of dead workers not cleaned up (members, held-queue sets, recovery locks)."""
    groups = {g["name"].decode(): g for g in r.xinfo_groups(STREAM)} if r.exists(STREAM) else {}
    group = groups.get(POOL, {})
    seconds, micros = r.time()
    now_ms = seconds * 1000 + micros // 1000
    members = {m.decode() for m in r.zrange(KEYS.members(POOL), 0, -1)}
    held = {k.decode().rpartition(":held:")[2] for k in r.scan_iter(match=KEYS.held_queues(POOL, "*"))}
    return {
        "jobs_unseen": ITEMS - r.hlen(JOBS_SEEN),
        "entries_unseen": ITEMS - r.hlen(ENTRIES_SEEN),
        "queue_len": r.llen(QUEUE),
        "processing_lists": sorted(k.decode() for k in r.scan_iter(match=KEYS.processing(QUEUE, "*"))),
        "retry_set": r.zcard(KEYS.retry(QUEUE)),
        "xpending": r.xpending(STREAM, POOL)["pending"] if group else None,
        "group_lag": group.get("lag"),
        "members": len(members),
        "expired_members": len(r.zrangebyscore(KEYS.members(POOL), "-inf", now_ms)),
        "held_sets_of_non_members": sorted(held - members),
        "recovery_locks": sorted(k.decode() for k in r.scan_iter(match=KEYS.recovery_lock(POOL, "*"))),
    }


def is_done(left: dict[str, Any]) -> bool:
    return (
        left["jobs_unseen"] == 0
        and left["entries_unseen"] == 0
        and left["queue_len"] == 0
        and not left["processing_lists"]
        and left["retry_set"] == 0
        and left["xpending"] == 0
        and left["members"] == WORKERS
        and left["expired_members"] == 0
        and not left["held_sets_of_non_members"]
        and not left["recovery_locks"]
    )


def counts(r: Any, key: str) -> dict[int, int]:
    return {int(n): int(times) for n, times in r.hgetall(key).items()}


def spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "median": None, "p95": None, "max": None}
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered), 1),
        "p95": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 1),
        "max": round(ordered[-1], 1),
    }


def recoveries(log: str) -> dict[str, tuple[float, int, str]]:
    """worker id -> (log time as a unix timestamp, supervisor-measured ms, what was moved)."""
    found = {}
    for line in log.splitlines():
        match = RECOVERED.match(line)
        if match:
            stamp, worker_id, _slot, ms, moved = match.groups()
            at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()
            found[worker_id] = (at, int(ms), moved)
    return found


def worker_logs(c: Corral) -> str:
    return "\n".join(p.read_text("utf-8", "replace") for p in sorted(c.log_dir.glob("worker-*.log")))


@pytest.mark.timeout(175)
def test_no_job_or_entry_lost_under_kills_redis_restart_and_reload(
    redis_clean: RedisServer, launch_corral: Any, tmp_path: Path
) -> None:
    seed = int(os.environ.get("CHAOS_SEED", str(time.time_ns() % 2**32)))
    rng = random.Random(seed)
    begun = time.monotonic()
    c = launch_corral(config_text(redis_clean.url))
    c.wait_all_ready(WORKERS, timeout_s=30)

    gate = threading.Lock()
    producer = Producer(redis_clean, gate)
    chaos = Chaos(c, redis_clean, producer, gate, rng)
    started = time.monotonic()
    producer.start()
    try:
        chaos.run(started)
    finally:
        producer.stop.set()
        producer.join(10)
        chaos.checker.close()
    kills, restarts, reloads, stuck = chaos.kills, chaos.restarts, chaos.reloads, chaos.stuck
    chaos_s = time.monotonic() - started
    assert producer.error is None, f"the producer failed: {producer.error!r}"
    assert producer.produced == ITEMS, f"produced only {producer.produced} of {ITEMS} in {CHAOS_MAX_S}s"

    # -- drain: every item handled and nothing in flight, with a deadline --------------------------
    r = redis_clean.client()
    drained_at = time.monotonic() + DRAIN_TIMEOUT_S
    left = at_chaos_end = backlog(r)
    while not is_done(left) and time.monotonic() < drained_at and c.running:
        time.sleep(0.2)
        left = backlog(r)
    drain_s = time.monotonic() - started - chaos_s

    # -- figures ------------------------------------------------------------------------------
    jobs, entries = counts(r, JOBS_SEEN), counts(r, ENTRIES_SEEN)
    lost_jobs = sorted(set(range(ITEMS)) - set(jobs))
    lost_entries = sorted(set(range(ITEMS)) - set(entries))
    dup_jobs = sum(jobs.values()) - len(jobs)
    dup_entries = sum(entries.values()) - len(entries)
    # a kill can make run twice what its worker held (measured at the kill); a Redis restart, the one
    # handler per worker whose reply was lost; a graceful reload, nothing
    bound_jobs = sum(k["jobs"] for k in kills) + WORKERS * restarts
    bound_entries = sum(k["entries"] for k in kills) + WORKERS * restarts

    log = c.log()
    recovered = recoveries(log)
    worker_ids = {int(pid): wid.decode() for pid, wid in r.hgetall(WORKER_IDS).items()}
    kill_to_recovered, unrecovered = [], []
    for kill in kills:
        worker_id = worker_ids.get(kill["pid"])
        if worker_id is None:
            continue  # killed before it handled anything: nothing of its own was in flight
        if worker_id in recovered:
            kill_to_recovered.append((recovered[worker_id][0] - kill["at"]) * 1000)
        else:
            unrecovered.append(worker_id)
    moved = [ms for _at, ms, what in recovered.values() if what != "nothing in flight"]
    reload_outcome = (
        "finished"
        if "reload finished" in log
        else "stopped early"
        if "reload stopped early" in log
        else "not done"
    )
    logs = worker_logs(c)
    summary = {
        "seed": seed,
        "workers": WORKERS,
        "batch_size": BATCH,
        "jobs": ITEMS,
        "entries": ITEMS,
        "processed_jobs": len(jobs),
        "processed_entries": len(entries),
        "handled_jobs": sum(jobs.values()),
        "handled_entries": sum(entries.values()),
        "lost_jobs": len(lost_jobs),
        "lost_entries": len(lost_entries),
        "duplicate_jobs": dup_jobs,
        "duplicate_entries": dup_entries,
        "duplicate_bound_jobs": bound_jobs,
        "duplicate_bound_entries": bound_entries,
        "kills": len(kills),
        "redis_restarts": restarts,
        "reloads": reloads,
        "reload_outcome": reload_outcome,
        "recoveries_logged": len(recovered),
        "recovery_ms_after_exit_seen": spread([float(ms) for _at, ms, _what in recovered.values()]),
        "recovery_ms_with_work_moved": spread([float(ms) for ms in moved]),
        "kill_to_recovered_ms": spread(kill_to_recovered),
        "redis_down_s": round(chaos.redis_down_s, 2),
        "jobs_stuck_after_redis_restart": None if stuck is None else sum(stuck.values()),
        "jobs_put_back_after_interrupted_rounds": sum(
            int(n) for n in re.findall(r"(\d+) jobs of an interrupted round put back", logs)
        ),
        "idle_entries_claimed_rounds": logs.count("idle entries"),
        "consumer_errors_logged": logs.count("failed; next round in"),
        "chaos_s": round(chaos_s, 1),
        "drain_s": round(drain_s, 1),
        "total_s": round(time.monotonic() - begun, 1),
        "backlog_at_chaos_end": {k: at_chaos_end[k] for k in ("jobs_unseen", "entries_unseen")},
        "left_at_end": left,
    }
    outs = [tmp_path / "chaos-summary.json"]
    if os.environ.get("CHAOS_SUMMARY"):  # a copy where it outlives the tmp_path
        outs.append(Path(os.environ["CHAOS_SUMMARY"]))
    for out in outs:
        out.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    latency, seen = summary["kill_to_recovered_ms"], summary["recovery_ms_after_exit_seen"]
    print(
        f"\nCHAOS processed jobs={len(jobs)} entries={len(entries)} | lost jobs={len(lost_jobs)} "
        f"entries={len(lost_entries)} | duplicates jobs={dup_jobs} entries={dup_entries} "
        f"(bounds {bound_jobs}/{bound_entries}) | kills={len(kills)} redis_restarts={restarts} reloads={reloads} "
        f"({reload_outcome}) | redelivery latency kill->recovered median={latency['median']} "
        f"p95={latency['p95']} max={latency['max']} ms, exit seen->recovered median={seen['median']} "
        f"p95={seen['p95']} max={seen['max']} ms | chaos={chaos_s:.1f}s drain={drain_s:.1f}s "
        f"seed={seed}\nsummary: {' '.join(map(str, outs))}"
    )

    # -- assertions ---------------------------------------------------------------------------
    tail = "\n".join(log.splitlines()[-40:])
    context = f"seed {seed}; summary {json.dumps(summary)}\n--- supervisor.log (tail) ---\n{tail}"
    assert c.running, f"the supervisor exited\n{context}"
    assert len(kills) >= MIN_KILLS and restarts == 1 and reloads == 1, f"too little chaos\n{context}"
    assert "reload: re-reading" in log, f"SIGHUP did not start a reload\n{context}"
    assert "-> stopping (reload: draining)" in log, f"the reload replaced no child\n{context}"
    moved = [what for _at, _ms, what in recovered.values() if what != "nothing in flight"]
    assert moved, f"no recovery moved anything: the kills never hit work in hand\n{context}"
    assert not lost_jobs, f"{len(lost_jobs)} jobs never handled, e.g. {lost_jobs[:10]}\n{context}"
    assert not lost_entries, f"{len(lost_entries)} entries never handled, e.g. {lost_entries[:10]}\n{context}"
    assert stuck == {}, (
        f"jobs stuck in live workers' processing lists after Redis restarted: {stuck}\n{context}"
    )
    assert left["queue_len"] == 0, f"jobs left in the queue\n{context}"
    assert not left["processing_lists"], f"jobs stuck in processing lists\n{context}"
    assert left["retry_set"] == 0, f"jobs still waiting to retry\n{context}"
    assert left["xpending"] == 0, f"stream entries still pending (unacknowledged)\n{context}"
    assert r.llen(KEYS.dead(QUEUE)) == 0, f"jobs dead-lettered\n{context}"
    assert r.xlen(KEYS.stream_dead(STREAM)) == 0, f"entries dead-lettered\n{context}"
    assert r.xlen(STREAM) == ITEMS, f"the stream lost entries: XLEN {r.xlen(STREAM)}\n{context}"
    assert dup_jobs <= bound_jobs, (
        f"{dup_jobs} duplicate jobs, more than the kills held ({bound_jobs})\n{context}"
    )
    assert dup_entries <= bound_entries, f"{dup_entries} duplicate entries, bound {bound_entries}\n{context}"
    assert not unrecovered, f"killed workers never recovered: {unrecovered}\n{context}"
    assert left["members"] == WORKERS and left["expired_members"] == 0, f"dead members left\n{context}"
    assert not left["held_sets_of_non_members"], f"held-queue sets of dead workers left\n{context}"
    assert not left["recovery_locks"], f"recovery locks left behind\n{context}"
    assert "the work loop crashed" not in logs, f"a child's work loop crashed\n{context}"
    c.wait_all_ready(WORKERS, timeout_s=20)  # the pool is whole again, no slot went fatal
    status = c.status()  # the real `corral status --json`
    assert [row["state"] for row in status["slots"]] == ["ready"] * WORKERS, f"{status}\n{context}"
    assert sum(row["restarts"] for row in status["slots"]) > 0, f"no restart counted: {status}"
