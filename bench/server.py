"""The bench's private valkey-server: TCP on a free 127.0.0.1 port and a Unix socket, no persistence."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import redis

from corral.supervisor.redis_server import find_server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Server:
    """A private valkey-server on 127.0.0.1 (TCP) and a Unix socket; no persistence."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.socket_path = workdir / "redis.sock"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def tcp_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self) -> None:
        binary = find_server()
        self.port = free_port()
        argv = [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--unixsocket",
            str(self.socket_path),
        ]
        argv += ["--unixsocketperm", "700", "--dir", str(self.workdir), "--save", "", "--appendonly", "no"]
        with (self.workdir / "valkey.log").open("wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10.0
        while True:
            try:
                if self.client().ping():
                    return
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{binary} did not start; see {self.workdir / 'valkey.log'}") from None
                time.sleep(0.02)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
