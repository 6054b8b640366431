"""What a child is started with: its environment (the ``ChildSpec`` of ``corral.contract`` in
``SPEC_ENV``, the pool's extra variables, systemd's own variables removed), and the import check the
supervisor runs in a throwaway child before it starts any (``python -m corral.workers.child
--check``): the supervisor does not import the code its children run (only ``[pool] setup``, the
parent side of an app, is imported by the supervisor itself)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os

from corral.contract import SPEC_ENV, ChildSettings, ChildSpec, ExitCode
from corral.supervisor.settings import PoolSettings
from corral.supervisor.spawning.seed import base_env


def child_spec(pool: str, host: str, slot: int, fd: int, *, target: str, s: PoolSettings) -> ChildSpec:
    """What the child of ``slot`` of pool ``pool`` on ``host`` is told (``fd``: its IPC end): who it
    is, and every ``ChildSettings`` field the pool's settings have (the others keep their defaults)."""
    told = {f.name: getattr(s, f.name) for f in dataclasses.fields(ChildSettings) if hasattr(s, f.name)}
    return ChildSpec(fd, slot, pool, target, host, os.getpid(), ChildSettings(**told))


def child_env(spec: ChildSpec, settings: PoolSettings) -> dict[str, str]:
    return {**base_env(settings.env), SPEC_ENV: spec.to_env()}


async def check_imports(spec: ChildSpec, settings: PoolSettings) -> list[str]:
    """Import the children's worker and handlers in a throwaway child; the problems, one per line."""
    process = await asyncio.create_subprocess_exec(
        settings.python,
        *settings.bootstrap,
        "--check",
        env=child_env(spec, settings),
        cwd=settings.cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), settings.ready_timeout_s)
    except TimeoutError:
        return [f"importing the worker and handlers took over {settings.ready_timeout_s:g}s"]
    finally:
        if process.returncode is None:  # the deadline, or we were cancelled (a stop): not left behind
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.shield(process.wait())
    if process.returncode == ExitCode.OK:
        return []
    lines = output.decode("utf-8", "replace").splitlines()
    return lines or [f"the import check failed: {ExitCode.describe(process.returncode)}"]
