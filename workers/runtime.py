"""The child side of a pool: boot, announce ready, work, stop, exit with a meaningful code.

The supervisor starts ``python -m entrypoints.child`` with the spec below as JSON in the
``CORRAL_CHILD`` environment variable and one end of a socketpair as file descriptor ``spec.fd``.
Stdout and stderr are a pipe into the slot's log file, so everything the child prints (a
traceback before logging is set up, a faulthandler dump) lands there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from ipc import Channel, IPCError
from workers.base import BaseWorker, WorkerContext
from workers.consumers import RECOVER_EVENT, Consumers, connect, new_worker_id
from workers.exitcodes import ExitCode
from workers.loader import LoadError, load_object
from workers.partitions import ASSIGN_EVENT, REVOKE_EVENT
from workers.specs import WorkSpec

SPEC_ENV = "CORRAL_CHILD"
PR_SET_PDEATHSIG = 1
STOP_EVENT = "corral.stop"
STATS_EVENT = "corral.stats"
TEXT_FORMAT = (
    "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | worker-{extra[slot]} | "
    "{name}:{function}:{line} - {message}"
)


@dataclass(frozen=True)
class ChildSpec:
    fd: int
    slot: int
    pool: str
    target: str
    host: str
    parent_pid: int
    options: dict[str, Any] = field(default_factory=dict)
    log_level: str = "INFO"
    log_json: bool = False
    stats_interval_s: float = 1.0
    orphan_grace_s: float = 0.8
    work: dict[str, Any] = field(default_factory=dict)  # a WorkSpec as JSON: streams, queues, redis
    config_dir: str = ""
    state_dir: str = ""


class BootError(Exception):
    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def load_target(path: str) -> type[BaseWorker] | Any:
    """Resolve ``package.module:attr`` to a BaseWorker subclass or a factory returning one."""
    try:
        obj = load_object(path)
    except LoadError as exc:
        raise BootError(ExitCode.BOOT_IMPORT, f"worker: {exc}") from exc.__cause__
    if not callable(obj):
        raise BootError(ExitCode.BOOT_IMPORT, f"worker {path!r} is not a class or factory")
    return obj


def make_worker(path: str) -> BaseWorker:
    factory = load_target(path)
    try:
        worker = factory()
    except Exception as exc:
        raise BootError(ExitCode.BOOT_START, f"constructing worker {path!r} failed: {exc!r}") from exc
    if not isinstance(worker, BaseWorker):
        made = type(worker).__name__
        raise BootError(ExitCode.BOOT_IMPORT, f"worker {path!r} made a {made}, not a BaseWorker")
    return worker


def guard_against_orphaning(parent_pid: int, grace_s: float) -> None:
    """Exit soon after the supervisor dies, even by SIGKILL, even if our event loop is blocked."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        os._exit(ExitCode.ORPHANED)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.1)
        time.sleep(grace_s)  # the loop gets this long to hand work back, then we go
        os._exit(ExitCode.ORPHANED)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def setup_logging(spec: ChildSpec) -> None:
    logger.remove()
    logger.configure(extra={"slot": spec.slot})
    if spec.log_json:
        logger.add(sys.stderr, level=spec.log_level, serialize=True, backtrace=False)
    else:
        logger.add(sys.stderr, level=spec.log_level, format=TEXT_FORMAT, backtrace=False, colorize=False)


