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
import sys
from enum import StrEnum

from loguru import logger

from corral.contract import ChildSpec
from corral.supervisor.settings import OutputSink, PoolSettings
from corral.supervisor.spawning.childenv import check_imports, child_env
from corral.supervisor.spawning.linux import become_subreaper
from corral.supervisor.spawning.process import ChildProcess, spawn
from corral.supervisor.spawning.seed import Seed
from corral.supervisor.spawning.strays import StrayReaper
from corral.supervisor.spawning.zygote import Refusal, Zygote, ZygoteGone


class SpawnMethod(StrEnum):
    ZYGOTE = "zygote"
    EXEC = "exec"


class Spawner:
    def __init__(self, pool: str) -> None:
        self.log = logger.bind(pool=pool)
        self.zygote: Zygote | None = None
        self.exec_reason = ""  # why children are exec'd though the zygote is asked for
        self._pending: Zygote | Refusal | None = None  # a reload's zygote, checked, not used yet
        self._lock = asyncio.Lock()
        self._strays = StrayReaper()
        self._seed: Seed | None = None  # a zygote launched before we knew the children (corral run)

    def adopt(self, seed: Seed | None) -> None:
        """Use ``seed`` for the first zygote, if it fits the children's settings then."""
        if self._seed is not None:
            self._seed.close()
        if seed is not None:
            seed.taken = True
        self._seed = seed

    def method(self, settings: PoolSettings) -> SpawnMethod:
        if settings.spawn == SpawnMethod.EXEC or sys.platform != "linux":
            return SpawnMethod.EXEC
        return SpawnMethod.ZYGOTE

    def describe(self, settings: PoolSettings) -> str:
        """How children start now (``corral status``): ``zygote pid N``, or ``exec`` and why."""
        if self.zygote is not None and self.zygote.alive:
            return f"zygote pid {self.zygote.pid}"
        if self.method(settings) is SpawnMethod.EXEC:
            return "exec"
        return f"exec ({self.exec_reason})" if self.exec_reason else "zygote (starting)"

    async def prepare(self, template: ChildSpec, settings: PoolSettings, reload: bool = False) -> list[str]:
        """Import the children's code afresh (a new zygote, or a throwaway exec'd child); the
        problems found, one line each (empty: fine). ``reload``: the check of a reload that follows;
        its zygote is held aside until the reload begins (``renew``): the running pool's restarts
        keep forking from the running code's zygote until then."""
        if self.method(settings) is SpawnMethod.EXEC:
            self.adopt(None)  # a seed corral run launched early: not needed
            return await check_imports(template, settings)
        if not reload:
            async with self._lock:
                return await self._prepare(template, settings)
        if not become_subreaper():
            return await check_imports(template, settings)
        started = await self._start(template, settings)
        if isinstance(started, Refusal) and started.problems:
            return started.problems  # no reload: the running code's zygote goes on serving
        await self._discard_pending()
        self._pending = started
        return []

    async def renew(self, template: ChildSpec, settings: PoolSettings) -> None:
        """A reload: the next children run the code on disk now (the zygote of the reload's check,
        or a new one)."""
        pending, self._pending = self._pending, None
        if self.method(settings) is SpawnMethod.EXEC:  # the reload switched to exec'd children
            await self.close()
            return
        async with self._lock:
            problems = await (self._install(pending) if pending else self._prepare(template, settings))
        if problems:
            self.log.error("reload: the new code does not import: {}", "; ".join(problems))

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
        if self._strays.active:  # set when the first zygote starts
            self._strays.reap(known | ({self.zygote.pid} if self.zygote else set()))

    def saw_below_a_child(self, pid: int) -> bool:
        """Whether a sweep of ``reap_strays`` saw ``pid`` below one of our children (an orphan to be)."""
        return self._strays.saw(pid)

    async def close(self) -> None:
        zygote, self.zygote = self.zygote, None
        if zygote is not None:
            await zygote.close()
        await self._discard_pending()
        self.adopt(None)

    async def _discard_pending(self) -> None:
        pending, self._pending = self._pending, None
        if isinstance(pending, Zygote):
            await pending.close()

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
            self.adopt(None)
            self.exec_reason = "this system cannot re-parent a zygote's children to the supervisor"
            return await check_imports(template, settings)
        return await self._install(await self._start(template, settings))

    async def _start(self, template: ChildSpec, settings: PoolSettings) -> Zygote | Refusal:
        """A new zygote: the seed ``corral run`` launched, when it fits these children, or one
        launched now."""
        self._strays.active = True
        seed, self._seed = self._seed, None
        s = settings
        if seed is not None and not seed.fits(s.python, s.bootstrap, s.env, s.cwd):
            seed.close()  # started otherwise than these children must be: start one that is
            seed = None
        started = await Zygote.start(template, settings, settings.output("zygote"), seed)
        if seed is not None and isinstance(started, Zygote):
            started.log.info(
                "zygote pid {} was launched by corral run before its config was read", started.pid
            )
        return started

    async def _install(self, started: Zygote | Refusal) -> list[str]:
        """Fork from ``started`` from now on (the old zygote closed), or say why not."""
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
