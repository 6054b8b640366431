"""The peers of the throughput bench: huey, taskiq, RQ, dramatiq, arq and Celery, each in its own
cached venv.

Each peer gets a small module (written to a temp dir by ``write_modules``) with the bench's job —
``add(a, b)``: a+b, then one INCR of ``bench:count`` — and ``enqueue(n)``, which uses the peer's own
client (``python peer_x.py enqueue N``). ``Peer.workers`` gives the command line of each of the two
worker processes. Every peer runs with its defaults except per-job logging (set to WARNING, as
corral's children are in the bench), so log output costs none of them anything; arq runs a second
time with ``poll_delay`` 0.05 s, since its default (0.5 s, at most 100 jobs a poll) caps a busy
queue at about 200 jobs/s per worker.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# venv name -> pinned requirement: the venvs are cached under --peers-dir while the pin matches
REQUIREMENTS = {
    "rq": "rq==2.12.0",
    "dramatiq": "dramatiq[redis]==2.2.1",
    "arq": "arq==0.28.0",  # arq needs redis<6: a venv of its own
    "celery": "celery[redis]==5.7.0",
    "huey": "huey==3.5.4 redis",
    "taskiq": "taskiq==0.13.0 taskiq-redis==1.2.4",
}
MARKER = ".bench-requirement"

COMMON = """
import os
import sys

URL = os.environ["BENCH_REDIS_URL"]
COUNTER = "bench:count"
"""

MODULES = {
    "peer_rq": COMMON
    + """
import redis
from rq import Queue

_client = None


def add(a, b):
    global _client
    if _client is None:  # per process: a fork-per-job worker connects in every work horse
        _client = redis.Redis.from_url(URL)
    _ = a + b
    _client.incr(COUNTER)


def enqueue(n):
    queue = Queue("default", connection=redis.Redis.from_url(URL))
    for start in range(0, n, 1000):
        jobs = [Queue.prepare_data(add, args=(i, 1)) for i in range(start, min(n, start + 1000))]
        queue.enqueue_many(jobs)


if __name__ == "__main__":  # through the module's own name: task names must not say __main__
    __import__(os.path.basename(__file__)[:-3]).enqueue(int(sys.argv[2]))
""",
    "peer_dramatiq": COMMON
    + """
import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

dramatiq.set_broker(RedisBroker(url=URL))
client = redis.Redis.from_url(URL)


@dramatiq.actor
def add(a, b):
    _ = a + b
    client.incr(COUNTER)


def enqueue(n):
    for i in range(n):
        add.send(i, 1)


if __name__ == "__main__":  # through the module's own name: task names must not say __main__
    __import__(os.path.basename(__file__)[:-3]).enqueue(int(sys.argv[2]))
""",
    "peer_arq": COMMON
    + """
import asyncio

from arq import create_pool
from arq.connections import RedisSettings

REDIS = RedisSettings.from_dsn(URL)
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING"}},
    "loggers": {"arq": {"handlers": ["stderr"], "level": "WARNING"}},
}


async def add(ctx, a, b):
    _ = a + b
    await ctx["redis"].incr(COUNTER)


class WorkerSettings:
    functions = [add]
    redis_settings = REDIS


class PollingWorkerSettings:  # arq reads the class's own __dict__: no inheritance
    functions = [add]
    redis_settings = REDIS
    poll_delay = 0.05  # default 0.5 s: at most 100 jobs (queue_read_limit) per poll and worker


async def enqueue(n):
    pool = await create_pool(REDIS)
    for start in range(0, n, 200):
        await asyncio.gather(*(pool.enqueue_job("add", i, 1) for i in range(start, min(n, start + 200))))
    await pool.aclose()


if __name__ == "__main__":
    asyncio.run(enqueue(int(sys.argv[2])))
""",
    "peer_celery": COMMON
    + """
import redis
from celery import Celery

app = Celery("peer_celery", broker=URL)
app.conf.broker_connection_retry_on_startup = True
client = redis.Redis.from_url(URL)


@app.task
def add(a, b):
    _ = a + b
    client.incr(COUNTER)


def enqueue(n):
    with app.producer_or_acquire() as producer:
        for i in range(n):
            add.apply_async((i, 1), producer=producer)


if __name__ == "__main__":  # through the module's own name: task names must not say __main__
    __import__(os.path.basename(__file__)[:-3]).enqueue(int(sys.argv[2]))
""",
    "peer_huey": COMMON
    + """
import redis
from huey import RedisHuey

huey = RedisHuey("bench", url=URL)
client = redis.Redis.from_url(URL)


@huey.task()
def add(a, b):
    _ = a + b
    client.incr(COUNTER)


def enqueue(n):
    for i in range(n):
        add(i, 1)


if __name__ == "__main__":  # through the module's own name: task names must not say __main__
    __import__(os.path.basename(__file__)[:-3]).enqueue(int(sys.argv[2]))
""",
    "peer_taskiq": COMMON
    + """
import asyncio

import redis.asyncio
from taskiq_redis import ListQueueBroker

broker = ListQueueBroker(URL)
_client = None


@broker.task
async def add(a, b):
    global _client
    if _client is None:  # per worker process, on its own loop
        _client = redis.asyncio.Redis.from_url(URL)
    _ = a + b
    await _client.incr(COUNTER)