class ChildRuntime:
    """Drives one BaseWorker through start → run → stop and reports to the supervisor."""

    def __init__(self, spec: ChildSpec, worker: BaseWorker) -> None:
        self.spec = spec
        self.worker = worker
        self.stop_mode: asyncio.Future[str] | None = None
        self.run_task: asyncio.Task[None] | None = None
        self.consumers: Consumers | None = None
        self.log = logger.bind(worker=spec.slot)

    def request_stop(self, mode: str) -> str:
        """Graceful: stop taking work and finish what is in flight. Fast (or a second request):
        cancel the work loop, so consumers hand their in-flight work back."""
        assert self.stop_mode is not None
        if not self.stop_mode.done():
            self.log.info("stopping ({})", mode)
            self.stop_mode.set_result(mode)
            self.worker.stopping.set()
            if mode != "fast":
                return "stopping"
        if self.run_task is not None and not self.run_task.done():
            self.log.warning("stopping fast: in-flight work is cancelled")
            self.run_task.cancel()
        return "stopping"

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        self.stop_mode = loop.create_future()
        sock = socket.socket(fileno=self.spec.fd)
        channel = await Channel.open(sock, name=f"worker-{self.spec.slot}")
        identity = f"{self.spec.host}:{self.spec.pool}:{self.spec.slot}"
        spec = self.spec
        context = WorkerContext(
            spec.slot,
            spec.pool,
            spec.host,
            spec.options,
            new_worker_id(identity),
            spec.config_dir,
            spec.state_dir,
        )
        self.worker.bind(context, channel)
        try:
            self.consumers = self._make_consumers(context)
        except LoadError as exc:
            self.log.error("boot failed: {}", exc)
            return ExitCode.BOOT_IMPORT
        channel.on(STOP_EVENT, lambda data: self.request_stop(str((data or {}).get("mode", "graceful"))))
        channel.on(STATS_EVENT, lambda _data: self.worker.stats())
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "graceful")
        try:
            await self.worker.start()
        except Exception:
            self.log.exception("start() failed")
            return ExitCode.BOOT_START
        if self.consumers is not None:  # they begin after the worker's own start()
            for unit in self.consumers.units():
                self.worker.manager.register_worker(unit)
            consumers = self.consumers
            channel.on(RECOVER_EVENT, lambda data: consumers.recover(str(data["worker_id"]), force=True))
            channel.on(ASSIGN_EVENT, consumers.assign)
            channel.on(REVOKE_EVENT, consumers.revoke)
        if not self.worker.ready_announced:  # a start() that forgot super().start()
            await BaseWorker.start(self.worker)
        return await self._work(channel)

    def _make_consumers(self, context: WorkerContext) -> Consumers | None:
        work = WorkSpec.from_json(self.spec.work)
        if work.redis.url is None:
            if not work.empty:
                raise LoadError("streams or queues are declared but no Redis URL was handed to the child")
            return None  # a pool without Redis (no [redis], no streams, no queues)
        self.worker.redis = connect(work.redis)
        consumers = Consumers(
            work, redis=self.worker.redis, pool=self.spec.pool, worker_id=context.worker_id, log=self.log
        )
        self.worker.consumer_stats = consumers.stats
        consumers.give_handlers(self.worker)
        return consumers

    async def _work(self, channel: Channel) -> int:
        assert self.stop_mode is not None
        self.log.info("ready (pid {})", os.getpid())
        self.run_task = asyncio.create_task(self.worker.run(), name="worker.run")
        reporter = asyncio.create_task(self._report(channel), name="stats")
        closed: asyncio.Future[str] = asyncio.ensure_future(channel.wait_closed())
        waiting: list[asyncio.Future[Any]] = [self.run_task, self.stop_mode, closed]
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        code: int = ExitCode.OK
        if closed in done and not self.stop_mode.done():
            self.log.warning("supervisor channel closed ({}); stopping fast", closed.result())
            self.request_stop("fast")
            code = ExitCode.ORPHANED
        try:
            await self.run_task
        except asyncio.CancelledError:
            pass
        except Exception:
            self.log.exception("the work loop crashed")
            code = ExitCode.CRASHED
        else:
            if not self.stop_mode.done():
                self.log.warning("the work loop ended without being asked to stop")
        reporter.cancel()
        try:
            await self.worker.stop()
        except Exception:
            self.log.exception("stop() failed")
        if self.consumers is not None:
            await self.consumers.close()
        self._push_stats(channel)
        channel.close("child exiting")
        closed.cancel()
        # Exiting now: a late SIGTERM (PR_SET_PDEATHSIG of a dead supervisor) must not turn a clean
        # exit into "killed by SIGTERM" once asyncio.run has removed our handler.
        asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return code

    async def _report(self, channel: Channel) -> None:
        while not channel.closed:
            self._push_stats(channel)
            await asyncio.sleep(self.spec.stats_interval_s)

    def _push_stats(self, channel: Channel) -> None:
        with contextlib.suppress(IPCError):
            channel.send(STATS_EVENT, self.worker.stats())


def parse_spec(raw: str | None) -> ChildSpec:
    import json

    if not raw:
        raise BootError(ExitCode.BOOT_USAGE, f"{SPEC_ENV} is not set: this program is started by corral")
    try:
        return ChildSpec(**json.loads(raw))
    except (ValueError, TypeError) as exc:
        raise BootError(ExitCode.BOOT_USAGE, f"bad {SPEC_ENV}: {exc}") from exc


def cancellable_wait_for() -> None:
    """Python 3.11's ``asyncio.wait_for`` swallows a cancellation that arrives as the awaited
    future completes (CPython gh-86296, fixed in 3.12). redis-py sends every command through it
    when a socket timeout is set, so a handler busy with Redis was all but impossible to cancel:
    a fast stop waited for it, then SIGKILL. The child is a process of ours: use 3.12's version."""
    if sys.version_info >= (3, 12):
        return
    original = asyncio.wait_for

    async def wait_for(fut: Any, timeout: float | None) -> Any:  # noqa: ASYNC109 - its signature
        if timeout is not None and timeout <= 0:
            return await original(fut, timeout)
        async with asyncio.timeout(timeout):
            return await fut

    asyncio.wait_for = asyncio.tasks.wait_for = wait_for


def run_child(raw_spec: str | None) -> int:
    """The whole life of a child process; returns its exit code."""
    cancellable_wait_for()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group:
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)  # the supervisor decides what we do
    try:
        spec = parse_spec(raw_spec)
    except BootError as exc:
        print(f"corral child: {exc}", file=sys.stderr)
        return exc.code
    guard_against_orphaning(spec.parent_pid, spec.orphan_grace_s)
    setup_logging(spec)
    try:
        worker = make_worker(spec.target)
    except BootError as exc:
        logger.opt(exception=exc.__cause__).error("boot failed: {}", exc)
        return exc.code
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(ChildRuntime(spec, worker).main())


def _loop_factory() -> Any:
    """uvloop's event loop when it is installed (a faster loop for the consumers), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
