"""The ``corral`` command line's arguments: one sub-command per action."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

import corral
from corral.entrypoints import scaffold
from corral.supervisor.actions import SupervisorExit

# commands that talk to a running supervisor: they work from the state dir alone when the config
# file on disk does not validate (a bad edit must not lock the operator out)
CONTROL = frozenset({"status", "health", "reload", "scale", "recycle", "stop", "request", "send", "logs"})


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corral", description="A supervised worker pool for Redis work.")
    parser.add_argument("--version", action="version", version=f"corral {corral.__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default="corral.toml", help="config file (default: ./corral.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    scaffold.add_parser(sub)
    sub.add_parser("run", parents=[common], help="run the supervisor in the foreground").set_defaults(
        run="foreground:command"
    )
    status = sub.add_parser("status", parents=[common], help="show every slot of the running pool")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument("-w", "--watch", action="store_true", help="refresh the table until Ctrl-C")
    status.add_argument("--interval", type=_positive, default=1.0, help="seconds between refreshes (--watch)")
    reload = sub.add_parser(
        "reload", parents=[common], help="rolling reload with new code and re-read config"
    )
    scale = sub.add_parser("scale", parents=[common], help="change the number of slots")
    scale.add_argument("workers", type=int, help="the new number of slots")
    recycle = sub.add_parser("recycle", parents=[common], help="replace one slot's child (replacement first)")
    recycle.add_argument("slot", type=int, help="the slot whose child is replaced")
    stop = sub.add_parser("stop", parents=[common], help="graceful stop of the running pool")
    stop.add_argument("--no-wait", action="store_true", help="return without waiting for it to exit")
    stop.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the exit")
    for command in (status, reload, scale, recycle, stop):
        command.set_defaults(run="control:command")
    health = sub.add_parser("health", parents=[common], help="exit 0 while the pool is live (--ready: ready)")
    health.add_argument("--ready", action="store_true", help="every slot ready and Redis answering")
    health.add_argument("--json", action="store_true", help="print live, ready and the reasons as JSON")
    health.add_argument("--timeout", type=_positive, default=5.0, help="seconds to wait for the answer")
    health.set_defaults(run="control:health")
    _child_messages(sub, common)
    _producers(sub, common)
    _jobs(sub, common)
    _dead(sub, common)
    inspect = sub.add_parser("inspect", parents=[common], help="list work in Redis no live member holds")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.set_defaults(run="inspect:command")
    logs = sub.add_parser("logs", parents=[common], help="print (or follow) a slot's log file")
    logs.add_argument("slot", help="a slot number, 'supervisor', 'zygote' or 'redis' (the embedded server)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("-n", "--lines", type=int, default=50, help="how many last lines to print first")
    logs.set_defaults(run="logs:command")
    return parser


def _child_messages(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    request = sub.add_parser("request", parents=[common], help="ask one child (IPC request), print its reply")
    send = sub.add_parser("send", parents=[common], help="tell one child (IPC send, no reply)")
    for command in (request, send):
        command.add_argument("slot", type=int, help="the slot whose child is asked")
        command.add_argument("event", help="the event name its handler is registered for")
        command.add_argument("data", nargs="?", default="null", help="the data, as JSON (default: null)")
    request.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply")
    for command in (request, send):
        command.set_defaults(run="control:command")


def _producers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    enqueue = sub.add_parser("enqueue", parents=[common], help="push a job (JSON) onto a queue")
    enqueue.add_argument("queue", help="the queue (list key)")
    enqueue.add_argument("data", help="the job's data, as JSON")
    enqueue.add_argument("--front", action="store_true", help="next to be taken (priority)")
    enqueue.add_argument("--key", help="a sharded queue: one key, one shard (default: shards in turn)")
    when = enqueue.add_mutually_exclusive_group()
    when.add_argument("--delay", help="hold it this long first: 30s, 250ms, 5m, 2h, 1d")
    when.add_argument("--at", help="hold it until then: 2026-12-01T10:00:00Z (ISO 8601, with a time zone)")
    enqueue.add_argument(
        "--unique", metavar="KEY", help="refused while a job with this key is queued or running"
    )
    enqueue.add_argument(
        "--unique-for", default="1h", help="how long the unique key holds at most (default 1h)"
    )
    enqueue.set_defaults(run="produce:command")
    shards = sub.add_parser("shards", parents=[common], help="the lists of a sharded queue, one per line")
    shards.set_defaults(run="produce:shards")
    shards.add_argument("queue", help="a queue declared with shards > 1 in corral.toml")
    publish = sub.add_parser("publish", parents=[common], help="add an entry (a JSON object) to a stream")
    publish.add_argument("stream", help="the stream (its shard is chosen by --key when partitioned)")
    publish.add_argument("data", help='the entry\'s fields, as a JSON object: {"type": "x", "id": "1"}')
    publish.add_argument("--key", help="partition key (e.g. a game id): one key, one shard, in order")
    publish.set_defaults(run="produce:command")


def _jobs(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    pause = sub.add_parser("pause", parents=[common], help="stop every host taking from a queue or stream")
    pause.add_argument("name", help="a queue or stream of the pool (every list or shard of it)")
    resume = sub.add_parser("resume", parents=[common], help="take from a paused queue or stream again")
    resume.add_argument("name", help="a queue or stream of the pool")
    schedules = sub.add_parser("schedules", parents=[common], help="each schedule: its last and next run")
    schedules.add_argument("--json", action="store_true", help="print the schedules as JSON")
    for command in (pause, resume, schedules):
        command.set_defaults(run="jobs:command")


class DeadParser(argparse.ArgumentParser):
    """A mistake in a ``dead`` command's arguments is one line, exit 2 (not a usage screen); IDs may
    come after the options too. No abbreviations: ``--al`` must not mean ``--all``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def error(self, message: str) -> NoReturn:
        self.exit(SupervisorExit.CONFIG, f"corral: {self.prog.removeprefix('corral ')}: {message}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if isinstance(getattr(parsed, "ids", None), list):
            parsed.ids += [arg for arg in extras if not arg.startswith("-")]
            extras = [arg for arg in extras if arg.startswith("-")]
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _dead(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    dead = sub.add_parser("dead", parents=[common], help="the dead letters of a queue or stream")
    dead.set_defaults(run="dead:command")
    config = DeadParser(add_help=False)  # -c after the action too; SUPPRESS: keep one before
    config.add_argument("-c", "--config", default=argparse.SUPPRESS, help="config file (./corral.toml)")
    actions = dead.add_subparsers(dest="dead_action", metavar="ACTION", parser_class=DeadParser)
    actions.add_parser("counts", parents=[config], help="how many dead letters each queue and stream has")
    listing = actions.add_parser("list", parents=[config], help="the newest dead letters of NAME")
    listing.add_argument("name", help="a queue or stream of corral.toml")
    listing.add_argument("--grep", help="only those whose job, fields or error contain TEXT (any case)")
    listing.add_argument("--since", help="only those failed since: 1h, 30m, 2d or an ISO time with a zone")
    listing.add_argument("--limit", default="50", help="at most this many (default: 50)")
    listing.add_argument("--json", action="store_true", help="print them as a JSON array")
    show = actions.add_parser("show", parents=[config], help="one dead letter in full")
    show.add_argument("name", help="a queue or stream of corral.toml")
    show.add_argument("id", help="its ID, as `corral dead list` shows it")
    for action, verb in (
        ("retry", "put dead letters back on their queue or stream"),
        ("purge", "delete dead letters"),
    ):
        command = actions.add_parser(action, parents=[config], help=verb)
        command.add_argument("name", help="a queue or stream of corral.toml")
        command.add_argument("ids", nargs="*", metavar="ID", help="these dead letters")
        command.add_argument("--all", action="store_true", help="every dead letter of NAME")
        command.add_argument("--grep", help="those whose job, fields or error contain TEXT (any case)")
    purge = actions.choices["purge"]
    purge.add_argument("--before", help="those failed before: 1h (ago), 2d, or an ISO time with a zone")