def enqueue(n):
    async def go():
        await broker.startup()
        for i in range(n):
            await add.kiq(i, 1)
        await broker.shutdown()

    asyncio.run(go())


if __name__ == "__main__":  # through the module's own name: task names must not say __main__
    __import__(os.path.basename(__file__)[:-3]).enqueue(int(sys.argv[2]))
""",
}


@dataclass(frozen=True)
class Peer:
    label: str
    venv: str
    module: str
    argv: tuple[str, ...]  # one worker process: "{bin}" the venv's bin dir, "{url}" the server's URL
    processes: int = 2  # how many of ``argv`` run (each with "{n}" = its index)
    deadline_s: float | None = None  # None: the bench's default drain deadline
    reps: int = 1  # runs in a full bench (the median is reported); --quick: one

    def workers(self, venv_dir: Path, url: str) -> list[list[str]]:
        bin_dir = str(venv_dir / self.venv / "bin")
        return [[arg.format(bin=bin_dir, n=n, url=url) for arg in self.argv] for n in range(self.processes)]

    def enqueue(self, venv_dir: Path, module_dir: Path, n: int) -> list[str]:
        return [
            str(venv_dir / self.venv / "bin" / "python"),
            str(module_dir / f"{self.module}.py"),
            "enqueue",
            str(n),
        ]


RQ = ("{bin}/rq", "worker", "-u", "{url}", "--logging_level", "WARNING", "-n", "bench-{n}")
PEERS = (
    Peer(
        "huey (2 worker processes)",
        "huey",
        "peer_huey",
        ("{bin}/huey_consumer", "peer_huey.huey", "-w", "2", "-k", "process", "-q"),
        processes=1,
        reps=3,  # the best peers of the run (huey, dramatiq, taskiq): medians
    ),
    Peer(
        "taskiq (2 worker processes)",
        "taskiq",
        "peer_taskiq",
        ("{bin}/taskiq", "worker", "peer_taskiq:broker", "--workers", "2", "--log-level", "WARNING"),
        processes=1,
        reps=3,
    ),
    Peer("RQ (fork per job)", "rq", "peer_rq", (*RQ, "default"), deadline_s=30.0),
    Peer("RQ (SimpleWorker)", "rq", "peer_rq", (*RQ, "-w", "rq.worker.SimpleWorker", "default")),
    Peer(
        "dramatiq (2 procs x 8 threads)",
        "dramatiq",
        "peer_dramatiq",
        ("{bin}/dramatiq", "--processes", "2", "--threads", "8", "peer_dramatiq"),
        processes=1,
        reps=3,  # the fastest peer, which corral's 3x target is measured against: a median, like corral's
    ),
    Peer(
        "arq (2 procs, defaults)",
        "arq",
        "peer_arq",
        ("{bin}/arq", "peer_arq.WorkerSettings", "--custom-log-dict", "peer_arq.LOG_CONFIG"),
        deadline_s=20.0,
    ),
    Peer(
        "arq (2 procs, poll_delay 0.05 s)",
        "arq",
        "peer_arq",
        ("{bin}/arq", "peer_arq.PollingWorkerSettings", "--custom-log-dict", "peer_arq.LOG_CONFIG"),
    ),
    Peer(
        "Celery (prefork -c 2)",
        "celery",
        "peer_celery",
        ("{bin}/celery", "-A", "peer_celery", "worker", "-c", "2", "--loglevel", "WARNING", "-n", "w{n}@%h"),
        processes=1,
    ),
    Peer(
        "Celery (2 solo workers)",
        "celery",
        "peer_celery",
        (
            "{bin}/celery",
            "-A",
            "peer_celery",
            "worker",
            "-P",
            "solo",
            "--loglevel",
            "WARNING",
            "-n",
            "w{n}@%h",
        ),
    ),
)


def write_modules(module_dir: Path) -> None:
    for name, source in MODULES.items():
        (module_dir / f"{name}.py").write_text(source.lstrip())


def ensure_venvs(venv_dir: Path, names: set[str], timeout_s: float) -> dict[str, str]:
    """Create (in parallel) every venv in ``names`` whose pinned requirement is not installed yet.
    Returns venv name -> error for the ones that could not be set up."""
    venv_dir.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    errors: dict[str, str] = {}
    try:
        for name in sorted(names):
            path, requirement = venv_dir / name, REQUIREMENTS[name]
            marker = path / MARKER
            if marker.is_file() and marker.read_text() == requirement:
                continue
            shutil.rmtree(path, ignore_errors=True)
            print(f"installing {requirement} into {path} ...", flush=True)
            q = shlex.quote
            venv = f"{q(sys.executable)} -m venv {q(str(path))}"
            packages = " ".join(map(q, requirement.split()))
            install = f"{q(str(path / 'bin' / 'pip'))} install -q --disable-pip-version-check {packages}"
            script = f"{venv} && {install} && printf %s {q(requirement)} > {q(str(marker))}"
            with (venv_dir / f"{name}.log").open("wb") as log:
                procs[name] = subprocess.Popen(
                    ["sh", "-c", script], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
        deadline = time.monotonic() + timeout_s
        for name, proc in procs.items():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                errors[name] = f"not installed within {timeout_s:g}s"
                continue
            if not (venv_dir / name / MARKER).is_file():
                errors[name] = f"pip failed: see {venv_dir / (name + '.log')}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:  # the shell and its pip: the process group it leads
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    return errors
