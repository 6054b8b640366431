"""A child's boot: read its spec, guard against orphaning, set up logging, build the worker, run it.

``python -m corral.workers.child`` calls ``run_child``; the process's exit code is what it
returns (``corral.contract.ExitCode``). Stdout and stderr are a pipe into the slot's log file, so
everything the child prints (a traceback before logging is set up, a faulthandler dump) lands there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import select
import signal
import sys
import threading
import time
from typing import Any

from loguru import logger
from setproctitle import setproctitle

from corral.contract import BadChildSpec, ChildSpec, ExitCode, LoadError, load_object
from corral.workers.base import BaseWorker
from corral.workers.consumers.base import load_handler
from corral.workers.runtime import ChildRuntime

PR_SET_PDEATHSIG = 1
TEXT_FORMAT = (
    "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | worker-{extra[slot]} | "
    "{name}:{function}:{line} - {message}"
)


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


def check(spec: ChildSpec) -> list[str]:
    """What a child of ``spec`` could not import: its worker and every handler (one line each)."""
    problems = []
    try:
        load_target(spec.target)
    except BootError as exc:
        problems.append(f"pool.worker: {exc}")
    work = spec.work
    handlers = [(f"streams[{i}].handler", s.handler) for i, s in enumerate(work.streams)]
    handlers += [(f"queues[{i}].handler", q.handler) for i, q in enumerate(work.queues)]
    for where, path in handlers:
        try:
            load_handler(path)
        except LoadError as exc:
            problems.append(f"{where}: {exc}")
    return problems


def check_child(raw_spec: str | None) -> int:
    """``python -m corral.workers.child --check``: import what the children will run, then exit
    (the supervisor runs this before it starts any child, so a typo is an error at once)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the supervisor decides
    try:
        spec = ChildSpec.from_env(raw_spec)
    except BadChildSpec as exc:
        print(f"corral child: {exc}", file=sys.stderr)
        return ExitCode.BOOT_USAGE
    problems = check(spec)
    for problem in problems:
        print(problem, file=sys.stderr)
    return ExitCode.BOOT_IMPORT if problems else ExitCode.OK


def guard_against_orphaning(parent_pid: int, grace_s: float) -> None:
    """Exit soon after the supervisor dies, even by SIGKILL, even if our event loop is blocked."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        os._exit(ExitCode.ORPHANED)
    try:  # the parent's pidfd: readable when it exits; nothing to wake up for until then
        parent_fd = os.pidfd_open(parent_pid)
    except (AttributeError, OSError):
        parent_fd = -1
    if os.getppid() != parent_pid:  # died before we held it (that pid may be another's now)
        os._exit(ExitCode.ORPHANED)

    def watch() -> None:
        if parent_fd >= 0:
            select.select([parent_fd], [], [])
        while os.getppid() == parent_pid:  # no pidfd (an old kernel): look every 0.1 s
            time.sleep(0.1)
        time.sleep(grace_s)  # the loop gets this long to hand work back, then we go
        os._exit(ExitCode.ORPHANED)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def setup_logging(spec: ChildSpec) -> None:
    logger.remove()
    logger.configure(extra={"slot": spec.slot})
    if spec.told.log_json:
        logger.add(sys.stderr, level=spec.told.log_level, serialize=True, backtrace=False)
    else:
        logger.add(sys.stderr, level=spec.told.log_level, format=TEXT_FORMAT, backtrace=False, colorize=False)


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
        spec = ChildSpec.from_env(raw_spec)
    except BadChildSpec as exc:
        print(f"corral child: {exc}", file=sys.stderr)
        return ExitCode.BOOT_USAGE
    setproctitle(f"corral: {spec.pool} worker {spec.slot}")  # what ps and top show for this child
    guard_against_orphaning(spec.parent_pid, spec.told.orphan_grace_s)
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
