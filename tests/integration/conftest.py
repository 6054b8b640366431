"""Fixtures of the Redis consumer tests: pools of real ``BaseWorker`` children, in-process
consumers on ``redis.asyncio`` clients, and polling with deadlines."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest
from loguru import logger

from corral.contract import QueueSpec, RedisSpec, WorkSpec
from corral.supervisor import WorkerPool
from corral.supervisor.recovery import Recovery
from corral.workers.consumers.consumer_set import Consumers
from corral.workers.jobs.keys import Keys
from corral.workers.manager import WorkerManager
from corral.workers.topology import connect
from tests.servers import async_client

CONSUMER_WORKER = "corral.workers.base:BaseWorker"
H = "tests.integration.workers.redis_handlers"
POOL = "test"
KEYS = Keys()
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def wait_for(
    predicate: Callable[[], Any], timeout_s: float = 10.0, what: str = "", interval_s: float = 0.02
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy, which is returned;
    AssertionError naming ``what`` (and the last value seen) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s}s waiting for {what or predicate} (last: {value!r})"
            )
        await asyncio.sleep(interval_s)


def kill_children(pids: list[int], timeout_s: float = 10.0) -> None:
    """Teardown of the pool fixtures: SIGKILL each of ``pids`` still alive and wait for it."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        try:
            psutil.Process(pid).wait(timeout=timeout_s)
        except psutil.NoSuchProcess:
            pass


async def equals(coro: Awaitable[Any], expected: Any) -> bool:
    """For ``wait_for``: ``await coro == expected``."""
    return bool(await coro == expected)


async def at_least(coro: Awaitable[Any], n: int) -> Any:
    """For ``wait_for``: the awaited sequence once it has ``n`` items or more, else None."""
    value = await coro
    return value if len(value) >= n else None


def redis_spec(url: str, **overrides: Any) -> RedisSpec:
    return RedisSpec(url=url, **overrides)


# -- pools of real children ------------------------------------------------------------------------


def queue_work(url: str, **spec: Any) -> WorkSpec:
    """One ``[[queues]]`` spec on the server at ``url``; a short ``block_s`` unless given."""
    spec.setdefault("block_s", 0.2)
    return WorkSpec(redis=redis_spec(url), queues=(QueueSpec(**spec),))


@dataclass
class ConsumerPool:
    """A WorkerPool of ``BaseWorker`` children with exit-triggered recovery and captured output."""

    pool: WorkerPool
    recovery: Recovery
    output: dict[int | str, bytearray]  # by slot, and "zygote"

    def log(self, slot: int | str | None = None) -> str:
        slots = [slot] if slot is not None else sorted(self.output, key=str)
        return "".join(self.output[s].decode("utf-8", "replace") for s in slots if s in self.output)

    def worker_id(self, slot: int) -> str:
        conn = self.pool.get(slot)
        assert conn is not None and conn.info, f"slot {slot} has no ready child"
        return conn.info.worker_id

    def pid(self, slot: int) -> int:
        conn = self.pool.get(slot)
        assert conn is not None, f"slot {slot} has no child"
        return conn.pid


@pytest.fixture
def consumer_pool() -> Iterator[Callable[..., ConsumerPool]]:
    """``consumer_pool(size, work, **settings)``: every child's pid is recorded when it is spawned
    and SIGKILLed at teardown if still alive, whatever the test did."""
    pids: list[int] = []

    def make(size: int, work: WorkSpec, **settings: Any) -> ConsumerPool:
        output: dict[int, bytearray] = {}

        def sink(slot: int) -> Callable[[bytes], None]:
            return output.setdefault(slot, bytearray()).extend

        settings.setdefault("ready_timeout_s", 20.0)
        settings.setdefault("heartbeat_interval_s", 2.0)
        settings.setdefault("cwd", REPO_ROOT)
        pool = WorkerPool(POOL, size, CONSUMER_WORKER, work=work.to_json(), output=sink, **settings)
        pool.on("spawning", lambda conn: pids.append(conn.pid))
        return ConsumerPool(pool, Recovery(pool), output)

    yield make
    kill_children(pids)


# -- consumers in this process ---------------------------------------------------------------------


@dataclass
class LocalWorker:
    """The consumers of one WorkSpec run by a WorkerManager in this event loop: what a child runs,
    without the process around it."""

    consumers: Consumers
    manager: WorkerManager = field(default_factory=WorkerManager)
    fenced: list[str] = field(default_factory=list)  # what a child would have exited for (not this test)
    task: asyncio.Task[None] | None = None

    @property
    def worker_id(self) -> str:
        return self.consumers.worker_id

    def start(self) -> LocalWorker:
        self.consumers.watch_stopping(self.manager.stopping)  # as a child's worker gives its own
        for unit in self.consumers.units():
            self.manager.register_worker(unit)
        self.task = asyncio.create_task(self.manager.run())
        return self

    async def drain(self, timeout_s: float = 20.0) -> LocalWorker:
        """Run the consumers (not started) until each found nothing in a round, then close them: a
        test that runs its work to the end instead of polling for it (as arq's ``burst``)."""
        assert self.task is None, "drain() runs a worker made with start=False"
        self.consumers.watch_stopping(self.manager.stopping)
        for unit in self.consumers.units():
            self.manager.register_worker(unit)
        await asyncio.wait_for(self.manager.run(burst=True), timeout_s)
        await self.consumers.close()
        self.consumers.lease.stop()
        return self

    async def stop(self, fast: bool = False, timeout_s: float = 10.0) -> None:
        """Graceful: let the current rounds finish. Fast: cancel them (in-flight work handed back)."""
        assert self.task is not None
        self.manager.stopping.set()
        if fast:
            self.task.cancel()
        try:
            await asyncio.wait_for(self.task, timeout_s)
        except asyncio.CancelledError:
            pass
        await self.consumers.close()
        self.consumers.lease.stop()  # a child's exit would end its threads; this process goes on


@pytest.fixture
def local_worker() -> Callable[..., Awaitable[LocalWorker]]:
    """``await local_worker(work, name="w1")``: build the consumers of ``work`` on a new client."""

    async def make(work: WorkSpec, name: str = "w1", start: bool = True) -> LocalWorker:
        assert work.redis.url is not None
        client = await connect(work.redis)
        worker_id = f"testhost:{POOL}:{name}"
        fenced: list[str] = []
        consumers = Consumers(
            work, redis=client, pool=POOL, worker_id=worker_id, log=logger, on_fence=fenced.append
        )
        worker = LocalWorker(consumers, fenced=fenced)
        return worker.start() if start else worker

    return make


def client(url: str) -> Any:
    """The test's own async client: plain, cluster or Sentinel-managed, as ``url`` needs."""
    return async_client(url)
