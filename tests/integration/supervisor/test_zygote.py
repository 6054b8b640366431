"""Children forked from a preloaded zygote (``[pool] spawn = "zygote"``, the default) and exec'd
ones (``"exec"``), through the pool's Python API with real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from corral.supervisor import WorkerConnection, WorkerPool, WorkerState
from corral.supervisor.spawning import zygote as zygote_module
from corral.supervisor.spawning.zygote import Zygote
from tests.integration.conftest import kill_children, wait_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the zygote needs Linux (a subreaper)")

APP = """\
import atexit, os, pathlib, subprocess, sys, threading, time
from corral.workers import BaseWorker

HERE = pathlib.Path(__file__).parent

VERSION = {version!r}
if {thread!r}:
    threading.Thread(target=time.sleep, args=(3600,), name="warm-cache", daemon=True).start()


class Worker(BaseWorker):
    async def start(self):
        atexit.register((HERE / f"exited-{{os.getpid()}}").touch)  # an interpreter's exit runs it
        self.on("version", lambda _d: {{
            "version": VERSION, "pid": os.getpid(), "ppid": os.getppid(),
            "forked": "corral.workers.zygote" in sys.modules,  # an exec'd child never loads it
        }})
        self.on("spawn_sleeper", lambda s: subprocess.Popen(["sleep", str(s)]).pid)
        await super().start()

    async def run(self):
        await self.stopping.wait()
"""


class App:
    """A worker module in a folder of its own, rewritten at will (its code "on disk")."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.module = f"zygote_app_{uuid.uuid4().hex[:8]}"
        self.write("v1")

    def write(self, version: str, thread: bool = False) -> None:
        path = self.folder / f"{self.module}.py"
        path.write_text(textwrap.dedent(APP.format(version=version, thread=thread)))
        os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 10**9))  # a new mtime: no stale .pyc

    @property
    def target(self) -> str:
        return f"{self.module}:Worker"


@pytest.fixture
def app(tmp_path: Path) -> App:
    return App(tmp_path)


@pytest.fixture
def make_pool(app: App) -> Iterator[Callable[..., WorkerPool]]:
    """Pools of ``app``'s worker; every child and zygote SIGKILLed at teardown if still alive."""
    pids: list[int] = []
    pools: list[WorkerPool] = []

    def make(size: int, **settings: Any) -> WorkerPool:
        settings.setdefault("ready_timeout_s", 20.0)
        settings.setdefault("output", lambda _slot: lambda _data: None)
        path = os.pathsep.join([str(app.folder), *sys.path])
        settings.setdefault("env", {"PYTHONPATH": path})
        pool = WorkerPool("test", size, app.target, **settings)
        pool.on("spawning", lambda conn: pids.append(conn.pid))
        pools.append(pool)
        return pool

    yield make
    kill_children(pids + [p.spawner.zygote.pid for p in pools if p.spawner.zygote])


def zygote_pid(pool: WorkerPool) -> int:
    assert pool.spawner.zygote is not None and pool.spawner.zygote.alive, pool.spawner.exec_reason
    return pool.spawner.zygote.pid


async def kill_and_replace(pool: WorkerPool, slot: int) -> WorkerConnection:
    """SIGKILL the slot's child; once it is reaped and a new child is ready, the old one."""
    victim = pool.get(slot)
    assert victim is not None
    os.kill(victim.pid, signal.SIGKILL)
    assert await victim.process.wait(10) is not None, "the killed child was not reaped"
    await wait_for(lambda: pool.get(slot) not in (None, victim), 10, f"slot {slot} replaced")
    assert await pool.wait_ready(10)
    return victim


async def ask_version(pool: WorkerPool, slot: int) -> dict[str, Any]:
    conn = pool.get(slot)
    assert conn is not None
    answer: dict[str, Any] = await conn.request("version", None, timeout_s=5)
    return answer


async def test_children_are_forked_ours_and_healed_from_the_zygote(
    make_pool: Callable[..., WorkerPool], app: App
) -> None:
    pool = make_pool(2)
    try:
        assert await pool.spawn_all()
        zygote = zygote_pid(pool)
        for slot in (0, 1):
            answer = await ask_version(pool, slot)
            assert answer["ppid"] == os.getpid()  # re-parented to us, not the zygote's
            assert answer["forked"]
            assert psutil.Process(answer["pid"]).cmdline()[0] == f"corral: test worker {slot}"
        assert psutil.Process(zygote).cmdline()[0] == "corral: test zygote"
        victim = await kill_and_replace(pool, 0)
        assert victim.process.returncode == -signal.SIGKILL  # we reap it: its real code
        assert (await ask_version(pool, 0))["forked"]
        assert zygote_pid(pool) == zygote
        pids = [c.pid for c in pool.connections()]
    finally:
        await pool.stop(graceful_timeout_s=5)
    assert pool.spawner.zygote is None and gone(zygote)
    assert all((app.folder / f"exited-{pid}").exists() for pid in pids), "atexit did not run"


