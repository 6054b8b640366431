"""Fixtures for the end-to-end tier: real supervisors under setsid, and never a leaked process.

``corral`` is a factory: ``corral(worker, workers=2, pool={...}, restart={...}, ...)`` writes a
``corral.toml`` in the test's tmp_path and returns a ``Corral`` handle; ``handle.start()`` runs
``corral run`` in a new session. When the test ends (pass or fail) every session started is
SIGKILLed as a whole (``killpg``), every child pid ever seen is killed too, and everything is reaped:
during each test this process is a child subreaper, so orphaned children are reparented to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from loguru import logger

from corral.ipc import IPCError
from corral.supervisor.control import NotRunning, call
from tests.servers import Standalone

REPO_ROOT = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).with_name("corral")
CORRAL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "corral.entrypoints.cli"]
CHILD_MARK = "corral.workers.child"  # an exec'd child's (or the zygote's) command line, at first
CHILD_TITLE = re.compile(r"corral: \S+ (worker \d+|zygote)$")  # what a child names itself (setproctitle)
T = TypeVar("T")

TRANSITION = re.compile(r"slot (\d+) pid (\d+): (\w+) -> (\w+)")


class WaitTimeout(AssertionError):
    pass


def wait_until(predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.05, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy (returned); raise after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            name = what or getattr(predicate, "__name__", repr(predicate))
            raise WaitTimeout(f"timed out after {timeout_s:g}s waiting for {name}; last value: {value!r}")
        time.sleep(interval_s)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_toml(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in table.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def is_gone(pid: int) -> bool:
    """The process has exited: no such pid, or a zombie waiting to be reaped."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def is_our_child_process(pid: int) -> bool:
    """A live corral child (checked by command line, so that a recycled pid is never killed)."""
    try:
        proc = psutil.Process(pid)
        command = " ".join(proc.cmdline()).strip()  # a set title is padded with NULs
        ours = CHILD_MARK in command or CHILD_TITLE.match(command) is not None
        return proc.status() != psutil.STATUS_ZOMBIE and ours
    except psutil.Error:
        return False


