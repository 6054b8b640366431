"""``corral``: run a pool in the foreground, and control a running one.

Every command takes ``-c CONFIG`` (default ``./corral.toml``). User mistakes (bad config, no
supervisor running, bad arguments) print one clear line on stderr and a named exit code, never a
traceback. The commands that talk to a running supervisor find it from the config's state dir even
when the file on disk does not validate, and say so.
"""

from __future__ import annotations

import os
import sys

from loguru import logger

from corral.entrypoints.cli.call import Call, run
from corral.entrypoints.cli.parser import CONTROL, build_parser
from corral.entrypoints.cli.say import fail, warn
from corral.ipc import IPCError
from corral.supervisor import config as config_module
from corral.supervisor.actions import SupervisorExit
from corral.supervisor.config import Config, ConfigError
from corral.supervisor.control import NotRunning
from corral.supervisor.spawning.seed import Seed

# Each command imports what it needs when it runs (``call.run``): `corral run` does not pay for the
# dead-letter tables or the dashboard's client, a `corral status` not for the supervisor.


def main(argv: list[str] | None = None, seed: Seed | None = None) -> int:
    """One command; ``seed``: the zygote ``corral run`` launched first (closed unless a supervisor
    takes it)."""
    try:
        return _command(argv, seed)
    finally:
        if seed is not None and not seed.taken:
            seed.close()


def _command(argv: list[str] | None, seed: Seed | None) -> int:
    args = build_parser().parse_args(argv)
    logger.remove()  # `run` sets up its own logging; the control commands only print results
    if args.command != "run":
        logger.add(sys.stderr, level="WARNING", format="corral: {message}")
    if args.command == "init":
        from corral.entrypoints import scaffold

        return scaffold.run(args)
    try:
        config: Config | None = config_module.load(args.config)
        problem = ""
    except ConfigError as exc:
        config, problem = None, str(exc)
        if args.command not in CONTROL or args.command == "reload":
            return fail(problem, SupervisorExit.CONFIG)
    where = config.where if config is not None else config_module.locate(args.config)
    if problem and args.command != "logs":
        if not where.control_socket.exists():  # nothing runs: the config is the problem
            return fail(problem, SupervisorExit.CONFIG)
        first = problem.splitlines()[-1].strip(" -")
        warn(f"{args.config} does not validate ({first}); the running pool keeps the config it loaded")
    try:
        return run(Call(args, config, where, seed))
    except NotRunning as exc:
        return fail(problem or str(exc), SupervisorExit.CONFIG if problem else SupervisorExit.NOT_RUNNING)
    except IPCError as exc:
        return fail(f"the supervisor did not answer properly: {exc}", SupervisorExit.NOT_RUNNING)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `corral status | head`: the reader went away, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
