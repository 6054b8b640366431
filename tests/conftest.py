"""Shared fixtures: ``async def`` tests and coroutines run without pytest-asyncio (a hook, with a
deadline), and child processes that never leak."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from loguru import logger

from corral import ipc

REPO_ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

# Upper bound for any single test coroutine; well below the global pytest timeout (120 s) so a hang
# shows up as a TimeoutError with a traceback pointing at the await that hung.
ASYNC_TEST_TIMEOUT_S = 60.0


def _run(coro: Coroutine[Any, Any, T], timeout_s: float = ASYNC_TEST_TIMEOUT_S) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(bounded())


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """An ``async def test_...`` runs in a fresh event loop, with a deadline: ``ASYNC_TEST_TIMEOUT_S``,
    or ``@pytest.mark.deadline(seconds)``."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    marker = pyfuncitem.get_closest_marker("deadline")
    timeout_s = float(marker.args[0]) if marker else ASYNC_TEST_TIMEOUT_S
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    _run(pyfuncitem.obj(**arguments), timeout_s)
    return True


@pytest.fixture
def run() -> Callable[..., Any]:
    """``run(coro, timeout_s=60)``: run a coroutine in a fresh event loop, with a deadline."""
    return _run


@dataclass
class Peer:
    """A child ``tests.integration.ipc.peer`` process and the parent's end of its socketpair."""

    proc: subprocess.Popen[bytes]
    sock: socket.socket

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def open(self, **options: Any) -> ipc.Channel:
        """Open the parent's channel on this peer's socket (inside the running loop)."""
        return await ipc.Channel.open(self.sock, name=f"peer-{self.pid}", **options)

    async def wait_exit(self, timeout_s: float = 10.0) -> int:
        """The child's exit code; raises ``subprocess.TimeoutExpired`` after ``timeout_s``."""
        return await asyncio.to_thread(self.proc.wait, timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)


@pytest.fixture
def spawn_peer() -> Iterator[Callable[..., Peer]]:
    """Factory: ``spawn_peer(mode="normal", **channel_options)`` starts a child running
    ``python -m tests.integration.ipc.peer FD MODE OPTIONS`` on one end of ``ipc.socketpair()``.

    Every child is SIGKILLed (by pid, if still alive) and reaped when the test ends, pass or fail.
    """
    peers: list[Peer] = []

    def spawn(mode: str = "normal", **child_options: Any) -> Peer:
        parent_sock, child_sock = ipc.socketpair()
        try:
            fd = child_sock.fileno()
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.integration.ipc.peer",
                    str(fd),
                    mode,
                    json.dumps(child_options),
                ],
                pass_fds=[fd],
                cwd=REPO_ROOT,
            )
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()  # the child has its own copy; keeping ours would hide the child's EOF
        peer = Peer(proc, parent_sock)
        peers.append(peer)
        return peer

    yield spawn

    for peer in peers:
        peer.kill()
    for peer in peers:
        try:
            peer.proc.wait(timeout=10)
        finally:
            peer.sock.close()


@dataclass
class LogCapture:
    """Loguru records at every level, as ``(level name, message, has exception)``."""

    records: list[tuple[str, str, bool]]

    def at_least(self, level_no: int) -> list[tuple[str, str, bool]]:
        return [r for r in self.records if logger.level(r[0]).no >= level_no]

    def errors(self) -> list[tuple[str, str, bool]]:
        return [r for r in self.records if logger.level(r[0]).no >= logger.level("ERROR").no or r[2]]


@pytest.fixture
def loguru_records() -> Iterator[LogCapture]:
    """Everything the parent side logs through loguru during the test."""
    capture = LogCapture([])

    def sink(message: Any) -> None:
        record = message.record
        capture.records.append((record["level"].name, record["message"], record["exception"] is not None))

    sink_id = logger.add(sink, level="DEBUG", format="{message}", catch=False)
    try:
        yield capture
    finally:
        logger.remove(sink_id)


# -- a real Redis-compatible server for the session ----------------------------------------------


class RedisServer:
    """A private ``valkey-server`` on a Unix socket, append-only persistence on (restartable)."""

    kind = "standalone"

    def __init__(self, workdir: Path) -> None:
        from corral.supervisor.redis_server import find_server

        self.binary = find_server()
        self.workdir = workdir
        self.socket_path = workdir / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        import time

        from corral.supervisor.redis_server import EmbeddedRedis

        server = EmbeddedRedis(self.workdir)  # the same server corral embeds, its data in workdir/redis
        server.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            server.argv(self.binary),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    return
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"{self.binary} did not start on {self.socket_path}") from None
                time.sleep(0.01)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def restart(self) -> None:
        """Stop (SIGTERM: the AOF is flushed) and start again on the same socket and data."""
        self.stop()
        self.start()

    def client(self) -> Any:
        import redis

        return redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=5)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server for the whole session; tests use their own keys (or ``redis_clean``)."""
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="corral-redis-"))  # short: Unix socket paths are limited
    server = RedisServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)


@pytest.fixture
def redis_clean(redis_server: RedisServer) -> RedisServer:
    """The session server, emptied (FLUSHALL) and running before the test."""
    if server_down(redis_server):
        redis_server.start()
    redis_server.client().flushall()
    return redis_server


def server_down(server: RedisServer) -> bool:
    return server.proc is None or server.proc.poll() is not None


# -- the other topologies: a Valkey Cluster and a Sentinel-watched primary ----------------------

TOPOLOGIES = ("standalone", "cluster", "sentinel")


@pytest.fixture(scope="session")
def valkey_cluster() -> Iterator[Any]:
    """3 primaries + 3 replicas on loopback ports, for the session (started on first use)."""
    from tests.servers import Cluster

    cluster = Cluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def valkey_sentinel() -> Iterator[Any]:
    """A primary, a replica and 3 Sentinels, for the session (started on first use)."""
    from tests.servers import Sentinels

    sentinels = Sentinels().start()
    try:
        yield sentinels
    finally:
        sentinels.stop()


@pytest.fixture(params=TOPOLOGIES)
def redis_any(request: pytest.FixtureRequest) -> Any:
    """Each topology in turn, emptied: ``.url`` (what a user would configure), ``.client()``."""
    if request.param == "standalone":
        return request.getfixturevalue("redis_clean")
    topology = request.getfixturevalue(f"valkey_{request.param}")
    topology.heal()
    topology.flushall()
    return topology
