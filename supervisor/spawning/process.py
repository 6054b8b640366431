"""One child interpreter as the supervisor sees it: spawn, signal, watch for exit, reap.

Exit is watched through a pidfd (Linux >= 5.3) registered with the event loop: no thread per child,
no SIGCHLD handler, and the child is reaped the moment it exits, so there are never zombies. The
child's stdout and stderr share one pipe whose bytes go to ``on_output`` (the slot's log file).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Sequence
from functools import partial

from corral.supervisor.settings import OutputSink
from corral.supervisor.spawning.seed import start_piped

STATUS_LOST = 255  # the exit code of a child reaped by somebody else (as a shell says for one)


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
    """A child of ours by pid: exec'd by ``spawn`` (``wait`` is its ``Popen.wait``) or forked by a
    zygote and re-parented to us (``adopt``); either way we reap it, so its pid is never recycled
    under us while ``exited`` is not done."""

    def __init__(self, pid: int, output_done: asyncio.Future[None], wait: Callable[[], int]) -> None:
        self.pid = pid
        self.output_done = output_done
        self.returncode: int | None = None  # negative: killed by that signal
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._wait = wait
        self._pidfd: int | None = None
        self._watch()

    def signal(self, sig: int) -> bool:
        """Send ``sig`` if the child has not been reaped yet (so never to a recycled pid)."""
        if self.exited.done():
            return False
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.pid, sig)
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
            loop.run_in_executor(None, self._wait).add_done_callback(lambda f: self._reap(f.result()))
            return
        loop.add_reader(self._pidfd, self._reap)

    def _reap(self, code: int | None = None) -> None:
        if self.exited.done():
            return
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self.returncode = self._wait() if code is None else code
        self.exited.set_result(self.returncode)


def _wait_pid(pid: int) -> int:
    """Reap a child that is not a ``Popen``'s (one a zygote forked)."""
    try:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    except ChildProcessError:  # reaped by somebody else: its code is lost
        return STATUS_LOST


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
    popen, read_fd = start_piped(
        argv,
        env=env,
        pass_fds=pass_fds,
        cwd=cwd,
        new_session=new_session,
        death_signal=signal.SIGTERM if die_with_parent else None,
    )
    try:
        done = await read_output(read_fd, on_output)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            popen.kill()
        popen.wait()
        raise
    return ChildProcess(popen.pid, done, popen.wait)


def adopt(pid: int, output_done: asyncio.Future[None]) -> ChildProcess:
    """Watch a child a zygote forked for us (re-parented to us: ``linux.become_subreaper``)."""
    return ChildProcess(pid, output_done, partial(_wait_pid, pid))


async def read_output(read_fd: int, on_output: OutputSink) -> asyncio.Future[None]:
    """Drain a pipe's read end into ``on_output`` on the loop (closing it in the end); the future is
    done once every writer has closed the pipe."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    reader = os.fdopen(read_fd, "rb", buffering=0)
    try:
        await loop.connect_read_pipe(lambda: _OutputPipe(on_output, done), reader)
    except BaseException:
        reader.close()
        raise
    return done
