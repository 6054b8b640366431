"""Small workers for the end-to-end tests; a supervisor started with cwd = the repo root imports them
as ``tests.e2e.apps:<Name>``. Each reads its knobs from ``[options]`` (``WorkerContext.options``).

Behaviour that must happen only once per test (a hang, a memory hog) is guarded by a marker file
(``options.once_file``): the replacement child sees the file and behaves.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from corral.workers import BaseWorker


class Tick:
    """One unit of work per round: count, log, then idle ``interval_s``."""

    name = "tick"

    def __init__(self, worker: BaseWorker, interval_s: float) -> None:
        self.worker = worker
        self.idle_sleep_s = interval_s
        self.count = 0

    async def run(self) -> int:
        self.count += 1
        self.worker.log.info("slot {} pid {} tick {}", self.worker.slot, os.getpid(), self.count)
        return 0


class GoodWorker(BaseWorker):
    """Well behaved: ticks every ``tick_interval_s``; ``start_delay_s`` makes start() slow."""

    ticks: Tick

    @property
    def options(self) -> dict[str, Any]:
        return self.context.options

    def targeted(self) -> bool:
        """Whether the misbehaviour of a subclass applies to this slot (``options.slots``; default all)."""
        slots = self.options.get("slots")
        return slots is None or self.slot in slots

    def first_time(self) -> bool:
        """True once per test (creates ``options.once_file``); always True without that option."""
        marker = self.options.get("once_file")
        if marker is None:
            return True
        try:
            Path(marker).touch(exist_ok=False)
        except FileExistsError:
            return False
        return True

    async def start(self) -> None:
        delay_s = float(self.options.get("start_delay_s", 0.0))
        if delay_s:
            await asyncio.sleep(delay_s)
        self.ticks = Tick(self, float(self.options.get("tick_interval_s", 0.2)))
        self.manager.register_worker(self.ticks)
        self.on("whoami", lambda _data: {"slot": self.slot, "pid": os.getpid()})
        await super().start()

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "processed": self.ticks.count}


class StartFailsWorker(GoodWorker):
    """start() raises: the child exits before ever being ready."""

    async def start(self) -> None:
        raise RuntimeError(f"start() of slot {self.slot} fails on purpose")


class SlotOneFailsWorker(GoodWorker):
    """start() raises in slot 1 only: that slot ends fatal, the others run."""

    async def start(self) -> None:
        if self.slot == 1:
            raise RuntimeError("start() of slot 1 fails on purpose")
        await super().start()


class CrashingWorker(GoodWorker):
    """The work loop raises ``crash_after_s`` after ready, in the targeted slots."""

    async def run(self) -> None:
        if not self.targeted():
            await super().run()
            return
        await asyncio.sleep(float(self.options.get("crash_after_s", 0.2)))
        raise RuntimeError(f"slot {self.slot} crashes on purpose")


class HangingWorker(GoodWorker):
    """Blocks its event loop with ``time.sleep`` ``hang_after_s`` after ready (targeted slots, once)."""

    async def run(self) -> None:
        if self.targeted() and self.first_time():
            asyncio.get_running_loop().call_later(float(self.options.get("hang_after_s", 0.3)), self.hang)
        await super().run()

    def hang(self) -> None:
        self.log.warning("slot {} pid {}: blocking the event loop", self.slot, os.getpid())
        time.sleep(float(self.options.get("hang_s", 60.0)))


class MemoryHogWorker(GoodWorker):
    """Allocates (and touches) ``hog_mb`` MiB after ready, 8 MiB at a time (targeted slots, once)."""

    hoard: list[bytearray]

    async def run(self) -> None:
        self.hoard = []
        if self.targeted() and self.first_time():
            chunk = 8 * 1024 * 1024
            for _ in range(int(self.options.get("hog_mb", 200)) // 8):
                self.hoard.append(bytearray(b"\x01") * chunk)  # written, so it counts in RSS
                await asyncio.sleep(0.005)
            self.log.info("slot {} pid {}: holding {} MiB", self.slot, os.getpid(), len(self.hoard) * 8)
        await super().run()


class StrayOutputWorker(GoodWorker):
    """Writes to stdout/stderr around loguru (print, raw fd writes, a traceback), then works."""

    async def start(self) -> None:
        print(f"stray stdout line from slot {self.slot}")
        print(f"stray stderr line from slot {self.slot}", file=sys.stderr)
        os.write(2, f"raw bytes on fd 2 from slot {self.slot}\n".encode())
        try:
            {}["no-such-key"]
        except KeyError:
            traceback.print_exc()
        os.write(1, b"an unterminated last line")  # no newline; the next print ends it
        print(" ... ended")
        await super().start()


class SlowStopWorker(GoodWorker):
    """Asked to stop, it keeps 'finishing in-flight work' for ``linger_s`` (a stop that takes long)."""

    async def run(self) -> None:
        await super().run()
        self.log.info("slot {} pid {}: finishing slow in-flight work", self.slot, os.getpid())
        await asyncio.sleep(float(self.options.get("linger_s", 20.0)))


class StallingStartWorker(GoodWorker):
    """The first child (once per test) never gets ready: its start() sleeps ``stall_s``."""

    async def start(self) -> None:
        if self.targeted() and self.first_time():
            self.log.warning("slot {} pid {}: stalling in start()", self.slot, os.getpid())
            await asyncio.sleep(float(self.options.get("stall_s", 60.0)))
        await super().start()


class TickOnly(BaseWorker):
    """No units of work: it only answers ``tick`` (n -> n + 1), as blargbot's example worker does."""

    async def start(self) -> None:
        self.on("tick", lambda n: n + 1)
        await super().start()


def handler_of_three(job: Any, ctx: Any, extra: Any) -> None:
    """A handler corral cannot call: neither (job) nor (job, ctx) binds."""


def handler_of_none() -> None:
    """Likewise: it takes no job."""
