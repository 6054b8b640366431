"""``corral``: run a pool in the foreground, and control a running one.

Every command takes ``-c CONFIG`` (default ``./corral.toml``). User mistakes (bad config, no
supervisor running, bad arguments) print one clear line on stderr and a named exit code, never a
traceback. The commands that talk to a running supervisor find it from the config's state dir even
when the file on disk does not validate, and say so.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from loguru import logger

from corral.entrypoints.cli.parser import CONTROL, JOBS, build_parser
from corral.entrypoints.cli.say import fail, warn
from corral.ipc import IPCError
from corral.supervisor import config as config_module
from corral.supervisor.actions import SupervisorExit
from corral.supervisor.config import Config, ConfigError, Where
from corral.supervisor.control import NotRunning
from corral.supervisor.spawning.seed import Seed

# Each command imports what it needs when it runs (below): `corral run` does not pay for the
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
        return dispatch(args, config, where, seed)
    except NotRunning as exc:
        return fail(problem or str(exc), SupervisorExit.CONFIG if problem else SupervisorExit.NOT_RUNNING)
    except IPCError as exc:
        return fail(f"the supervisor did not answer properly: {exc}", SupervisorExit.NOT_RUNNING)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `corral status | head`: the reader went away, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def dispatch(args: argparse.Namespace, config: Config | None, where: Where, seed: Seed | None = None) -> int:
    if args.command == "logs":
        from corral.entrypoints.cli.logs import show_logs

        return show_logs(where.log_dir, args.slot, args.lines, args.follow)
    if config is not None and args.command == "run":
        from corral.supervisor.main import Supervisor

        return asyncio.run(Supervisor(config, seed=seed).run())
    if config is not None and args.command in ("enqueue", "publish", "shards"):
        from corral.entrypoints.cli.produce import produce, show_shards

        return show_shards(config, args.queue) if args.command == "shards" else produce(config, args)
    if config is not None and args.command == "dead":
        from corral.entrypoints.cli import dead

        return dead.run(config, args)
    if config is not None and args.command in JOBS:
        from corral.entrypoints.cli import jobs

        return jobs.run(config, args)
    if config is not None and args.command == "inspect":
        from corral.entrypoints.cli.inspect import inspect

        return asyncio.run(inspect(config, args))
    from corral.entrypoints.cli.control import control

    return asyncio.run(control(where, args, config))
