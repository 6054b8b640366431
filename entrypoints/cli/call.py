"""What a command gets: one command line's arguments, the config, where the pool's files are, and the
zygote ``corral run`` launched first. Each command is declared in ``parser.py`` with the function
that runs it (``run="module:function"``, imported only when that command runs)."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass

from corral.supervisor.config import Config, Where
from corral.supervisor.spawning.seed import Seed


@dataclass(frozen=True)
class Call:
    args: argparse.Namespace
    config: Config | None  # None: the file on disk does not validate (only control commands run)
    where: Where
    seed: Seed | None = None

    @property
    def valid_config(self) -> Config:
        """The config, for a command that only runs when it validates (see ``main``)."""
        if self.config is None:
            raise RuntimeError(f"{self.args.command} ran without a valid config")
        return self.config


def run(call: Call) -> int:
    """The command's own function (``set_defaults(run=...)`` in ``parser.py``)."""
    module, _, function = call.args.run.partition(":")
    return int(getattr(importlib.import_module(f"corral.entrypoints.cli.{module}"), function)(call))
