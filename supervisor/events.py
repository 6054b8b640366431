"""The pool's events, each carrying the ``WorkerConnection`` of one child, and ``PoolEvents``: IPC
handlers attached to every present and future child of a pool."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from loguru import logger

from corral.supervisor.connection import WorkerConnection

Listener = Callable[[WorkerConnection], Any]


class PoolEvent(StrEnum):
    SPAWNING = "spawning"  # a child process was started (its channel is open, it is not ready yet)
    READY = "ready"  # it announced ready
    KILLING = "killing"  # the pool began to stop it, or it died by itself (once per child)
    EXIT = "exit"  # it exited and was reaped


class EventBus:
    """Listeners per event; a listener may be a coroutine function (run as a task of the pool)."""

    def __init__(self, spawn_task: Callable[[Awaitable[Any]], Any]) -> None:
        self._listeners: dict[PoolEvent, list[Listener]] = {event: [] for event in PoolEvent}
        self._spawn_task = spawn_task

    def on(self, event: str, listener: Listener) -> None:
        try:
            key = PoolEvent(event)
        except ValueError:
            known = ", ".join(e.value for e in PoolEvent)
            raise ValueError(f"unknown pool event {event!r}; known: {known}") from None
        self._listeners[key].append(listener)

    def off(self, event: str, listener: Listener) -> None:
        with contextlib.suppress(ValueError, KeyError):
            self._listeners[PoolEvent(event)].remove(listener)

    def emit(self, event: PoolEvent, conn: WorkerConnection) -> None:
        for listener in list(self._listeners[event]):
            try:
                result = listener(conn)
                if inspect.isawaitable(result):
                    self._spawn_task(result)
            except Exception:
                logger.exception("pool {!r} listener {!r} raised", event.value, listener)


class Children(Protocol):
    def on(self, event: str, listener: Listener) -> None: ...

    def connections(self) -> list[WorkerConnection]: ...


@dataclass
class PoolEvents:
    """Attach IPC handlers to every present and future child of a pool; detached when it is killed."""

    pool: Children
    handlers: list[tuple[str, Callable[[Any], Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pool.on(PoolEvent.SPAWNING, self._attach)
        self.pool.on(PoolEvent.KILLING, self._detach)

    def on(self, event: str, handler: Callable[[Any], Any]) -> None:
        self.handlers.append((event, handler))
        for conn in self.pool.connections():
            conn.on(event, handler)

    def off(self, event: str, handler: Callable[[Any], Any]) -> None:
        self.handlers.remove((event, handler))
        for conn in self.pool.connections():
            conn.off(event, handler)

    def _attach(self, conn: WorkerConnection) -> None:
        for event, handler in self.handlers:
            conn.on(event, handler)

    def _detach(self, conn: WorkerConnection) -> None:
        for event, handler in self.handlers:
            conn.off(event, handler)
