"""A mutation run over the delivery code: each curated mutation (a bug a real change could make) is
applied alone, the tests that guard that behaviour run, and they must fail. Run by hand:

    .venv/bin/python tests/mutations.py            # every mutation
    .venv/bin/python tests/mutations.py revoke     # those whose name contains "revoke"

It prints one line per mutation (caught or SURVIVED, with the time) and exits 1 if any survived.
The source is restored after each mutation, whatever happens.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EDGES = "tests/integration/workers/test_delivery_edges.py"
TWICE = "tests/integration/workers/test_never_twice.py"
LONG_FAULTS = "tests/chaos/test_long_job_faults.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation(
        "queues: skip the acknowledgement",
        "workers/consumers/settlement.py",
        "            removed = [await self._ack(keys=keys, args=raws)]",
        "            removed = [len(raws)]",
        ("tests/integration/workers/test_queues.py",),
    ),
    Mutation(
        "queues: skip the put-back of an interrupted round",
        "workers/consumers/queues.py",
        "moved = int(await self._move_all(keys=[self._processing(queue), queue]))",
        "moved = 0",
        (EDGES, "tests/integration/workers/test_queues.py"),
    ),
    Mutation(
        "queues: recover nothing of a dead worker",
        "workers/consumers/settlement.py",
        "                await self._recover(keys=keys, args=[dead_worker_id, int(died)], client=pipe)\n"
        "                [count] = await durable.execute(pipe, [queue])\n",
        "                count = 0\n",
        ("tests/integration/workers/test_queues.py", EDGES),
    ),
    Mutation(
        "streams: handle every entry twice",
        "workers/consumers/streams.py",
        "            await self.call(message)\n",
        "            await self.call(message)\n            await self.call(message)\n",
        ("tests/integration/workers/test_streams.py", EDGES),
    ),
    Mutation(
        "streams: recover() moves nothing",
        "workers/consumers/streams.py",
        "            return await self._claim_all_of(dead_consumer)",
        "            return 0",
        ("tests/integration/workers/test_streams.py",),
    ),
    Mutation(
        "partitions: revoke without waiting for the round in progress",
        "workers/consumers/partitioned.py",
        "        async with self.lock:  # waits for the round in progress: acknowledged before we answer",
        "        if True:",
        (EDGES,),
    ),
    Mutation(
        "partitions: a new owner never drains the previous owner's pending entries",
        "workers/consumers/partitioned.py",
        "            self.backlog.update(shards)",
        "            pass",
        (EDGES, "tests/apps/test_matchmaker.py"),
    ),
    Mutation(
        "lease: renewed once, by no thread (a stopping child or a blocked loop lets it lapse)",
        "workers/lease.py",
        '        for target, name in ((self._renewing, "lease-renew"), (self._fencing, "lease-fence")):\n',
        "        for target, name in ():\n",
        (TWICE,),
    ),
    Mutation(
        "lease: a worker that cannot renew never fences itself",
        "workers/lease.py",
        "            elif self.holding():",
        "            elif False:",
        (TWICE,),
    ),
    Mutation(
        "lease: the fence logs but never ends the process (long jobs through seeded faults)",
        "workers/lease.py",
        "                self.on_fence(reason)\n",
        "",
        (LONG_FAULTS,),
    ),
    Mutation(
        "lease: takes are sent without a valid lease",
        "workers/lease.py",
        "        if not self.lease.valid():  # Redis away or stalled for us: nothing new until renewed",
        "        if False:",
        (TWICE,),
    ),
    Mutation(
        "membership: a worker back from an outage sweeps at once",
        "workers/consumers/membership.py",
        "        if self.lease.steady_s() < self.lease.ttl_s:",
        "        if False:",
        (TWICE,),
    ),
    Mutation(
        "recovery: every exit counts a death against the jobs held",
        "supervisor/recovery.py",
        "    if code in (ExitCode.OK, ExitCode.FENCED, ExitCode.ORPHANED):\n        return False\n",
        "",
        (TWICE,),
    ),
    Mutation(
        "queues: a handler's own Redis error interrupts the round instead of failing the job",
        "workers/consumers/queues.py",
        "        except Exception as exc:  # the handler's failure, whatever it raised (its own Redis errors too)\n",
        "        except __import__('corral.workers.consumers.outages').workers.consumers.client.REDIS_DOWN:\n"
        "            raise\n"
        "        except Exception as exc:  # the handler's failure, whatever it raised (its own Redis errors too)\n",
        (TWICE,),
    ),
    Mutation(
        "lanes: a round interrupted by Redis cancels the lanes still handling their jobs",
        "workers/consumers/lanes.py",
        "            except Exception as exc:\n                self.failed.append(exc)\n                return\n",
        "            except Exception:\n                raise\n",
        (TWICE,),
    ),
    Mutation(
        "pool: a reload's old child gets the stop deadline instead of the drain time",
        "supervisor/pool.py",
        "graceful_timeout_s=self.settings.drain_s)",
        "graceful_timeout_s=self.settings.graceful_timeout_s)",
        (TWICE,),
    ),
    Mutation(
        "pool: a reload replaces no child",
        "supervisor/pool.py",
        'if not await self._run_slot_task(found, self._replace(found, "reload")):',
        "if False:",
        ("tests/e2e/test_partitions.py", "tests/apps/test_matchmaker.py"),
    ),
)


REFILL = "tests/integration/workers/test_refill_and_checkpoints.py"
MUTATIONS += (
    Mutation(
        "refill: a lane that frees waits for the round's slowest job",
        "workers/consumers/queues.py",
        "refill = None if suspects or self.spec.batch else self._refill",
        "refill = None",
        (REFILL,),
    ),
    Mutation(
        "refill: a refill that fails cancels the lanes still handling their jobs",
        "workers/consumers/lanes.py",
        "            except Exception as exc:  # Redis went away: the lanes in hand finish, nothing more\n"
        "                self.failed.append(exc)\n                return None\n",
        "            except Exception:\n                raise\n",
        ("tests/unit/workers/test_lanes.py",),
    ),
    Mutation(
        "membership: a sweep counts a death against what it recovers",
        "workers/consumers/membership.py",
        "await self.recover(member, died=False)",
        "await self.recover(member, died=True)",
        (LONG_FAULTS,),
    ),
    Mutation(
        "manager: a burst run goes on after an empty round",
        "workers/manager.py",
        "            if not count and burst:\n                return\n",
        "",
        ("tests/unit/workers/test_manager.py",),
    ),
    Mutation(
        "health: ready whatever Redis says",
        "supervisor/health.py",
        "    problem = await redis_problem(redis_url)\n",
        "    problem = None\n",
        ("tests/e2e/test_health.py",),
    ),
    Mutation(
        "health: a fatal slot is ready",
        "supervisor/health.py",
        'if row["state"] not in ("ready", "draining"):',
        'if row["state"] not in ("ready", "draining", "fatal"):',
        ("tests/e2e/test_health.py",),
    ),
    Mutation(
        "refill: every take asks for a whole batch",
        "workers/consumers/lanes.py",
        "        return max(1, min(self.batch_size, free + extra))",
        "        return self.batch_size",
        (REFILL,),
    ),
    Mutation(
        "refill: a stopping worker goes on taking",
        "workers/consumers/queues.py",
        "        if not self.may_take():\n            return []\n        await self._ack()\n        await self._refresh",
        "        await self._ack()\n        await self._refresh",
        ("tests/integration/workers/test_queues.py::test_graceful_stop_finishes_the_jobs_in_hand", REFILL),
    ),
    Mutation(
        "checkpoint: the state is not saved with the job",
        "workers/consumers/checkpoints.py",
        "            new_raw = with_checkpoint(self.raw, self.job, state)",
        "            new_raw = self.raw",
        (REFILL, "tests/apps/test_trivia.py"),
    ),
    Mutation(
        "checkpoint: a job recovered away goes on as if still ours",
        "workers/consumers/checkpoints.py",
        "            if not await self.settlement.checkpoint(self.queue, self.raw, new_raw, publish):",
        "            if not await self.settlement.checkpoint(self.queue, self.raw, new_raw, publish) and False:",
        (REFILL,),
    ),
    Mutation(
        "checkpoint: the announcement of a save is never published",
        "workers/jobs/scripts.py",
        "if ARGV[3] then redis.call('PUBLISH', ARGV[3], ARGV[4]) end",
        "",
        ("tests/apps/test_trivia.py",),
    ),
)


def run(mutation: Mutation) -> tuple[bool, float]:
    path = ROOT / mutation.path
    original = path.read_text()
    if original.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.name}: the text to mutate is not in {mutation.path} exactly once")
    started = time.monotonic()
    try:
        path.write_text(original.replace(mutation.old, mutation.new))
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-x",
                "-p",
                "no:randomly",
                "-o",
                "timeout=90",
                *mutation.tests,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    finally:
        path.write_text(original)
    return done.returncode != 0, time.monotonic() - started


def main(names: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not names or any(n in m.name for n in names)]
    survived = 0
    for mutation in chosen:
        caught, elapsed_s = run(mutation)
        survived += not caught
        print(f"{'caught  ' if caught else 'SURVIVED'} {elapsed_s:6.1f}s  {mutation.name}", flush=True)
    print(f"{len(chosen) - survived}/{len(chosen)} mutations caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
