"""What a child is started with: its environment (the ``ChildSpec`` of ``corral.contract`` in
``SPEC_ENV``, the pool's extra variables, systemd's own variables removed), and the import check the
supervisor runs in a throwaway child before it starts any (``python -m corral.entrypoints.child
--check``): the supervisor does not import the code its children run (only ``[pool] setup``, the
parent side of an app, is imported by the supervisor itself)."""

from __future__ import annotations

import asyncio
import contextlib
import os

from corral.contract import SPEC_ENV, ChildSpec, ExitCode
from corral.supervisor.settings import PoolSettings

SYSTEMD_ENV = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"})


def child_env(spec: ChildSpec, settings: PoolSettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ENV}  # systemd talks to us only
    env.update(settings.env)
    env[SPEC_ENV] = spec.to_env()
    env.update(PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
    return env


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