async def test_a_reload_runs_the_code_on_disk_from_a_fresh_zygote(
    make_pool: Callable[..., WorkerPool], app: App
) -> None:
    pool = make_pool(2)
    try:
        assert await pool.spawn_all()
        first = zygote_pid(pool)
        app.write("v2")
        assert await pool.check_imports(reload=True) == []  # a reload's check: a zygote aside
        await kill_and_replace(pool, 1)  # a crash restart keeps the running code...
        assert (await ask_version(pool, 1))["version"] == "v1"
        assert zygote_pid(pool) == first
        assert await pool.reload()  # ...a reload takes the new one
        assert zygote_pid(pool) != first
        assert [(await ask_version(pool, s))["version"] for s in (0, 1)] == ["v2", "v2"]
        await wait_for(lambda: gone(first), 5, "the old zygote gone")
    finally:
        await pool.stop(graceful_timeout_s=5)


async def test_code_that_starts_a_thread_at_import_is_execd(
    make_pool: Callable[..., WorkerPool], app: App
) -> None:
    app.write("threaded", thread=True)
    pool = make_pool(1)
    try:
        assert await pool.spawn_all()
        assert pool.spawner.zygote is None
        assert "warm-cache" in pool.spawner.exec_reason
        answer = await ask_version(pool, 0)
        assert answer["version"] == "threaded" and not answer["forked"]
    finally:
        await pool.stop(graceful_timeout_s=5)


async def test_exec_spawning_and_a_dead_zygote(make_pool: Callable[..., WorkerPool]) -> None:
    execd = make_pool(1, spawn="exec")
    pool = make_pool(1)
    try:
        assert await execd.spawn_all()
        assert execd.spawner.zygote is None and not (await ask_version(execd, 0))["forked"]
        assert await pool.spawn_all()
        os.kill(zygote_pid(pool), signal.SIGKILL)  # its children live on: they are ours
        await wait_for(lambda: pool.spawner.zygote and not pool.spawner.zygote.alive, 5, "zygote dead")
        conn = pool.get(0)
        assert conn is not None and conn.state is WorkerState.READY
        await ask_version(pool, 0)
        await kill_and_replace(pool, 0)  # its replacement comes from a new zygote
        assert (await ask_version(pool, 0))["forked"]
    finally:
        await asyncio.gather(execd.stop(graceful_timeout_s=5), pool.stop(graceful_timeout_s=5))


async def test_orphans_of_a_killed_child_are_reaped(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(1, monitor_interval_s=0.1)
    try:
        assert await pool.spawn_all()
        conn = pool.get(0)
        assert conn is not None
        sleeper = await conn.request("spawn_sleeper", 1.5, timeout_s=5)
        # a monitor sweep sees it below its worker: an orphan we inherit, not a child some code
        # of ours waits for (on a loaded machine the sweeps may come late: wait for one)
        await wait_for(lambda: pool.spawner.saw_below_a_child(sleeper), 5, "the sleeper seen by a sweep")
        os.kill(conn.pid, signal.SIGKILL)  # its sleeper becomes ours (the subreaper)...
        await wait_for(lambda: psutil.Process(sleeper).ppid() == os.getpid(), 5, "sleeper adopted")
        await wait_for(lambda: not psutil.pid_exists(sleeper), 10, "sleeper reaped, no zombie")
    finally:
        await pool.stop(graceful_timeout_s=5)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_a_fork_that_gets_no_answer_fails_the_start_and_heals(
    make_pool: Callable[..., WorkerPool], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zygote_module, "FORK_TIMEOUT_S", 0.5)

    pool = make_pool(1)
    try:
        assert await pool.spawn_all()
        stuck = zygote_pid(pool)
        os.kill(stuck, signal.SIGSTOP)  # alive, answering nothing
        conn = pool.get(0)
        assert conn is not None
        os.kill(conn.pid, signal.SIGKILL)
        await wait_for(lambda: gone(stuck), 15, "the stuck zygote closed (killed)")
        await wait_for(lambda: pool.get(0) not in (None, conn), 15, "slot 0 started again")
        assert await pool.wait_ready(15)
        assert (await ask_version(pool, 0))["forked"]  # from a new zygote
        assert zygote_pid(pool) != stuck
    finally:
        await pool.stop(graceful_timeout_s=5)


async def test_a_fork_cancelled_in_flight_leaves_no_child(app: App) -> None:
    pool = WorkerPool("test", 1, app.target, env={"PYTHONPATH": str(app.folder)}, ready_timeout_s=20)
    template = pool.child_spec(0, -1)
    zygote = await Zygote.start(template, pool.settings, lambda _data: None)
    assert isinstance(zygote, Zygote)
    ours, theirs = socket.socketpair()
    try:
        before = {p.pid for p in psutil.Process().children()}
        forking = asyncio.ensure_future(
            zygote.fork(pool.child_spec(0, theirs.fileno()), theirs.fileno(), print)
        )
        await asyncio.sleep(0.001)  # the request is out
        forking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await forking

        def strays() -> set[int]:
            return {p.pid for p in psutil.Process().children()} - before - {zygote.pid}

        await wait_for(lambda: all(gone(pid) for pid in strays()), 10, "the forked child killed")
    finally:
        ours.close()
        theirs.close()
        await zygote.close()
