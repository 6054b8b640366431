"""One child interpreter as the supervisor sees it: spawn, signal, watch for exit, reap.

Exit is watched through a pidfd (Linux >= 5.3) registered with the event loop: no thread per child,
no SIGCHLD handler, and the child is reaped the moment it exits, so there are never zombies. The
child's stdout and stderr share one pipe whose bytes go to ``on_output`` (the slot's log file).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence

PR_SET_PDEATHSIG = 1
_PRCTL: Callable[..., int] | None = (
    ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
)
OutputSink = Callable[[bytes], None]  # called with each chunk of output, and b"" at its end


class _OutputPipe(asyncio.Protocol):
    def __init__(self, sink: OutputSink, done: asyncio.Future[None]) -> None:
        self.sink = sink
        self.done = done

    def data_received(self, data: bytes) -> None:
        self.sink(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink(b"")  # end of output: a sink may flush a last unterminated line
        if not self.done.done():
            self.done.set_result(None)


class ChildProcess:
    def __init__(self, popen: subprocess.Popen[bytes], output_done: asyncio.Future[None]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.output_done = output_done
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pidfd: int | None = None
        self._watch()

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def signal(self, sig: int) -> bool:
        """Send ``sig`` if the child has not been reaped yet (so never to a recycled pid)."""
        if self.exited.done():
            return False
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                self.popen.send_signal(sig)
        except ProcessLookupError:
            return False
        return True

    async def wait(self, timeout_s: float | None = None) -> int | None:
        """The exit code (negative: killed by that signal), or None if still running at the deadline."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.exited), timeout_s)
        except TimeoutError:
            return None

    def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # not Linux, or an old kernel: a thread waits instead
            loop.run_in_executor(None, self.popen.wait).add_done_callback(lambda _: self._reap())
            return
        loop.add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        if self.exited.done():
            return
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
        code = self.popen.wait()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self.exited.set_result(code)


def _die_with_parent() -> None:
    """Runs in the forked child before exec: one prctl call, resolved before any fork (no dlopen
    lock taken after the fork)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


async def spawn(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    pass_fds: Sequence[int],
    on_output: OutputSink,
    cwd: str | None = None,
    new_session: bool = False,
    die_with_parent: bool = False,
) -> ChildProcess:
    """Start a child with stdout+stderr on a pipe read by the event loop; ``new_session``: in a
    session (and process group) of its own, out of reach of signals sent to ours; ``die_with_parent``:
    SIGTERM to it when we die, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``, kept across exec)."""
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    try:
        popen = subprocess.Popen(  # noqa: ASYNC220 - fork+exec is quick; no blocking wait here
            list(argv),
            env=env,
            cwd=cwd,
            pass_fds=tuple(pass_fds),
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            close_fds=True,
            start_new_session=new_session,
            # the supervisor forks from its one event-loop thread: a preexec_fn is safe here
            preexec_fn=_die_with_parent if die_with_parent and _PRCTL is not None else None,  # noqa: PLW1509
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    done: asyncio.Future[None] = loop.create_future()
    reader = os.fdopen(read_fd, "rb", buffering=0)
    try:
        await loop.connect_read_pipe(lambda: _OutputPipe(on_output, done), reader)
    except BaseException:
        reader.close()
        with contextlib.suppress(ProcessLookupError):
            popen.kill()
        popen.wait()
        raise
    return ChildProcess(popen, done)
