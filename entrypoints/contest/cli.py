"""The contest app's own commands: ``python -m corral.entrypoints.contest push|scoreboard|answer``."""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from typing import Any

from corral.entrypoints.contest.db import ContestConfigError, ContestStore, store_from_options
from corral.entrypoints.contest.producer import random_submission, submit
from corral.entrypoints.contest.scoring import expected_answer, queue_name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m corral.entrypoints.contest", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "-c", "--config", default="entrypoints/contest/corral.toml", help="the pool's corral.toml"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="push N random submissions")
    push.add_argument("count", type=int)
    push.add_argument("--contests", default="spring,summer", help="comma-separated contest ids")
    push.add_argument("--users", type=int, default=50)
    push.add_argument("--problems", type=int, default=6)
    push.add_argument("--seed", type=int, default=None)
    board = sub.add_parser("scoreboard", help="the top of a contest's scoreboard")
    board.add_argument("contest")
    board.add_argument("--top", type=int, default=10)
    answer = sub.add_parser("answer", help="the expected answer to a problem")
    answer.add_argument("problem")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "answer":
        print(expected_answer(args.problem))
        return 0

    from corral.supervisor.config import ConfigError, load

    try:
        config = load(args.config)
        if args.command == "scoreboard":
            options = config.pool.options
            return show_scoreboard(
                store_from_options(options, str(config.path.parent)), args.contest, args.top
            )
    except (ConfigError, ContestConfigError) as exc:
        print(exc, file=sys.stderr)
        return 2
    return push_submissions(config, args)


def push_submissions(config: Any, args: argparse.Namespace) -> int:
    """``push``: random submissions, one pipeline, on whatever Redis the pool's config names (a
    server, a cluster: each contest's queue in its own slot, or Sentinel)."""
    import dataclasses

    import redis as redis_py

    from corral.supervisor.config import redacted
    from corral.workers.topology import connect_sync

    rng = random.Random(args.seed)
    contests = [c for c in args.contests.split(",") if c]
    users = [f"user-{n}" for n in range(args.users)]
    problems = [f"p{n}" for n in range(1, args.problems + 1)]
    client = None
    try:
        client = connect_sync(
            dataclasses.replace(config.work.redis, url=config.redis_url, socket_timeout_s=5.0)
        )
        with client.pipeline(transaction=False) as pipe:
            for _ in range(args.count):
                submit(pipe, random_submission(rng, contests, users, problems))
            pipe.execute()
    except redis_py.RedisError as exc:
        print(f"cannot reach Redis at {redacted(config.redis_url)}: {exc}", file=sys.stderr)
        return 5
    finally:
        if client is not None:
            client.close()
    print(f"pushed {args.count} submissions to {', '.join(queue_name(c) for c in contests)}")
    return 0


def show_scoreboard(store: ContestStore, contest_id: str, top: int) -> int:
    store.open()
    try:
        print(f"{'USER':<16} {'TOTAL':>6} {'SOLVED':>6} {'SUBMISSIONS':>11}")
        for row in store.scoreboard(contest_id, top):
            print(f"{row.user_id:<16} {row.total:>6} {row.solved:>6} {row.submissions:>11}")
    finally:
        store.close()
    return 0
