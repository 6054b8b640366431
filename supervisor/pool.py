"""WorkerPool: keeps N slots filled with ready children; restarts, replaces, scales and stops them.

Everything that changes the pool's shape goes through ``reconcile()``, which compares the desired
state (size, fatal slots, backoff deadlines, recycling requests) with what runs and starts one task
per slot to close the gap. Events (``spawning``, ``ready``, ``killing``, ``exit``) carry the
``WorkerConnection`` so the parent can attach and detach IPC handlers per child.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import os
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from ipc import Channel, ChannelClosed, RequestTimeout, socketpair
from supervisor import lifecycle, monitor
from supervisor.connection import WorkerConnection
from supervisor.process import spawn
from supervisor.settings import PoolSettings
from supervisor.states import SlotHistory, WorkerState
from workers.exitcodes import ExitCode

Listener = Callable[[WorkerConnection], Any]
EVENTS = ("spawning", "ready", "killing", "exit")
STATS_EVENT = "corral.stats"
SPEC_ENV = "CORRAL_CHILD"
SYSTEMD_ENV = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"})


@dataclass
class Slot:
    index: int
    history: SlotHistory
    current: WorkerConnection | None = None
    next: WorkerConnection | None = None  # a replacement being started (reload, recycling)
    task: asyncio.Task[Any] | None = None  # the one launch/replace running for this slot
    backoff_until: float = 0.0
    fatal_reason: str | None = None
    recycle_reason: str | None = None
    generation: int = 0
    processed_before: int = 0  # processed/failed by this slot's earlier children
    failed_before: int = 0

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    @property
    def state(self) -> WorkerState:
        if self.fatal_reason:
            return WorkerState.FATAL
        if self.current is not None:
            return self.current.state
        return WorkerState.BACKOFF if self.backoff_until else WorkerState.STOPPED


@dataclass
class PoolEvents:
    """Attach IPC handlers to every present and future child of a pool; detached when it is killed."""

    pool: WorkerPool
    handlers: list[tuple[str, Callable[[Any], Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pool.on("spawning", self._attach)
        self.pool.on("killing", self._detach)

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


class WorkerPool:
    def __init__(
        self,
        name: str,
        size: int,
        target: str,
        settings: PoolSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        **overrides: Any,
    ) -> None:
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        self.name = name
        self.target = target
        self.size = size
        self.settings = dataclasses.replace(settings or PoolSettings(), **overrides)
        self.host = self.settings.host or socket.gethostname()
        self.slots: dict[int, Slot] = {}
        self.clock = clock
        self.log = logger.bind(pool=name)
        self._listeners: dict[str, list[Listener]] = {event: [] for event in EVENTS}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._escalate = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self.stopping = False
        self.all_fatal = asyncio.Event()

    # -- events -------------------------------------------------------------------------------

    def on(self, event: str, listener: Listener) -> None:
        if event not in self._listeners:
            raise ValueError(f"unknown pool event {event!r}; known: {', '.join(EVENTS)}")
        self._listeners[event].append(listener)

    def off(self, event: str, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners[event].remove(listener)

    def emit(self, event: str, conn: WorkerConnection) -> None:
        for listener in list(self._listeners[event]):
            try:
                result = listener(conn)
                if inspect.isawaitable(result):
                    self.spawn_task(result)
            except Exception:
                self.log.exception("pool {!r} listener {!r} raised", event, listener)

    # -- public API ---------------------------------------------------------------------------

    def get(self, slot: int) -> WorkerConnection | None:
        """The current child of ``slot`` (None while it has none)."""
        found = self.slots.get(slot)
        return found.current if found else None

    def connections(self) -> list[WorkerConnection]:
        """Every live child, including replacements still starting."""
        conns = [c for s in self.slots.values() for c in (s.current, s.next) if c is not None]
        return [c for c in conns if c.alive]

    async def spawn_all(self, timeout_s: float | None = None) -> bool:
        """Start supervising; True once every slot is ready (False: a slot is fatal, or the deadline)."""
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name=f"pool:{self.name}")
            self.spawn_task(monitor.run(self))
        return await self.wait_ready(timeout_s or self.settings.ready_timeout_s * 2)

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until every slot in 0..size-1 has a ready child; False on a fatal slot or deadline."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.stopping:
            states = [self.slots[i].state if i in self.slots else None for i in range(self.size)]
            if all(s is WorkerState.READY for s in states):
                return True
            if WorkerState.FATAL in states:
                return False
            await asyncio.sleep(0.02)
        return False

    async def scale(self, size: int) -> None:
        """Grow or shrink to ``size`` slots (the highest slots are stopped gracefully)."""
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        self.log.info("scaling pool {} from {} to {} slots", self.name, self.size, size)
        self.size = size
        self.wake()

    async def reload(self, target: str | None = None, settings: PoolSettings | None = None) -> bool:
        """Rolling reload: slot by slot, a new child (new code, new settings) must be ready before
        the old one is told to stop. Fatal slots get a new chance. False if a replacement failed
        (the remaining old children are kept)."""
        async with self._reload_lock:
            self.target = target or self.target
            self.settings = settings or self.settings
            for slot in self.slots.values():
                if slot.fatal_reason:
                    self.log.info("slot {}: fatal cleared by reload", slot.index)
                    slot.fatal_reason, slot.backoff_until = None, 0.0
                    slot.history.reset()
            self.all_fatal.clear()
            self.wake()
            for index in sorted(self.slots):
                found = self.slots.get(index)
                if found is None or index >= self.size or found.current is None:
                    continue
                if found.task is not None:
                    await asyncio.wait([found.task])
                if found.current is None:
                    continue
                if not await self._run_slot_task(found, self._replace(found, "reload")):
                    self.log.error("reload stopped at slot {}: its new child did not become ready", index)
                    return False
            return True

    async def stop(self, graceful_timeout_s: float | None = None, fast: bool = False) -> None:
        """Stop every child down the ladder: stop taking work -> drain -> SIGTERM -> SIGKILL -> reap."""
        self.stopping = True
        for slot in self.slots.values():
            if slot.task is not None:
                slot.task.cancel()
        timeout_s = self.settings.graceful_timeout_s if graceful_timeout_s is None else graceful_timeout_s
        conns = self.connections()
        self.log.info(
            "stopping pool {} ({} children, {})", self.name, len(conns), "fast" if fast else "graceful"
        )
        await asyncio.gather(*(lifecycle.stop(self, c, "pool stop", timeout_s, fast) for c in conns))
        if self._supervisor is not None:
            self._supervisor.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def skip_ahead(self) -> None:
        """Every stop ladder in progress moves to its next rung now (a second TERM)."""
        event, self._escalate = self._escalate, asyncio.Event()
        event.set()

    def request_recycle(self, slot: int, reason: str) -> None:
        found = self.slots.get(slot)
        if found is not None and found.current is not None and not found.recycle_reason:
            found.recycle_reason = reason
            self.wake()

    # -- reconcile ----------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def reconcile(self) -> float | None:
        """Bring the pool toward its desired state; returns the next time it must look again."""
        if self.stopping:
            return None
        now, next_at = self.clock(), None
        for index in range(self.size):
            slot = self.slots.setdefault(index, Slot(index, SlotHistory(self.settings.policy)))
            if slot.busy or slot.fatal_reason:
                continue
            if slot.current is None:
                if now < slot.backoff_until:
                    next_at = min(next_at or slot.backoff_until, slot.backoff_until)
                else:
                    self._start_slot_task(slot, self._launch(slot, replacing=False))
            elif slot.recycle_reason and slot.current.state is WorkerState.READY:
                self._start_slot_task(slot, self._replace(slot, slot.recycle_reason))
        for index, slot in list(self.slots.items()):
            if index >= self.size:
                self._retire(slot)
        fatal = [self.slots[i].fatal_reason for i in range(self.size) if i in self.slots]
        if self.size and len(fatal) == self.size and all(fatal):
            self.all_fatal.set()
        return next_at

    async def _supervise(self) -> None:
        while not self.stopping:
            next_at = self.reconcile()
            timeout = None if next_at is None else max(0.0, next_at - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()

    def _retire(self, slot: Slot) -> None:
        if slot.task is not None and not slot.task.done():
            slot.task.cancel()
        conns = [c for c in (slot.current, slot.next) if c is not None and c.alive]
        if not conns and not slot.busy:
            del self.slots[slot.index]
        for conn in conns:
            if not conn.stop_requested:
                self.spawn_task(lifecycle.stop(self, conn, "scaled down", self.settings.graceful_timeout_s))

    def _start_slot_task(self, slot: Slot, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        slot.task = self.spawn_task(coro)
        return slot.task

    async def _run_slot_task(self, slot: Slot, coro: Coroutine[Any, Any, bool]) -> bool:
        result: bool = await self._start_slot_task(slot, coro)
        return result

    def spawn_task(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- one child's life ---------------------------------------------------------------------

    async def _launch(self, slot: Slot, replacing: bool) -> bool:
        slot.backoff_until = 0.0
        conn = await self._spawn(slot)
        if replacing:
            slot.next = conn
        else:
            slot.current = conn
        try:
            info = await conn.channel.wait_ready(self.settings.ready_timeout_s)
            conn.info = info if isinstance(info, dict) else {}
        except RequestTimeout:
            conn.fail_reason = f"not ready within {self.settings.ready_timeout_s:g}s"
            conn.log.error("slot {} pid {}: {}; killing it", slot.index, conn.pid, conn.fail_reason)
            conn.process.signal(9)
            await conn.process.wait()
            return False
        except ChannelClosed:
            await conn.process.wait(self.settings.kill_timeout_s)
            return False
        conn.set_state(WorkerState.READY)
        self.emit("ready", conn)
        self.spawn_task(lifecycle.heartbeat(self, conn))
        self.wake()
        return True

    async def _replace(self, slot: Slot, reason: str) -> bool:
        old = slot.current
        ok = await self._launch(slot, replacing=True)
        new, slot.next = slot.next, None
        if not ok or new is None or not new.alive:
            return False
        slot.current, slot.recycle_reason = new, None
        if old is not None and old.alive:
            self.spawn_task(lifecycle.stop(self, old, reason, self.settings.graceful_timeout_s))
        return True

    async def _spawn(self, slot: Slot) -> WorkerConnection:
        parent_sock, child_sock = socketpair()
        try:
            channel = await Channel.open(parent_sock, name=f"slot-{slot.index}")
            process = await spawn(
                [self.settings.python, *self.settings.bootstrap],
                env=self._child_env(slot.index, child_sock.fileno()),
                pass_fds=[child_sock.fileno()],
                on_output=self.settings.output(slot.index),
                cwd=self.settings.cwd,
            )
        finally:
            child_sock.close()
        conn = WorkerConnection(slot.index, slot.generation, process, channel)
        slot.generation += 1
        conn.on(STATS_EVENT, conn.stats.update)
        self.emit("spawning", conn)
        self.spawn_task(self._watch(slot, conn))
        return conn

    def _child_env(self, slot: int, fd: int) -> dict[str, str]:
        s = self.settings
        spec = {
            "fd": fd,
            "slot": slot,
            "pool": self.name,
            "target": self.target,
            "host": self.host,
            "parent_pid": os.getpid(),
            "options": s.options,
            "log_level": s.log_level,
            "log_json": s.log_json,
            "stats_interval_s": s.stats_interval_s,
            "work": s.work,
            "config_dir": s.config_dir,
            "state_dir": s.state_dir,
        }
        env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ENV}  # systemd talks to us only
        env.update(s.env)
        env[SPEC_ENV] = json.dumps(spec)
        env.update(PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
        return env

    async def _watch(self, slot: Slot, conn: WorkerConnection) -> None:
        await asyncio.shield(conn.process.exited)  # cancelling this watcher must not cancel the exit
        with contextlib.suppress(TimeoutError):  # let the last output reach the log first
            await asyncio.wait_for(asyncio.shield(conn.process.output_done), 1.0)
        conn.channel.close("child exited")
        conn.set_state(WorkerState.STOPPED, conn.exit_description())
        lifecycle.announce_killing(self, conn)
        self.emit("exit", conn)
        if slot.next is conn:
            slot.next = None
        elif slot.current is conn:
            slot.current = None
            if not conn.stop_requested and not self.stopping:
                self._record_failure(slot, conn)
        self.wake()

    def _record_failure(self, slot: Slot, conn: WorkerConnection) -> None:
        heals = conn.process.returncode != ExitCode.BOOT_IMPORT
        decision = slot.history.record_failure(self.clock(), conn.uptime_s, heals)
        if decision.fatal:
            slot.fatal_reason = f"{decision.reason}; last: {conn.exit_description()}"
            conn.log.error("slot {}: stopped -> fatal ({})", slot.index, slot.fatal_reason)
        else:
            slot.backoff_until = self.clock() + decision.delay_s
            conn.log.warning(
                "slot {} pid {} died: {}; {}", slot.index, conn.pid, conn.exit_description(), decision.reason
            )
