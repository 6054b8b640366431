"""Match pairing's data: tickets, outcomes, pairs, the pool's options, and whether a worker
process is alive."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import psutil

from corral.entrypoints.pairing.lua import (
    QUEUE_PREFIX,
)


class BadTicket(ValueError):
    """Not a JSON ticket with a string ticket_id, player_id and category."""


class NotifyFailed(Exception):
    """Telling a player about their lobby failed: the lobby is rolled back."""


@dataclass(frozen=True)
class Ticket:
    ticket_id: str
    player_id: str
    category: str
    joined_at: float
    raw: bytes = field(repr=False, compare=False)

    @classmethod
    def parse(cls, raw: bytes) -> Ticket:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadTicket(f"not a JSON ticket: {exc}") from None
        if not isinstance(data, dict):
            raise BadTicket("a ticket must be a JSON object")
        for name in ("ticket_id", "player_id", "category"):
            if not isinstance(data.get(name), str) or not data[name]:
                raise BadTicket(f"{name}: must be a non-empty string")
        joined_at = data.get("joined_at", 0.0)
        if not isinstance(joined_at, int | float) or isinstance(joined_at, bool):
            raise BadTicket("joined_at: must be a number")
        return cls(data["ticket_id"], data["player_id"], data["category"], float(joined_at), raw)


@dataclass(frozen=True)
class Outcome:
    """What became of one pair: a lobby, nothing (aborted: someone gone or busy), a lobby rolled
    back (notification failed), invalid/duplicate tickets settled, or lost (recovered by another)."""

    kind: Literal["lobby", "aborted", "rolled_back", "settled", "lost"]
    lobby_id: str | None = None
    verdicts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pair:
    """Two tickets in our in-flight hash, and the lobby they are to become."""

    queue: str
    raws: tuple[bytes, bytes]
    players: tuple[str, str]
    lobby_id: str

    @property
    def category(self) -> str:
        return self.queue.removeprefix(QUEUE_PREFIX)


@dataclass(frozen=True)
class PairingOptions:
    """``[options]`` of a pairing pool; ``notify_*`` inject notification failures and latency."""

    redis_url: str = ""  # used when the pool declares no [[queues]]/[[streams]] (see pairing.md)
    refresh_s: float = 1.0  # how often categories are discovered (SCAN pairing:queue:*)
    idle_sleep_s: float = 0.05  # after a round that found no pair
    lease_ttl_s: float = 10.0  # a worker silent this long is dead: its in-flight pair is recovered
    sweep_interval_s: float = 1.0  # how often each child looks for dead workers
    notify_fail_rate: float = 0.0  # probability that notifying one player fails
    notify_fail_players: tuple[str, ...] = ()  # fnmatch patterns of players whose notification fails
    notify_delay_s: float = 0.0  # simulated delivery latency per player

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> PairingOptions:
        values: dict[str, Any] = {}
        for spec in fields(cls):
            if spec.name not in options:
                continue
            value = options[spec.name]
            if spec.name == "redis_url":
                ok = isinstance(value, str)
            elif spec.name == "notify_fail_players":
                ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
                value = tuple(value) if ok else value
            else:
                ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
            if not ok:
                raise ValueError(f"options.{spec.name}: invalid value {value!r}")
            values[spec.name] = value
        made = cls(**values)
        if made.notify_fail_rate > 1 or made.lease_ttl_s <= 0 or made.sweep_interval_s <= 0:
            raise ValueError("options: notify_fail_rate must be <= 1, lease_ttl_s and sweep_interval_s > 0")
        return made


def process_alive(pid: int, started: float) -> bool:
    """The process that registered (pid + start time, so a recycled pid does not count) still runs."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - started) < 0.1
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
