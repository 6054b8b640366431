"""The zygote: an interpreter that has imported what the children run and forks them on request.

``python -m corral.workers.child --zygote`` runs ``serve``: with corral's child runtime imported,
it waits for its template ``ChildSpec`` (``corral run`` starts it before it knows one), imports the
worker and every handler (so it is the import check too), then, with no thread and no event loop in
it, answers each request of the supervisor (a child's spec, and the child's IPC socket and output
pipe as descriptors) with the pid of a child forked from it.

A child is forked twice (zygote -> a go-between -> the child) and the go-between exits at once, so
the child is re-parented to the supervisor (a ``PR_SET_CHILD_SUBREAPER``): the supervisor reaps it,
reads its exit code and signals it as it does an exec'd child, and the zygote's death does not touch
it. The child waits to see the supervisor as its parent, then boots as an exec'd child does
(``run_child``) and leaves with ``os._exit``: it never returns into the zygote's loop.

Preloading is unsafe when importing the code starts a thread (a fork copies only the forking
thread: a lock it held stays held) or opens connections the children would share; the zygote
refuses to serve when a thread runs after the imports and the supervisor execs children instead.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import gc
import os
import signal
import socket
import sys
import threading
import time
import traceback

from setproctitle import setproctitle

from corral.contract import SPEC_ENV, ZYGOTE_FD_ENV, BadChildSpec, ChildSpec, ExitCode, ZygoteReply
from corral.ipc import ProtocolError, fdpass
from corral.ipc.errors import EndOfStream
from corral.workers.boot import cancellable_wait_for, check, run_child

REPARENT_TIMEOUT_S = 2.0  # the go-between exits right after its fork: this is a deadline, not a wait


def serve() -> int:
    """The zygote's whole life: learn its template, preload, report, fork children until the
    supervisor hangs up."""
    # a signal to the whole group (Ctrl-C, a service's stop) is the supervisor's to act on: it
    # closes us (we leave at its socket's end, or by SIGKILL when it dies: PR_SET_PDEATHSIG)
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    try:
        sock = socket.socket(fileno=int(os.environ.pop(ZYGOTE_FD_ENV)))
        template, _ = fdpass.recv(sock)  # corral's runtime is imported: now the app's code
    except (KeyError, ValueError, OSError) as exc:
        print(
            f"corral zygote: no socket to the supervisor ({exc!r}): it is started by corral", file=sys.stderr
        )
        return ExitCode.BOOT_USAGE
    except (EndOfStream, ProtocolError):
        return ExitCode.OK  # the supervisor did not need us (a bad config, another one running)
    try:
        spec = learn(template)
    except BadChildSpec as exc:
        print(f"corral zygote: {exc}", file=sys.stderr)
        return ExitCode.BOOT_USAGE
    setproctitle(f"corral: {spec.pool} zygote")
    cancellable_wait_for()  # what run_child does first, done once for every child
    if problems := check(spec):
        fdpass.send(sock, {ZygoteReply.PROBLEMS: problems})
        return ExitCode.BOOT_IMPORT
    if unsafe := threads_running():
        fdpass.send(sock, {ZygoteReply.UNSAFE: f"threads running after the imports: {unsafe}"})
        return ExitCode.OK
    gc.collect()
    gc.freeze()  # what the imports made stays out of the children's collections: fewer copied pages
    fdpass.send(sock, {ZygoteReply.READY: os.getpid()})
    while True:
        try:
            request, fds = fdpass.recv(sock, max_fds=2)
        except (EndOfStream, ConnectionError):
            return ExitCode.OK
        fdpass.send(sock, fork_child(sock, request.get("spec", ""), fds))


def learn(template: dict[str, object]) -> ChildSpec:
    """The children's environment (and import path) and their template spec, from the supervisor."""
    env = template.get("env")
    if isinstance(env, dict):
        os.environ.update({str(k): str(v) for k, v in env.items()})
        path = [p for p in str(env.get("PYTHONPATH", "")).split(os.pathsep) if p and p not in sys.path]
        sys.path[:0] = path  # as an interpreter started with it would have
    return ChildSpec.from_env(str(template.get("spec") or ""))


def threads_running() -> str:
    """The threads other than ours (a fork would copy none of them): Python's by name, and those a
    C library started (the kernel's count of our tasks is higher)."""
    names = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    with contextlib.suppress(OSError):
        native = len(os.listdir("/proc/self/task")) - 1 - len(names)
        names += [f"{native} started outside Python"] if native > 0 else []
    return ", ".join(names)


def fork_child(sock: socket.socket, raw_spec: str, fds: list[int]) -> dict[str, object]:
    """Fork one child (through a go-between that exits at once); its pid, or why not."""
    if len(fds) != 2:
        for fd in fds:
            os.close(fd)
        return {ZygoteReply.ERROR: f"a fork request carries 2 descriptors, not {len(fds)}"}
    ipc_fd, out_fd = fds
    read_fd = write_fd = -1
    pid_bytes = b""
    try:
        read_fd, write_fd = os.pipe()
        between = os.fork()
        if between == 0:
            _go_between(sock, raw_spec, (ipc_fd, out_fd), (read_fd, write_fd))
        os.close(write_fd)
        write_fd = -1
        try:
            pid_bytes = _read_all(read_fd, 4)
        finally:
            os.waitpid(between, 0)  # once reaped, its child is the supervisor's
    except OSError as exc:
        return {ZygoteReply.ERROR: f"fork failed: {exc}"}
    finally:
        for fd in (ipc_fd, out_fd, read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
    if len(pid_bytes) != 4:
        return {ZygoteReply.ERROR: "the go-between exited without a pid"}
    return {ZygoteReply.PID: int.from_bytes(pid_bytes, "big")}


def _go_between(sock: socket.socket, raw_spec: str, fds: tuple[int, int], pipe: tuple[int, int]) -> None:
    """In the go-between: fork the child, tell the zygote its pid through ``pipe``, exit."""
    read_fd, write_fd = pipe
    try:
        os.close(read_fd)
        pid = os.fork()
        if pid == 0:
            os.close(write_fd)
            _become_child(sock, raw_spec, *fds)
        os.write(write_fd, pid.to_bytes(4, "big"))
    finally:
        os._exit(0)


def _become_child(sock: socket.socket, raw_spec: str, ipc_fd: int, out_fd: int) -> None:
    """In the forked child: take its descriptors, wait to be the supervisor's, boot; never returns."""
    code: int = ExitCode.CRASHED
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the zygote ignores it; a child stops on it
        sock.close()
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(out_fd)
        spec = dataclasses.replace(ChildSpec.from_env(raw_spec), fd=ipc_fd)
        deadline = time.monotonic() + REPARENT_TIMEOUT_S
        while os.getppid() != spec.parent_pid:  # the go-between is exiting: microseconds
            if time.monotonic() > deadline:
                os._exit(ExitCode.ORPHANED)
            time.sleep(0.001)
        os.environ[SPEC_ENV] = raw_spec = spec.to_env()  # as an exec'd child's environment says
        code = run_child(raw_spec)
    except SystemExit as exc:  # sys.exit() in the worker's code: leave as an interpreter would
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()  # what an interpreter's exit runs (a tracer's last spans, ...)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _read_all(fd: int, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            break
        data += chunk
    return data
