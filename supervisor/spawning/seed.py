"""A zygote process started before its children's code is known: ``corral run`` launches one before
it imports the rest of the supervisor, so that the zygote's imports (corral's child runtime, redis,
loguru) overlap the supervisor's own start; the pool's spawner adopts it once it knows the
children's spec (``Zygote.start(..., seed=...)``), and the zygote then imports the app.

``start_piped`` is how the supervisor starts any process. Imports nothing but the standard library,
the contract and ``linux``."""

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
from corral.supervisor.spawning import linux

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


def start_piped(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    pass_fds: Sequence[int],
    cwd: str | None = None,
    new_session: bool = False,
    death_signal: int | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``argv`` with its stdout and stderr on a new pipe, whose read end is returned (ours to
    read and close); ``new_session``: out of reach of signals sent to our group; ``death_signal``:
    sent to it when we die, even by SIGKILL (``PR_SET_PDEATHSIG``, kept across exec). The one way
    the supervisor starts a process, before its event loop runs (``launch``) or on it (``spawn``)."""
    read_fd, write_fd = os.pipe()
    die = partial(linux.die_with_parent, death_signal) if death_signal and linux.AVAILABLE else None
    try:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            pass_fds=tuple(pass_fds),
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            close_fds=True,
            start_new_session=new_session,
            preexec_fn=die,  # noqa: PLW1509 - one prctl call, from the only thread that forks
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return popen, read_fd


def launch(
    python: str = sys.executable,
    bootstrap: Sequence[str] = BOOTSTRAP,
    extra_env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Seed:
    """Start a zygote (SIGKILLed if we die: it holds nothing, and it ignores SIGTERM, since a
    signal to the whole group is ours); it imports corral's child runtime, then waits."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    argv = (python, *bootstrap, ZYGOTE_FLAG)
    extra = dict(extra_env or {})
    env = {**base_env(extra), ZYGOTE_FD_ENV: str(theirs.fileno())}
    try:
        process, read_fd = start_piped(
            argv, env=env, pass_fds=(theirs.fileno(),), cwd=cwd, death_signal=signal.SIGKILL
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return Seed(process, ours, read_fd, argv, extra, cwd)


def launch_early() -> Seed | None:
    """``corral run``'s first step (Linux only; None elsewhere, or when it cannot start one)."""
    if not linux.AVAILABLE:
        return None
    with contextlib.suppress(OSError):
        return launch()
    return None
