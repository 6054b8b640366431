"""The pool's events, each carrying the ``WorkerConnection`` of one child, and ``PoolEvents``: IPC
handlers attached to every present and future child of a pool."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Awaitable, Callable
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


ChildHandler = Callable[[WorkerConnection, Any], Any]  # (the child's connection, data) -> reply


class PoolEvents:
    """IPC handlers on every present and future child of a pool (detached when a child is killed).
    A handler gets the child's connection and the data: ``handler(conn, data)``, sync or async; its
    return value answers a child's ``request``."""

    def __init__(self, pool: Children) -> None:
        self.pool = pool
        self.handlers: list[tuple[str, ChildHandler]] = []
        self._bound: dict[tuple[WorkerConnection, str, ChildHandler], Callable[[Any], Any]] = {}
        pool.on(PoolEvent.SPAWNING, self._attach)
        pool.on(PoolEvent.KILLING, self._detach)

    def on(self, event: str, handler: ChildHandler) -> None:
        self.handlers.append((event, handler))
        for conn in self.pool.connections():
            self._bind(conn, event, handler)

    def off(self, event: str, handler: ChildHandler) -> None:
        self.handlers.remove((event, handler))
        for conn in self.pool.connections():
            bound = self._bound.pop((conn, event, handler), None)
            if bound is not None:
                conn.off(event, bound)

    def _bind(self, conn: WorkerConnection, event: str, handler: ChildHandler) -> None:
        bound = self._bound[conn, event, handler] = functools.partial(handler, conn)
        conn.on(event, bound)

    def _attach(self, conn: WorkerConnection) -> None:
        for event, handler in self.handlers:
            self._bind(conn, event, handler)

    def _detach(self, conn: WorkerConnection) -> None:
        for event, handler in self.handlers:
            bound = self._bound.pop((conn, event, handler), None)
            if bound is not None:
                conn.off(event, bound)
