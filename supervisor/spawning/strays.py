"""Orphans of our descendants that the kernel hands to us, the subreaper (``linux.become_subreaper``,
set for the zygote's children): a worker's own subprocess that outlived the worker becomes our
child, and nobody else will ever wait for it.

``StrayReaper.reap`` (every monitor round) reaps a zombie child of ours that nobody of ours watches
(not a worker, not the zygote) when it was seen as a grandchild before (an orphan we inherited) and
is still a zombie a sweep later, or when it has been a zombie for ``UNWATCHED_ZOMBIE_S`` (one that
died before a sweep saw it). A child of code in the supervisor itself (``[pool] setup``) is never a
grandchild and, whoever waits for it, is reaped by them long before that."""

from __future__ import annotations

import contextlib
import os
import time

import psutil

UNWATCHED_ZOMBIE_S = 60.0


class StrayReaper:
    def __init__(self) -> None:
        self.active = False  # set once we are a subreaper
        self._grandchildren: set[int] = set()  # pids seen below one of our children
        self._zombie_since: dict[int, float] = {}

    def saw(self, pid: int) -> bool:
        """Whether a sweep saw ``pid`` below one of our children (then reaped once it is ours)."""
        return pid in self._grandchildren

    def reap(self, known: set[int]) -> None:
        """One sweep; ``known``: pids of our own (workers, the zygote), watched by their pidfds."""
        me = os.getpid()
        now = time.monotonic()
        with contextlib.suppress(psutil.Error):
            descendants = psutil.Process(me).children(recursive=True)
            zombies = {}
            for proc in descendants:
                parent = _ppid(proc)
                if parent not in (me, None):
                    self._grandchildren.add(proc.pid)
                elif parent == me and proc.pid not in known and _status(proc) == psutil.STATUS_ZOMBIE:
                    zombies[proc.pid] = self._zombie_since.get(proc.pid, now)
            for pid, since in zombies.items():
                adopted = pid in self._grandchildren and pid in self._zombie_since
                if adopted or now - since >= UNWATCHED_ZOMBIE_S:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)
                    self._grandchildren.discard(pid)
            self._zombie_since = zombies
            alive = {proc.pid for proc in descendants}
            self._grandchildren &= alive


def _ppid(process: psutil.Process) -> int | None:
    try:
        return int(process.ppid())
    except psutil.Error:
        return None


def _status(process: psutil.Process) -> str:
    try:
        return str(process.status())
    except psutil.Error:
        return ""
