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
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

from loguru import logger

from corral.contract import ChildSpec, Event, ReadyInfo, StopMode
from corral.ipc import Channel, ChannelClosed, RequestTimeout, socketpair
from corral.supervisor import monitor
from corral.supervisor.connection import WorkerConnection
from corral.supervisor.events import ChildHandler, EventBus, Listener, PoolEvent, PoolEvents
from corral.supervisor.lifecycle import Escalation, HeartbeatSettings, StopDeadlines, heartbeat, stop_child
from corral.supervisor.settings import PoolSettings
from corral.supervisor.slot import Slot
from corral.supervisor.spawning.childenv import child_spec
from corral.supervisor.spawning.spawner import Spawner
from corral.supervisor.spawning.zygote import ForkFailed
from corral.supervisor.states import SlotHistory, WorkerState

MAX_DRAINING = 2  # old children of one slot finishing their jobs at once


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
        self._tasks: set[asyncio.Task[Any]] = set()
        self._events = EventBus(self.spawn_task)
        self.spawner = Spawner(name)
        self._handlers: PoolEvents | None = None  # what every child may ask of the parent
        self._wake = asyncio.Event()
        self._escalation = Escalation()
        self._reload_lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self.stopping = False
        self.all_fatal = asyncio.Event()

    def on(self, event: str, listener: Listener) -> None:
        """``spawning``, ``ready``, ``killing`` or ``exit`` (``PoolEvent``): ``listener(conn)``."""
        self._events.on(event, listener)

    def off(self, event: str, listener: Listener) -> None:
        self._events.off(event, listener)

    def handle(self, event: str, handler: ChildHandler) -> None:
        """Answer IPC ``event`` from every present and future child: ``handler(conn, data)``."""
        if self._handlers is None:
            self._handlers = PoolEvents(self)
        self._handlers.on(event, handler)

    def get(self, slot: int) -> WorkerConnection | None:
        """The current child of ``slot`` (None while it has none)."""
        found = self.slots.get(slot)
        return found.current if found else None

    def connections(self) -> list[WorkerConnection]:
        """Every live child, including replacements still starting."""
        return [conn for slot in self.slots.values() for conn in slot.children()]

    async def spawn_all(self, timeout_s: float | None = None) -> bool:
        """Start supervising; True once every slot is ready (False: a slot is fatal, or the deadline)."""
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name=f"pool:{self.name}")
            self.spawn_task(self._monitor())
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

    def scale(self, size: int) -> None:
        """Grow or shrink to ``size`` slots (the highest slots are stopped gracefully)."""
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        if size == self.size:
            return
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
            await self.spawner.renew(self.child_spec(0, -1), self.settings)
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
        mode = StopMode.FAST if fast else StopMode.GRACEFUL
        await asyncio.gather(*(self._stop_child(c, "pool stop", mode, timeout_s) for c in conns))
        if self._supervisor is not None:
            self._supervisor.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.spawner.close()

    def skip_ahead(self) -> None:
        """Every stop ladder in progress moves to its next rung now (a second TERM)."""
        self._escalation.skip_ahead()

    def request_recycle(self, slot: int, reason: str) -> None:
        found = self.slots.get(slot)
        if found is not None and found.current is not None and not found.recycle_reason:
            found.recycle_reason = reason
            self.wake()

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
        conns = slot.children()
        if not conns and not slot.busy:
            del self.slots[slot.index]
        for conn in conns:
            if not conn.stop_requested:
                self.spawn_task(self._stop_child(conn, "scaled down"))

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

    async def _launch(self, slot: Slot, replacing: bool) -> bool:
        slot.backoff_until = 0.0
        try:
            conn = await self._spawn(slot)
        except (OSError, ForkFailed) as exc:  # no child, or one cut off from us: try again soon
            self.log.error("slot {}: no child started: {!r}; trying again in 1s", slot.index, exc)
            slot.backoff_until = self.clock() + 1.0
            self.wake()
            return False
        if replacing:
            slot.next = conn
        else:
            slot.current = conn
        try:
            info = await conn.channel.wait_ready(self.settings.ready_timeout_s)
            conn.info = ReadyInfo.from_wire(info)
        except RequestTimeout:
            conn.fail_reason = f"not ready within {self.settings.ready_timeout_s:g}s"
            conn.log.error("slot {} pid {}: {}; killing it", slot.index, conn.pid, conn.fail_reason)
            conn.process.signal(signal.SIGKILL)
            await conn.process.wait()
            return False
        except ChannelClosed:
            await conn.process.wait(self.settings.kill_timeout_s)
            return False
        conn.set_state(WorkerState.READY)
        self._events.emit(PoolEvent.READY, conn)
        self.spawn_task(heartbeat(conn, self._heartbeat_settings()))
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
            self._drain(slot, old, reason)
        return True

    def _drain(self, slot: Slot, old: WorkerConnection, reason: str) -> None:
        """``old`` finishes what it holds (its lease renewed) for up to ``drain_s`` while its
        replacement works; past ``MAX_DRAINING`` of them, the slot's oldest hands its work back."""
        for extra in slot.start_draining(old, self.clock(), MAX_DRAINING):
            extra.log.warning(
                "slot {} pid {}: too many old children draining: hands back", slot.index, extra.pid
            )
            extra.process.signal(signal.SIGTERM)  # its ladder's next rung, at once
        self.spawn_task(
            self._stop_child(old, f"{reason}: draining", graceful_timeout_s=self.settings.drain_s)
        )

    async def _spawn(self, slot: Slot) -> WorkerConnection:
        parent_sock, child_sock = socketpair()
        try:
            channel = await Channel.open(parent_sock, name=f"slot-{slot.index}")
            spec, template = self.child_spec(slot.index, child_sock.fileno()), self.child_spec(0, -1)
            try:
                process = await self.spawner.start(
                    spec, template, self.settings, self.settings.output(slot.index)
                )
            except BaseException:
                channel.close("no child")  # a child cut off from us sees its end close: it exits
                raise
        finally:
            child_sock.close()
        conn = WorkerConnection(slot.index, slot.generation, process, channel)
        slot.generation += 1
        conn.on(Event.STATS, conn.take_stats)
        conn.on(Event.FAILED, conn.take_failure)
        conn.on(Event.RECYCLE, lambda data: self._recycle_asked(conn, data))
        self._events.emit(PoolEvent.SPAWNING, conn)
        self.spawn_task(self._watch(slot, conn))
        return conn

    def child_spec(
        self, slot: int, fd: int, target: str | None = None, settings: PoolSettings | None = None
    ) -> ChildSpec:
        """What the child of ``slot`` is told (``target`` and ``settings``: those of a reload)."""
        return child_spec(
            self.name, self.host, slot, fd, target=target or self.target, s=settings or self.settings
        )

    async def check_imports(
        self, target: str | None = None, settings: PoolSettings | None = None, reload: bool = False
    ) -> list[str]:
        """Whether children of ``target`` (and ``settings``' streams and queues) can import their code:
        the problems found by a new zygote or a throwaway child, one line each (empty: fine).
        ``reload``: a reload follows, whose children are forked from that zygote."""
        settings = settings or self.settings
        return await self.spawner.prepare(self.child_spec(0, -1, target, settings), settings, reload)

    async def _watch(self, slot: Slot, conn: WorkerConnection) -> None:
        await asyncio.shield(conn.process.exited)  # cancelling this watcher must not cancel the exit
        with contextlib.suppress(TimeoutError):  # let the last output reach the log first
            await asyncio.wait_for(asyncio.shield(conn.process.output_done), 1.0)
        conn.channel.close("child exited")
        conn.set_state(WorkerState.STOPPED, conn.exit_description())
        self._announce_killing(conn)
        self._events.emit(PoolEvent.EXIT, conn)
        slot.processed_before += int(conn.stats.get("processed", 0))  # its counts stay the slot's
        slot.failed_before += int(conn.stats.get("failed", 0))
        if slot.next is conn:
            slot.next = None
        elif slot.current is conn:
            slot.current = None
            if not conn.stop_requested and not self.stopping:
                slot.exited_unasked(conn, self.clock())
        self.wake()

    def _recycle_asked(self, conn: WorkerConnection, data: Any) -> None:
        reason = (
            str((data or {}).get("reason") or "asked by the child") if isinstance(data, dict) else "asked"
        )
        if self.slots.get(conn.slot) is not None and self.slots[conn.slot].current is conn:
            conn.log.warning("slot {} pid {}: recycling: {}", conn.slot, conn.pid, reason)
            self.request_recycle(conn.slot, reason)

    def _announce_killing(self, conn: WorkerConnection) -> None:
        """``killing`` goes out once per child: when we start stopping it, or when it died by itself."""
        if not conn.killing_emitted:
            conn.killing_emitted = True
            self._events.emit(PoolEvent.KILLING, conn)

    async def _stop_child(
        self,
        conn: WorkerConnection,
        reason: str,
        mode: StopMode = StopMode.GRACEFUL,
        graceful_timeout_s: float | None = None,
    ) -> None:
        if not conn.alive:
            return
        self._announce_killing(conn)
        s = self.settings
        graceful_s = s.graceful_timeout_s if graceful_timeout_s is None else graceful_timeout_s
        await stop_child(conn, reason, StopDeadlines(graceful_s, s.kill_timeout_s), self._escalation, mode)

    def _heartbeat_settings(self) -> HeartbeatSettings:
        s = self.settings
        return HeartbeatSettings(s.heartbeat_interval_s, s.heartbeat_timeout_s, s.abort_timeout_s)

    async def _monitor(self) -> None:
        """Sample every child's RSS and CPU; recycle a ready child past its limits."""
        while not self.stopping:
            for slot in list(self.slots.values()):
                for child in slot.children():
                    monitor.sample(child)
                current = slot.current
                if current is not None and current.state is WorkerState.READY and not slot.recycle_reason:
                    reason = monitor.recycle_reason(self.settings, current)
                    if reason:
                        current.log.info("slot {} pid {}: recycling: {}", current.slot, current.pid, reason)
                        self.request_recycle(slot.index, reason)
            self.spawner.reap_strays({c.pid for c in self.connections()})
            await asyncio.sleep(self.settings.monitor_interval_s)
