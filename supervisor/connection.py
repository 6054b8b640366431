"""WorkerConnection: the supervisor's handle on one child process of one slot."""

from __future__ import annotations

import time
from typing import Any

from loguru import logger

from corral.contract import ExitCode, ReadyInfo
from corral.ipc import DEFAULT_TIMEOUT_S, Channel, Handler
from corral.supervisor.process import ChildProcess
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
        text = ExitCode.describe(self.process.returncode)
        return f"{text}, {self.fail_reason}" if self.fail_reason else text

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
