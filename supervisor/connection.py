"""WorkerConnection: the supervisor's handle on one child process of one slot."""

from __future__ import annotations

import time
from typing import Any

from loguru import logger

from corral.contract import ExitCode, ReadyInfo
from corral.ipc import DEFAULT_TIMEOUT_S, Channel, Handler
from corral.supervisor.spawning.process import ChildProcess
from corral.supervisor.states import WorkerState


class WorkerConnection:
    """Talk to one child (``send``/``request``/``on``/``off``) and see its ``pid``, ``slot``, ``state``."""

    def __init__(self, slot: int, generation: int, process: ChildProcess, channel: Channel) -> None:
        self.slot = slot
        self.generation = generation  # how many children this slot had before this one
        self.process = process
        self.channel = channel
        self.state = WorkerState.STARTING
        self.started_at = time.monotonic()
        self.stats: dict[str, Any] = {}
        self.info: ReadyInfo | None = None  # what the child said with `ready` (pid, worker id)
        self.rss_bytes = 0
        self.cpu_percent = 0.0
        self.stop_requested = False  # an exit after this is expected, not a failure
        self.killing_emitted = False  # `killing` goes out once per child
        self.psutil_process: Any = None  # sampled by supervisor.monitor
        self.jobs_limit: int | None = None  # this child's max_jobs + jitter, drawn once
        self.fail_reason: str | None = None  # why the supervisor killed it (ready timeout, hang)
        self.last_error: str | None = None  # what it said of its failure before exiting (start() raised)
        self.redis_down_since: float | None = None  # wall clock: since when it cannot reach Redis
        self.log = logger.bind(slot=slot, pid=process.pid)
        self.log.info("slot {} pid {}: {}", slot, process.pid, self.state.value)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_at

    @property
    def alive(self) -> bool:
        return not self.process.exited.done()

    def set_state(self, state: WorkerState, reason: str = "") -> None:
        """Every transition is logged once, with slot, pid and reason."""
        if state is self.state:
            return
        self.log.info(
            "slot {} pid {}: {} -> {}{}",
            self.slot,
            self.pid,
            self.state.value,
            state.value,
            f" ({reason})" if reason else "",
        )
        self.state = state

    def exit_description(self) -> str:
        said = (ExitCode.describe(self.process.returncode), self.fail_reason, self.last_error)
        return ", ".join(text for text in said if text)

    def take_stats(self, data: Any) -> None:
        """Its stats (``Event.STATS``); while it says Redis is away (``redis_down_s``), since when."""
        self.stats.update(data)
        down_s = self.stats.get("redis_down_s")
        if down_s is None:
            self.redis_down_since = None
        elif self.redis_down_since is None:
            self.redis_down_since = round(time.time() - float(down_s), 3)

    def take_failure(self, data: Any) -> None:
        """Why it is about to exit, in its own words (``Event.FAILED``: its exception's last line)."""
        error = data.get("error") if isinstance(data, dict) else None
        self.last_error = str(error) if error else None

    def send(self, event: str, data: Any = None) -> None:
        self.channel.send(event, data)

    async def request(self, event: str, data: Any = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
        return await self.channel.request(event, data, timeout_s)

    def on(self, event: str, handler: Handler) -> None:
        self.channel.on(event, handler)

    def off(self, event: str, handler: Handler) -> None:
        self.channel.off(event, handler)

    def __repr__(self) -> str:
        return f"<WorkerConnection slot={self.slot} pid={self.pid} state={self.state.value}>"
