"""``corral dead``: the dead letters of a queue or stream, straight from Redis (no supervisor needed).

``corral dead [counts]`` counts them per declared name; ``list NAME`` shows the newest, ``show NAME ID``
one in full; ``retry`` puts letters back on their queue or stream and ``purge`` deletes them, by ID,
``--grep``, ``--before`` (purge) or ``--all``. A retry moves each letter in one atomic step, so an
interrupted bulk retry is simply run again (``corral.workers.ops.dead_letters``).

Exit codes: 0 done; 1 an unknown ID, or Redis answered with an error; 2 a mistake on the command line
(nothing changed); 5 Redis cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from corral.entrypoints.cli.call import Call
from corral.entrypoints.cli.jobs import operations
from corral.entrypoints.cli.produce import DURATION, UNIT_S, iso_time_s
from corral.entrypoints.cli.say import fail, unreachable
from corral.supervisor.actions import SupervisorExit
from corral.supervisor.config import Config, redacted
from corral.workers.ops.catalog import Catalog, Target, UnknownName
from corral.workers.ops.dead_letters import CannotRetry, DeadLetters, Letter

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, RedisClusterException, OSError, TimeoutError)


class Action(StrEnum):
    COUNTS = "counts"  # the default: ``corral dead``
    LIST = "list"
    SHOW = "show"
    RETRY = "retry"
    PURGE = "purge"


@dataclasses.dataclass(frozen=True)
class Order:
    """One ``dead`` command, checked: what it acts on and how."""

    action: Action
    target: Target | None = None
    ids: list[str] | None = None
    grep: str | None = None
    since_s: float | None = None
    before_s: float | None = None
    limit: int = 50
    json: bool = False

    @property
    def name(self) -> str:
        return self.target.name if self.target is not None else ""


def command(call: Call) -> int:
    config, args = call.valid_config, call.args
    try:
        order = checked(args, Catalog(config.work))
    except (UnknownName, ValueError) as exc:
        return fail(str(exc), SupervisorExit.CONFIG)
    return asyncio.run(connected(config, order))


def checked(args: argparse.Namespace, catalog: Catalog) -> Order:
    """The command line as an ``Order``; ValueError (or UnknownName) names the mistake."""
    action = Action(args.dead_action or Action.COUNTS)
    if action is Action.COUNTS:
        return Order(action)
    target = catalog.resolve(args.name)
    if action is Action.SHOW:
        return Order(action, target, ids=[args.id])
    if action is Action.LIST:
        return Order(
            action,
            target,
            grep=args.grep,
            since_s=moment("list", "--since", args.since),
            limit=limit_of(args.limit),
            json=args.json,
        )
    before_s = moment(action, "--before", args.before) if action is Action.PURGE else None
    filters = [
        flag
        for flag, given in (("--grep", args.grep is not None), ("--before", before_s is not None))
        if given
    ]
    if args.all and (args.ids or filters):
        raise ValueError(f"dead {action}: --all goes alone, without IDs, --grep or --before")
    if args.ids and filters:
        raise ValueError(f"dead {action}: give IDs or {' / '.join(filters)}, not both")
    if not (args.all or args.ids or filters):
        more = ", --grep TEXT or --before TIME" if action is Action.PURGE else " or --grep TEXT"
        raise ValueError(f"dead {action}: say which: ID..., --all{more}")
    return Order(action, target, ids=args.ids or None, grep=args.grep, before_s=before_s)


def moment(action: str, flag: str, text: str | None) -> float | None:
    """``1h`` (that long ago) or an ISO 8601 time with a zone, as unix seconds."""
    if text is None:
        return None
    match = DURATION.match(text)
    if match:
        return time.time() - float(match.group(1)) * UNIT_S[match.group(2)]
    at_s = iso_time_s(text, f"dead {action}: {flag}")
    if at_s is None:
        raise ValueError(
            f"dead {action}: {flag}: {text!r} is neither a duration like 30m, 2h or 1d nor an ISO 8601 time"
        )
    return at_s


def limit_of(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"dead list: --limit: {text!r} is not a whole number > 0")
    return int(text)


async def connected(config: Config, order: Order) -> int:
    url = config.redis_url
    try:
        async with operations(config) as ops:
            return await ACTIONS[order.action](ops.dead, order, config)
    except UNREACHABLE as exc:
        return fail(unreachable(config, exc), SupervisorExit.NOT_RUNNING)
    except CannotRetry as exc:
        return fail(f"dead {order.action}: {exc}", SupervisorExit.FAILED)
    except RedisError as exc:
        return fail(f"dead: Redis at {redacted(url)} answered with an error: {exc}", SupervisorExit.FAILED)


def console() -> Console:
    out = Console()
    return out if out.is_terminal else Console(width=200)  # piped: one line per row, never wrapped


async def counts(letters: DeadLetters, order: Order, config: Config) -> int:
    grid = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("NAME", "KIND", "DEAD"):
        grid.add_column(column, justify="right" if column == "DEAD" else "left")
    targets = Catalog(config.work).names()
    for target in targets:
        grid.add_row(Text(target.name), target.kind.value, str(await letters.count(target)))
    if targets:
        console().print(grid)
    else:
        print("no queues or streams declared")
    return SupervisorExit.OK


def when(at: float | None) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S") if at is not None else "-"


def headline(error: str) -> str:
    """The line that says what went wrong: a traceback's last line, else the first."""
    lines = [line for line in error.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1].strip() if lines[0].startswith("Traceback") else lines[0].strip()


