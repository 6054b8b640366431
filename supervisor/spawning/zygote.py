"""The supervisor's side of a zygote: start one, ask it for children, close it.

The zygote (``corral.workers.zygote``) is an exec'd child like any other, run with
``ZYGOTE_FLAG``; it imports the children's code once, then forks each child in a millisecond or so.
The conversation is one request at a time over a socketpair (``corral.ipc.fdpass``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from dataclasses import dataclass

from loguru import logger

from corral.contract import ChildSpec, ExitCode, ZygoteReply
from corral.ipc import ProtocolError, fdpass
from corral.ipc.errors import EndOfStream
from corral.supervisor.settings import OutputSink, PoolSettings
from corral.supervisor.spawning.process import ChildProcess, adopt, read_output
from corral.supervisor.spawning.seed import Seed, launch

FORK_TIMEOUT_S = 10.0  # a fork answers in milliseconds: past this the zygote is broken
CLOSE_TIMEOUT_S = 2.0  # hung up on, it exits at once; past this, SIGKILL
SAID_MAX_BYTES = 16 * 1024


class ZygoteGone(Exception):
    """The zygote was gone before it was asked for a child: exec one instead."""


class ForkFailed(Exception):
    """The zygote was asked for a child and gave no pid (it died, hung, or its fork failed): a child
    may exist all the same, holding the IPC end it was sent, so this spawn failed as a whole."""


@dataclass(frozen=True)
class Refusal:
    """Why a zygote is not serving: the import problems of the code (one line each), or why forking
    it would be unsafe (then children are exec'd and the imports were fine)."""

    problems: list[str]
    unsafe: str = ""


class Zygote:
    def __init__(self, process: ChildProcess, sock: socket.socket, pid: int) -> None:
        self.process = process
        self.pid = pid
        self._sock: socket.socket | None = sock
        self._lock = asyncio.Lock()
        self.log = logger.bind(zygote=pid)
        process.exited.add_done_callback(self._exited)

    def _exited(self, exited: asyncio.Future[int]) -> None:
        if self._sock is not None:  # not closed by us
            why = ExitCode.describe(exited.result())
            self.log.warning("zygote pid {} exited ({}); the next child starts another", self.pid, why)

    @property
    def alive(self) -> bool:
        return not self.process.exited.done() and self._sock is not None

    @classmethod
    async def start(
        cls, template: ChildSpec, settings: PoolSettings, on_output: OutputSink, seed: Seed | None = None
    ) -> Zygote | Refusal:
        """A zygote for children like ``template``, once it has imported their code: ``seed`` (one
        launched before, ``corral run``'s) or one launched now."""
        said = bytearray()  # what it printed while importing: part of the problems when they fail

        def tee(data: bytes) -> None:
            said.extend(data[: max(0, SAID_MAX_BYTES - len(said))])
            on_output(data)

        if seed is None:
            seed = launch(settings.python, settings.bootstrap, settings.env, settings.cwd)
        parent = seed.sock
        try:
            done = await read_output(seed.output_fd, tee)  # which now owns (and closes) that end
        except BaseException:
            parent.close()
            seed.process.kill()
            seed.process.wait()
            raise
        process = ChildProcess(seed.process.pid, done, seed.process.wait)
        with contextlib.suppress(OSError):  # it died already: the reply below says so
            fdpass.send(parent, {"spec": template.to_env(), "env": settings.env})
        parent.setblocking(False)
        try:
            reply = await asyncio.wait_for(fdpass.arecv(parent), settings.ready_timeout_s)
        except TimeoutError as exc:
            process.signal(signal.SIGKILL)  # still importing: it will not be used
            reply = {ZygoteReply.PROBLEMS: [_no_answer(exc, None, settings)]}
        except (EndOfStream, ProtocolError, OSError) as exc:
            reply = {ZygoteReply.PROBLEMS: [_no_answer(exc, await process.wait(CLOSE_TIMEOUT_S), settings)]}
        except BaseException:
            await _end(process, parent)
            raise
        if (pid := reply.get(ZygoteReply.READY)) is not None:
            said.clear()
            return cls(process, parent, int(pid))
        await _end(process, parent)  # and its output read to the end
        if (unsafe := reply.get(ZygoteReply.UNSAFE)) is not None:
            return Refusal([], str(unsafe))
        problems = [str(p) for p in reply.get(ZygoteReply.PROBLEMS) or ["the zygote said nothing"]]
        return Refusal(said.decode("utf-8", "replace").splitlines() + problems)

    async def fork(self, spec: ChildSpec, ipc_fd: int, on_output: OutputSink) -> ChildProcess:
        """A child of ``spec`` (its IPC end is ``ipc_fd``), forked and re-parented to us.
        ``ZygoteGone`` before the request went out (exec one instead); ``ForkFailed`` after (a child
        may exist and hold ``ipc_fd``: the caller must close its end). Cancelled, it still takes
        the child in hand, SIGKILLs it, and then lets the cancellation through."""
        asking = asyncio.ensure_future(self._fork(spec, ipc_fd, on_output))
        try:
            return await asyncio.shield(asking)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                (await asking).signal(signal.SIGKILL)  # nobody would watch it
            raise

    async def _fork(self, spec: ChildSpec, ipc_fd: int, on_output: OutputSink) -> ChildProcess:
        async with self._lock:
            if not self.alive:
                raise ZygoteGone("the zygote has exited")
            read_fd, write_fd = os.pipe()
            try:
                reply = await self._ask(spec, (ipc_fd, write_fd))
            except BaseException:
                os.close(read_fd)
                raise
            finally:
                os.close(write_fd)
        pid = reply.get(ZygoteReply.PID)
        if not isinstance(pid, int):
            os.close(read_fd)
            raise ForkFailed(str(reply.get(ZygoteReply.ERROR) or f"a reply without a pid: {reply!r}"))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        child = adopt(pid, done)  # watched (its pidfd) before anything else can fail
        try:
            (await read_output(read_fd, on_output)).add_done_callback(lambda _: done.set_result(None))
        except OSError:
            done.set_result(None)  # its output is lost, not the child
        return child

    async def close(self) -> None:
        """Hang up once no fork is in progress (it exits at once: its children are not its own);
        SIGKILL past the deadline."""
        async with self._lock:
            await self._close_now()

    async def _close_now(self) -> None:
        sock, self._sock = self._sock, None
        await _end(self.process, sock, CLOSE_TIMEOUT_S)

    async def _ask(self, spec: ChildSpec, fds: tuple[int, int]) -> dict[str, object]:
        sock = self._sock
        assert sock is not None
        try:
            fdpass.send(sock, {"spec": spec.to_env()}, fds)
        except OSError as exc:  # nothing went out: no child
            await self._close_now()
            raise ZygoteGone(repr(exc)) from exc
        try:
            return await asyncio.wait_for(fdpass.arecv(sock), FORK_TIMEOUT_S)
        except (TimeoutError, EndOfStream, ProtocolError, OSError) as exc:
            self.log.warning("zygote pid {}: no answer to a fork ({!r}); closing it", self.pid, exc)
            await self._close_now()
            raise ForkFailed(repr(exc)) from exc
        except BaseException:  # cancelled mid-request: its answer would be read as the next one's
            await asyncio.shield(self._close_now())
            raise


def _no_answer(exc: BaseException, code: int | None, settings: PoolSettings) -> str:
    if isinstance(exc, TimeoutError):
        return f"importing the worker and handlers took over {settings.ready_timeout_s:g}s"
    return f"the zygote ended before it was ready: {ExitCode.describe(code)}"


async def _end(process: ChildProcess, sock: socket.socket | None, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
    if sock is not None:
        sock.close()
    if await process.wait(timeout_s) is None:
        process.signal(signal.SIGKILL)
        await process.wait()
    with contextlib.suppress(TimeoutError):  # its last output reaches the log
        await asyncio.wait_for(asyncio.shield(process.output_done), 1.0)
