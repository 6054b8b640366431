"""The ``corral`` command: ``main`` (here: ``run`` launches its zygote first), the config and the
mistakes (``cli/main.py``), every command's arguments and the function that runs it (``parser.py``,
``call.py``), ``corral run`` (``foreground.py``), the commands that talk to a running supervisor
(``control.py``), and those that need none: ``logs.py``, ``produce.py``, ``jobs.py``, ``dead.py``,
``inspect.py``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """``corral``. For ``run``, the zygote is launched before anything else is imported
    (``supervisor/spawning/seed.py``): its imports overlap the supervisor's own start."""
    seed = None
    if (sys.argv[1:] if argv is None else argv)[:1] == ["run"]:
        from corral.supervisor.spawning.seed import launch_early

        seed = launch_early()
    from corral.entrypoints.cli.main import main as command

    return command(argv, seed)


__all__ = ["main"]
