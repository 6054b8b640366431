"""How a pool's children start (``[pool] spawn``): forked from a preloaded zygote (the default), or
exec'd as fresh interpreters.

A zygote is started by ``prepare`` (the supervisor's import check before the first child and before
a reload: the zygote's imports are the check) or, for a pool used from Python, by the first spawn.
A reload starts a fresh zygote, so the new children run the code on disk now; until then, a
restarted slot runs the code its siblings run. Children are exec'd instead when the zygote cannot
be used: not Linux (no subreaper), a thread running after the imports (``Refusal.unsafe``), code
that does not import (each exec'd child then fails with ``ExitCode.BOOT_IMPORT`` as before), or a
zygote that died (a new one is started by the next spawn).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from enum import StrEnum

import psutil
from loguru import logger

from corral.contract import ChildSpec
from corral.supervisor.childenv import check_imports, child_env
from corral.supervisor.process import ChildProcess, OutputSink, become_subreaper, spawn
from corral.supervisor.settings import PoolSettings
from corral.supervisor.zygote import Refusal, Zygote, ZygoteGone


class SpawnMethod(StrEnum):
    ZYGOTE = "zygote"
    EXEC = "exec"


class Spawner:
    def __init__(self, pool: str) -> None:
        self.log = logger.bind(pool=pool)
        self.zygote: Zygote | None = None
        self.exec_reason = ""  # why children are exec'd though the zygote is asked for
        self._fresh = False  # a zygote prepared since the last reload: the reload's own check
        self._lock = asyncio.Lock()
        self._strays = StrayReaper()

    def method(self, settings: PoolSettings) -> SpawnMethod:
        if settings.spawn == SpawnMethod.EXEC or sys.platform != "linux":
            return SpawnMethod.EXEC
        return SpawnMethod.ZYGOTE

    async def prepare(self, template: ChildSpec, settings: PoolSettings, reload: bool = False) -> list[str]:
        """Import the children's code afresh (a new zygote, or a throwaway exec'd child); the
        problems found, one line each (empty: fine). ``reload``: the check of a reload that follows,
        which then uses this zygote (``renew``)."""
        if self.method(settings) is SpawnMethod.EXEC:
            return await check_imports(template, settings)
        async with self._lock:
            problems = await self._prepare(template, settings)
            self._fresh = reload and not problems
            return problems

    async def renew(self, template: ChildSpec, settings: PoolSettings) -> None:
        """A reload: the next children run the code on disk now (the zygote of the reload's check,
        or a new one)."""
        fresh, self._fresh = self._fresh, False
        if self.method(settings) is SpawnMethod.ZYGOTE and not fresh:
            async with self._lock:
                await self._prepare(template, settings)

    async def start(
        self, spec: ChildSpec, template: ChildSpec, settings: PoolSettings, on_output: OutputSink
    ) -> ChildProcess:
        """A child of ``spec`` (its IPC end is ``spec.fd``): forked when a zygote serves, else exec'd."""
        zygote = await self._zygote(template, settings)
        if zygote is not None:
            try:
                return await zygote.fork(spec, spec.fd, on_output)
            except ZygoteGone as exc:
                self.log.warning("zygote pid {} gave no child ({}); exec'ing this one", zygote.pid, exc)
        return await spawn(
            [settings.python, *settings.bootstrap],
            env=child_env(spec, settings),
            pass_fds=[spec.fd],
            on_output=on_output,
            cwd=settings.cwd,
        )

    def reap_strays(self, known: set[int]) -> None:
        """Reap orphans of our descendants that became ours as the subreaper (see ``StrayReaper``)."""
        if self.zygote is not None or self._strays.active:
            self._strays.reap(known | ({self.zygote.process.pid} if self.zygote else set()))

    async def close(self) -> None:
        zygote, self.zygote = self.zygote, None
        if zygote is not None:
            await zygote.close()

    async def _zygote(self, template: ChildSpec, settings: PoolSettings) -> Zygote | None:
        if self.method(settings) is SpawnMethod.EXEC:
            return None
        async with self._lock:
            if self.zygote is not None and not self.zygote.alive:
                self.log.warning("zygote pid {} has exited; starting another", self.zygote.pid)
                await self.close()
            if self.zygote is None and not self.exec_reason:
                await self._prepare(template, settings)
            return self.zygote

    async def _prepare(self, template: ChildSpec, settings: PoolSettings) -> list[str]:
        if not become_subreaper():
            self.exec_reason = "this system cannot re-parent a zygote's children to the supervisor"
            return await check_imports(template, settings)
        self._strays.active = True
        started = await Zygote.start(template, settings, settings.output("zygote"))
        if isinstance(started, Refusal):
            if started.unsafe:  # the new code cannot be preloaded: no zygote, not even the old one
                await self.close()
                self.exec_reason = started.unsafe
                self.log.warning("children are exec'd, not forked from a zygote: {}", started.unsafe)
            elif self.zygote is None:  # else the running code's zygote stays (a reload is refused)
                self.exec_reason = "the code does not import"
            return started.problems
        old, self.zygote = self.zygote, started
        self.exec_reason = ""
        self.log.info("zygote pid {} ready: children are forked from it", started.pid)
        if old is not None:
            await old.close()
        return []


class StrayReaper:
    """As the subreaper we inherit the orphans of our descendants (a worker's own subprocess that
    outlived it): reap those left zombies for two sweeps running. Our own children are reaped the
    moment they exit (their pidfd), so a zombie that lasts a sweep is nobody's but ours to reap."""

    def __init__(self) -> None:
        self.active = False
        self._seen: set[int] = set()

    def reap(self, known: set[int]) -> None:
        with contextlib.suppress(psutil.Error):
            zombies = {
                p.pid
                for p in psutil.Process().children()
                if p.pid not in known and _status(p) == psutil.STATUS_ZOMBIE
            }
            for pid in zombies & self._seen:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            self._seen = zombies - self._seen


def _status(process: psutil.Process) -> str:
    try:
        return str(process.status())
    except psutil.Error:
        return ""
