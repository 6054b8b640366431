"""``corral run``: the supervisor, in the foreground (it imports the supervisor only then)."""

from __future__ import annotations

import asyncio

from corral.entrypoints.cli.call import Call


def command(call: Call) -> int:
    from corral.supervisor.main import Supervisor

    return asyncio.run(Supervisor(call.valid_config, seed=call.seed).run())