def as_json(letter: Letter) -> dict[str, Any]:
    keys = ("id", "source", "failed_at", "attempts", "error", "worker", "payload")
    return {key: getattr(letter, key) for key in keys}


async def listing(letters: DeadLetters, order: Order, config: Config) -> int:
    assert order.target is not None
    found = await letters.list(order.target, grep=order.grep, since_s=order.since_s, limit=order.limit)
    if order.json:
        print(json.dumps([as_json(letter) for letter in found], indent=2))
        return SupervisorExit.OK
    total = await letters.count(order.target)
    if found:
        grid = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("ID", "WHEN", "ATTEMPTS", "SOURCE", "ERROR"):
            grid.add_column(
                column, justify="right" if column == "ATTEMPTS" else "left", no_wrap=column != "ERROR"
            )
        for letter in found:
            attempts = str(letter.attempts) if letter.attempts is not None else "-"
            cells = (letter.id, when(letter.failed_at), attempts, letter.source, headline(letter.error))
            grid.add_row(*(Text(cell) for cell in cells))
        console().print(grid)
    print(f"{len(found)} shown of {plural(total)} of {order.name}")
    return SupervisorExit.OK


async def showing(letters: DeadLetters, order: Order, config: Config) -> int:
    assert order.target is not None and order.ids
    letter = await letters.find(order.target, order.ids[0])
    if letter is None:
        return fail(f"dead show: no dead letter {order.ids[0]!r} in {order.name}", SupervisorExit.FAILED)
    try:
        payload = json.dumps(json.loads(letter.payload), indent=2, ensure_ascii=False)
    except ValueError:
        payload = letter.payload
    attempts = str(letter.attempts) if letter.attempts is not None else "-"
    stamp = f"{when(letter.failed_at)} ({letter.failed_at})" if letter.failed_at is not None else "-"
    for label, value in (("id", letter.id), ("source", letter.source), ("failed", stamp)):
        print(f"{label + ':':<10}{value}")
    print(f"{'attempts:':<10}{attempts}\n{'worker:':<10}{letter.worker or '-'}")
    print("error:\n" + indented(letter.error or "-") + "\npayload:\n" + indented(payload))
    return SupervisorExit.OK


def indented(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.rstrip().splitlines())


def plural(n: int) -> str:
    return f"{n} dead letter" + ("" if n == 1 else "s")


@contextmanager
def progress_bar(total: int | None, label: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr when it is a terminal; the callback advances it."""
    err = Console(stderr=True)
    if not err.is_terminal:
        yield lambda _n: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


class Interrupted(Exception):
    """Ctrl-C during a bulk action: raised between two batches, so every letter is whole."""


@contextmanager
def interruptible() -> Iterator[Callable[[], bool]]:
    """Ctrl-C asks a bulk action to stop after the batch in flight (a task's cancellation can be
    lost in redis-py's waits on Python 3.11, and would not say how many moved); a second Ctrl-C
    stops at once (KeyboardInterrupt)."""
    loop, asked = asyncio.get_running_loop(), asyncio.Event()

    def on_sigint() -> None:
        asked.set()
        loop.remove_signal_handler(signal.SIGINT)  # the default again: the next one interrupts

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        yield asked.is_set
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def unknown_ids(letters: DeadLetters, order: Order) -> str | None:
    """The one-line complaint when some of the order's IDs are no dead letter of its target."""
    assert order.target is not None
    unknown = await letters.missing(order.target, order.ids or [])
    if not unknown:
        return None
    more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
    return f"dead {order.action}: no dead letter {unknown[0]!r} in {order.name}{more}; nothing changed"


async def bulk(letters: DeadLetters, order: Order, config: Config) -> int:
    assert order.target is not None
    target, verb = order.target, "retried" if order.action is Action.RETRY else "purged"
    problem = await unknown_ids(letters, order) if order.ids else None
    if problem:
        return fail(problem, SupervisorExit.FAILED)
    everything = order.ids is None and order.grep is None and order.before_s is None
    total = await letters.count(target) if everything else None
    done, started = 0, time.monotonic()
    with interruptible() as stop_asked, progress_bar(total, f"{order.action} {order.name}") as step:

        def advance(n: int) -> None:
            nonlocal done
            done += n
            step(n)
            if stop_asked():
                raise Interrupted

        try:
            if order.action is Action.RETRY:
                await letters.retry(target, ids=order.ids, grep=order.grep, on_progress=advance)
            else:
                ids, grep, before_s = order.ids, order.grep, order.before_s
                await letters.purge(target, ids=ids, grep=grep, before_s=before_s, on_progress=advance)
        except Interrupted:
            note = f"interrupted: {verb} {plural(done)} of {order.name}; run it again for the rest"
            return fail(note, 130)
    print(f"{verb} {plural(done)} of {order.name} in {time.monotonic() - started:.2f}s")
    return SupervisorExit.OK


ACTIONS: dict[Action, Callable[[DeadLetters, Order, Config], Awaitable[int]]] = {
    Action.COUNTS: counts,
    Action.LIST: listing,
    Action.SHOW: showing,
    Action.RETRY: bulk,
    Action.PURGE: bulk,
}
