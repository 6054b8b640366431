"""The supervisor process: a WorkerPool plus signals, control socket, log files and systemd.

Signal handlers and control requests only enqueue an action; ``_loop`` takes actions one at a
time, and the pool's ``reconcile()`` does the rest. A second TERM (or QUIT) during a stop skips
the current rung of every stop ladder.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
from enum import IntEnum
from pathlib import Path
from typing import Any

from loguru import logger

from supervisor import config as config_module
from supervisor.config import Config, ConfigError
from supervisor.control import AlreadyRunning, ControlServer
from supervisor.logs import LogManager
from supervisor.metrics import MetricsServer
from supervisor.partitions import PartitionAssigner
from supervisor.pool import WorkerPool
from supervisor.recovery import Recovery
from supervisor.redis_server import EmbeddedRedis, EmbeddedRedisError
from supervisor.settings import PoolSettings
from supervisor.status import WorkTotals, snapshot, summary
from supervisor.systemd import Notifier


class SupervisorExit(IntEnum):
    OK = 0
    CONFIG = 2  # the configuration (or the command line) is invalid: nothing was started
    ALL_FATAL = 3  # every slot went fatal: systemd's Restart=on-failure may try again
    ALREADY_RUNNING = 4  # another supervisor owns this state dir
    NOT_RUNNING = 5  # (CLI) no supervisor answers on the control socket


SIGNAL_ACTIONS = {
    signal.SIGTERM: "stop",
    signal.SIGINT: "stop",
    signal.SIGQUIT: "quit",
    signal.SIGHUP: "reload",
    signal.SIGTTIN: "scale_up",
    signal.SIGTTOU: "scale_down",
    signal.SIGUSR1: "reopen",
}
TICK_S = 1.0


class Supervisor:
    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier.from_env()
        self.logs = LogManager(config.log_dir, config.logging)
        self.redis_server = EmbeddedRedis(config.state_dir) if config.work.redis.url is None else None
        self.redis_url = self.redis_server.url if self.redis_server else config.work.redis.url
        self.actions: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.pool = WorkerPool(config.pool_name, config.workers, config.worker, self._settings(config))
        self.control = ControlServer(config.control_socket, self._control_handlers())
        self.recovery = Recovery(self.pool) if config.uses_redis else None
        self.work_totals = WorkTotals()
        partitioned = {s.stream: s.partitions for s in config.work.streams if s.partitions}
        self.partitions = PartitionAssigner(self.pool, partitioned) if partitioned else None
        self.metrics = MetricsServer(self, config.metrics_listen) if config.metrics_listen else None
        self.started_at = time.monotonic()
        self.state = "starting"
        self.exit_code = SupervisorExit.OK
        self._stop_task: asyncio.Task[None] | None = None
        self._reload_task: asyncio.Task[None] | None = None
        self._announced_ready = False

    def _settings(self, config: Config) -> PoolSettings:
        work: dict[str, Any] = {}
        if config.uses_redis:
            redis = dataclasses.replace(config.work.redis, url=self.redis_url)
            work = dataclasses.replace(config.work, redis=redis).to_json()
        return dataclasses.replace(
            config.pool,
            output=self.logs.output_sink,
            work=work,
            config_dir=str(config.path.parent),
            state_dir=str(config.state_dir),
        )

    async def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        try:
            self.logs.start()
            await self.control.start()
            self.config.pid_file.write_text(f"{os.getpid()}\n")
            if self.redis_server is not None and self.config.uses_redis:
                await self.redis_server.start(self.logs.output_sink("redis"))
            if self.metrics is not None:
                await self.metrics.start()
        except AlreadyRunning as exc:
            print(f"corral: {exc}", file=sys.stderr)  # logging may not be set up yet
            return SupervisorExit.ALREADY_RUNNING
        except (OSError, ConfigError, EmbeddedRedisError) as exc:
            print(f"corral: cannot start: {exc}", file=sys.stderr)
            await self.control.close()
            if self.redis_server is not None:
                await self.redis_server.stop()
            return SupervisorExit.CONFIG
        loop = asyncio.get_running_loop()
        for signum, action in SIGNAL_ACTIONS.items():
            loop.add_signal_handler(signum, self.actions.put_nowait, (action, None))
        logger.info(
            "corral {} supervisor pid {}: {} slots of {}",
            self.config.pool_name,
            os.getpid(),
            self.config.workers,
            self.config.worker,
        )
        self.pool.on("exit", self._on_exit)
        spawning = asyncio.create_task(self.pool.spawn_all())
        try:
            await self._loop()
        finally:
            spawning.cancel()
            for signum in SIGNAL_ACTIONS:
                loop.remove_signal_handler(signum)
            await self.control.close()
            if self.metrics is not None:
                await self.metrics.close()
            if self.redis_server is not None:
                await self.redis_server.stop()  # last: the workers needed it until they exited
            with contextlib.suppress(FileNotFoundError):
                self.config.pid_file.unlink()
            logger.info("supervisor exiting with code {}", int(self.exit_code))
            self.logs.close()
        return self.exit_code

    async def _loop(self) -> None:
        getting: asyncio.Task[tuple[str, Any]] = asyncio.create_task(self.actions.get())
        try:
            while self._stop_task is None or not self._stop_task.done():
                waiting: list[asyncio.Future[Any]] = [getting]
                if self._stop_task is not None:
                    waiting.append(self._stop_task)  # exit as soon as the last child is reaped
                done, _ = await asyncio.wait(
                    waiting, timeout=self._tick_s(), return_when=asyncio.FIRST_COMPLETED
                )
                if getting not in done:
                    self._tick()
                    continue
                self._act(*getting.result())
                getting = asyncio.create_task(self.actions.get())
        finally:
            getting.cancel()

    def _act(self, action: str, arg: Any) -> None:
        if action in ("stop", "quit"):
            if self._stop_task is not None:
                logger.warning("{} again: skipping ahead on the stop ladder", action)
                self.pool.skip_ahead()
            else:
                self._stop_task = asyncio.create_task(self._stop(fast=action == "quit"))
        elif action == "reload" and self._stop_task is None:
            if self._reload_task is not None and not self._reload_task.done():
                logger.warning("reload already in progress; ignored")
            else:
                self._reload_task = asyncio.create_task(self._reload())
        elif action in ("scale_up", "scale_down", "scale") and self._stop_task is None:
            size = arg if action == "scale" else self.pool.size + (1 if action == "scale_up" else -1)
            self.pool.size = max(0, size)
            logger.info("scaling to {} slots", self.pool.size)
            self.pool.wake()
        elif action == "reopen":
            self.logs.reopen()

    def _tick_s(self) -> float:
        interval = self.notifier.watchdog_interval_s
        return min(TICK_S, interval) if interval else TICK_S

    def _tick(self) -> None:
        if self.pool.all_fatal.is_set() and self._stop_task is None:
            logger.error("every slot is fatal: stopping (exit code {})", int(SupervisorExit.ALL_FATAL))
            self.exit_code = SupervisorExit.ALL_FATAL
            self._act("stop", None)
            return
        if self.state == "starting" and self._all_ready():
            self.state = "running"
        if not self._announced_ready and self.state == "running":
            self._announced_ready = True
            self.notifier.ready(summary(self.pool))
            logger.info("every slot is ready")
        self.notifier.status(summary(self.pool))
        if not self.pool.all_fatal.is_set() and self.state != "stopping":
            self.notifier.watchdog()

    def _all_ready(self) -> bool:
        slots = [self.pool.slots.get(i) for i in range(self.pool.size)]
        return all(s is not None and s.state.value == "ready" for s in slots)

    async def _stop(self, fast: bool) -> None:
        self.state = "stopping"
        self.notifier.stopping()
        if self._reload_task is not None:
            self._reload_task.cancel()
        await self.pool.stop(fast=fast)

    async def _reload(self) -> None:
        self.notifier.reloading()
        self.state = "reloading"
        logger.info("reload: re-reading {}", self.config.path)
        try:
            new = config_module.load(self.config.path)
        except ConfigError as exc:
            logger.error("reload aborted, the running pool is kept: {}", exc)
        else:
            self._apply(new)
            ok = await self.pool.reload(new.worker, self._settings(new))
            logger.info("reload {}", "finished" if ok else "stopped early: old children kept")
        self.state = "running"
        self.notifier.ready(summary(self.pool))

    def _apply(self, new: Config) -> None:
        for field in ("pool_name", "state_dir", "log_dir", "logging"):
            if getattr(new, field) != getattr(self.config, field):
                logger.warning("reload: {} changed; it takes effect only after a restart", field)
        kept = {name: getattr(self.config, name) for name in ("pool_name", "state_dir", "log_dir", "logging")}
        self.config = dataclasses.replace(new, **kept)
        self.pool.size = new.workers

    def _on_exit(self, conn: Any) -> None:
        slot = self.pool.slots.get(conn.slot)
        if slot is not None:
            slot.processed_before += int(conn.stats.get("processed", 0))
            slot.failed_before += int(conn.stats.get("failed", 0))
        self.work_totals.add_exited(conn.stats)

    def _control_handlers(self) -> dict[str, Any]:
        def enqueue(action: str) -> Any:
            def handler(data: Any) -> str:
                self.actions.put_nowait((action, data))
                return action

            return handler

        def scale(data: Any) -> str:
            if type(data) is not int or data < 0:
                raise ValueError(f"scale needs a whole number >= 0, got {data!r}")
            self.actions.put_nowait(("scale", data))
            return f"scaling to {data}"

        return {
            "status": lambda _data: snapshot(self),
            "reload": enqueue("reload"),
            "stop": enqueue("stop"),
            "quit": enqueue("quit"),
            "reopen": enqueue("reopen"),
            "scale": scale,
        }


async def run_supervisor(config_path: str | Path) -> int:
    config = config_module.load(config_path)
    return await Supervisor(config).run()
