"""A zygote process started before its children's code is known: ``corral run`` launches one before
it imports the rest of the supervisor, so that the zygote's imports (corral's child runtime, redis,
loguru) overlap the supervisor's own start; the pool's spawner adopts it once it knows the
children's spec (``Zygote.start(..., seed=...)``), and the zygote then imports the app.

Imports nothing but the standard library, the contract and ``linux``."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from corral.contract import CHILD_MODULE, ZYGOTE_FD_ENV, ZYGOTE_FLAG
from corral.supervisor import linux

SYSTEMD_ENV = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"})
BOOTSTRAP = ("-m", CHILD_MODULE)


def base_env(extra: Mapping[str, str]) -> dict[str, str]:
    """Ours, without systemd's variables (systemd talks to the supervisor only), with ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ENV}
    env.update(extra)
    env.update(PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
    return env


@dataclass
class Seed:
    """A launched zygote not told its template yet: its process, our end of its socket, the read
    end of its output pipe, and how it was started."""

    process: subprocess.Popen[bytes]
    sock: socket.socket
    output_fd: int
    argv: tuple[str, ...]
    extra_env: dict[str, str]
    cwd: str | None
    taken: bool = False  # adopted by a pool's spawner, which closes or uses it

    def fits(self, python: str, bootstrap: Sequence[str], env: Mapping[str, str], cwd: str | None) -> bool:
        """Whether children started that way may come from it: the same interpreter, bootstrap and
        folder, and no variable read at an interpreter's start (``PYTHON*``) other than PYTHONPATH
        differs (those in ``env`` are set in the zygote when it learns its template)."""
        startup = {k: v for k, v in env.items() if k.startswith("PYTHON") and k != "PYTHONPATH"}
        same_start = all(self.extra_env.get(k) == v for k, v in startup.items())
        return self.argv == (python, *bootstrap, ZYGOTE_FLAG) and cwd == self.cwd and same_start

    def close(self) -> None:
        """Hang up on a seed nobody used (it exits at once) and reap it; once."""
        if self.sock.fileno() < 0:
            return
        self.sock.close()
        os.close(self.output_fd)
        try:
            self.process.wait(2.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def launch(
    python: str = sys.executable,
    bootstrap: Sequence[str] = BOOTSTRAP,
    extra_env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Seed:
    """Start a zygote (SIGKILLed if we die); it imports corral's child runtime, then waits."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    read_fd, write_fd = os.pipe()
    argv = (python, *bootstrap, ZYGOTE_FLAG)
    extra = dict(extra_env or {})
    try:
        process = subprocess.Popen(
            argv,
            env={**base_env(extra), ZYGOTE_FD_ENV: str(theirs.fileno())},
            cwd=cwd,
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            close_fds=True,
            # SIGKILL: it holds nothing, and it ignores SIGTERM (a signal to the whole group is ours)
            preexec_fn=partial(linux.die_with_parent, signal.SIGKILL) if linux.AVAILABLE else None,  # noqa: PLW1509
        )
    except BaseException:
        ours.close()
        os.close(read_fd)
        raise
    finally:
        theirs.close()
        os.close(write_fd)
    return Seed(process, ours, read_fd, argv, extra, cwd)


def launch_early() -> Seed | None:
    """``corral run``'s first step (Linux only; None elsewhere, or when it cannot start one)."""
    if not linux.AVAILABLE:
        return None
    with contextlib.suppress(OSError):
        return launch()
    return None