@dataclass
class Corral:
    """One supervisor of one test: its config, process, logs, and every child pid seen."""

    root: Path
    config: Path
    name: str = "supervisor"  # its stdout+stderr go to <root>/<name>.out
    proc: subprocess.Popen[bytes] | None = None
    child_pids: set[int] = field(default_factory=set)
    _output: Any = None

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def socket(self) -> Path:
        return self.root / "run" / "corral.sock"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the supervisor was not started"
        return self.proc.pid

    # -- running ------------------------------------------------------------------------------

    def start(self, env: dict[str, str] | None = None) -> Corral:
        assert self.proc is None
        self._output = (self.root / f"{self.name}.out").open("wb")
        self.proc = subprocess.Popen(
            [*CORRAL, "run", "-c", str(self.config)],
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def cli(self, *args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``corral ARGS -c CONFIG`` to completion."""
        command, *rest = args
        return run_cli(command, "-c", str(self.config), *rest, timeout_s=timeout_s)

    def send(self, sig: int) -> None:
        assert self.proc is not None and self.proc.poll() is None, "the supervisor is not running"
        os.kill(self.pid, sig)

    def wait_exit(self, timeout_s: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise WaitTimeout(
                f"supervisor pid {self.pid} still running after {timeout_s:g}s\n{self.output()}"
            ) from None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``corral status --json`` through the real CLI."""
        done = self.cli("status", "--json")
        assert done.returncode == 0, f"corral status failed ({done.returncode}): {done.stderr}"
        status: dict[str, Any] = json.loads(done.stdout)
        self._remember(status)
        return status

    def status_fast(self) -> dict[str, Any] | None:
        """The same request over the control socket from this process (for tight polling);
        None while nothing answers, or while the pool has no slots yet (its start-up checks)."""
        logger.disable("corral.ipc")  # its debug lines about every short-lived channel are noise here
        try:
            status: dict[str, Any] = asyncio.run(call(self.socket, "status", timeout_s=5.0))
        except (NotRunning, IPCError, OSError):
            return None
        finally:
            logger.enable("corral.ipc")
        if not status["slots"] and status["size"]:
            return None
        self._remember(status)
        return status

    def _remember(self, status: dict[str, Any]) -> None:
        self.child_pids.update(s["pid"] for s in status["slots"] if s["pid"])

    def wait_all_ready(self, workers: int, timeout_s: float = 15.0) -> dict[str, Any]:
        """Until ``workers`` slots are all ready with a pid (polls fast; returns the status)."""

        def all_ready() -> dict[str, Any] | None:
            assert self.running, f"the supervisor exited early ({self.proc and self.proc.poll()})"
            status = self.status_fast()
            if status is None or len(status["slots"]) != workers:
                return None
            ok = all(s["state"] == "ready" and s["pid"] for s in status["slots"])
            return status if ok else None

        return wait_until(all_ready, timeout_s, what=f"{workers} ready slots\n{self.output()}")

    def slot(self, status: dict[str, Any], index: int) -> dict[str, Any]:
        rows = [s for s in status["slots"] if s["slot"] == index]
        assert rows, f"no slot {index} in {status}"
        return rows[0]

    # -- logs ---------------------------------------------------------------------------------

    def log(self, name: str = "supervisor") -> str:
        path = self.log_dir / ("supervisor.log" if name == "supervisor" else f"worker-{name}.log")
        return path.read_text("utf-8", "replace") if path.exists() else ""

    def output(self) -> str:
        """The supervisor's own stdout+stderr so far (for failure messages)."""
        path = self.root / f"{self.name}.out"
        text = path.read_text("utf-8", "replace") if path.exists() else ""
        return f"--- {self.name} output ---\n{text[-4000:]}"

    def transitions(self) -> list[tuple[int, int, int, str, str]]:
        """``(line number, slot, pid, from, to)`` of every state change in supervisor.log, in order."""
        found = []
        for number, line in enumerate(self.log().splitlines()):
            match = TRANSITION.search(line)
            if match:
                slot, pid, before, after = match.groups()
                found.append((number, int(slot), int(pid), before, after))
        return found

    def wait_line(self, slot: int, pid: int, before: str, after: str, timeout_s: float = 10.0) -> int:
        """``line_of`` once the transition is logged (an exit is logged after the output is drained)."""

        def logged() -> int | None:
            try:
                return self.line_of(slot, pid, before, after) + 1  # 0 is a valid line, not "no"
            except AssertionError:
                return None

        return wait_until(logged, timeout_s, what=f"'slot {slot} pid {pid}: {before} -> {after}'") - 1

    def line_of(self, slot: int, pid: int, before: str, after: str) -> int:
        for number, s, p, b, a in self.transitions():
            if (s, p, b, a) == (slot, pid, before, after):
                return number
        raise AssertionError(f"no 'slot {slot} pid {pid}: {before} -> {after}' in supervisor.log")

    # -- hygiene ------------------------------------------------------------------------------

    def kill_everything(self) -> None:
        """SIGKILL the whole session and every child pid seen, then reap the supervisor."""
        if self.proc is None:
            return
        if self.running:
            with contextlib.suppress(psutil.Error):
                self.child_pids.update(c.pid for c in psutil.Process(self.pid).children(recursive=True))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # under setsid: the group id is the supervisor's pid
        for pid in self.child_pids:
            if is_our_child_process(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        try:
            self.proc.wait(10)
        finally:
            if self._output is not None:
                self._output.close()
        reap(self.child_pids - {self.pid}, timeout_s=5.0)


PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper(on: bool) -> None:
    """Orphans of our supervisors are reparented to us (not to a lazily reaping init), so that we
    can see them exit, reap them, and leave no zombies behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap(pids: set[int] | list[int], timeout_s: float) -> dict[int, int]:
    """Reap those of ``pids`` that are (orphaned) children of ours; returns their wait statuses.
    Pids that are not our children (reaped by their supervisor already) are skipped."""
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while True:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                statuses[pid] = status
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.01)
    return statuses


def run_cli(*args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CORRAL, *args],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


FAST_DEFAULTS: dict[str, dict[str, Any]] = {
    "pool": {"ready_timeout_s": 15, "graceful_timeout_s": 5, "kill_timeout_s": 2},
    "health": {"heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 5, "monitor_interval_s": 0.2},
    "logging": {"stderr": True},
}


def outage_pool(corral: Callable[..., Corral], server: Standalone, workers: int, extra: str = "") -> Corral:
    """A pool of queue consumers on ``server`` (its leases renewed every 8/3 s), not started;
    ``extra``: more of its config (TOML tables)."""
    sup = corral(
        worker="corral.workers.base:BaseWorker", workers=workers, redis={"url": server.url, "member_ttl_s": 8}
    )
    queue = '[[queues]]\nnames = ["jobs"]\nhandler = "tests.integration.workers.redis_handlers:count_job"\n'
    sup.config.write_text(sup.config.read_text() + extra + queue + "block_s = 0.2\n")
    return sup


@pytest.fixture
def locked_redis() -> Iterator[Standalone]:
    """A server of this test alone, on a loopback port behind a password; stopped at the end."""
    server = Standalone().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def corral(tmp_path: Path) -> Iterator[Callable[..., Corral]]:
    """Factory of supervisors for one test; all of them are killed and reaped at teardown."""
    made: list[Corral] = []
    set_child_subreaper(True)

    def make(
        worker: str = "", workers: int = 2, like: Corral | None = None, **sections: dict[str, Any]
    ) -> Corral:
        if like is not None:  # a second supervisor on the same config (and so the same state dir)
            handle = Corral(like.root, like.config, name=f"supervisor-{len(made)}")
            made.append(handle)
            return handle
        root = tmp_path / f"corral-{len(made)}"
        root.mkdir()
        tables: dict[str, dict[str, Any]] = {
            "pool": {"name": "e2e", "workers": workers, "worker": worker},
            "paths": {"state_dir": "run", "log_dir": "logs"},
        }
        for name, defaults in FAST_DEFAULTS.items():
            tables.setdefault(name, {}).update(defaults)
        for name, table in sections.items():
            tables.setdefault(name, {}).update(table)
        handle = Corral(root, write_toml(root / "corral.toml", tables))
        made.append(handle)
        return handle

    yield make

    errors = []
    try:
        for handle in made:
            try:
                handle.kill_everything()
            except Exception as exc:  # keep cleaning the others
                errors.append(exc)
    finally:
        set_child_subreaper(False)
    if errors:
        raise errors[0]
