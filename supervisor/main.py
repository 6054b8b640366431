"""The supervisor process: a WorkerPool plus signals, control socket, log files and systemd.

Signal handlers and control requests only enqueue an ``Action``; ``_loop`` takes actions one at a
time, each with its one handler, and the pool's ``reconcile()`` does the rest. A second TERM (or
QUIT) during a stop skips the current rung of every stop ladder.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from loguru import logger

from corral.contract import LoadError, load_object
from corral.supervisor import config as config_module
from corral.supervisor.actions import SIGNAL_ACTIONS, Action, SupervisorExit, SupervisorState
from corral.supervisor.commands import control_handlers, refuse
from corral.supervisor.config import Config, ConfigError, redacted
from corral.supervisor.control import AlreadyRunning, ControlServer
from corral.supervisor.logs import LogManager
from corral.supervisor.outage import RedisWatch
from corral.supervisor.partitions import PartitionAssigner
from corral.supervisor.pool import WorkerPool
from corral.supervisor.rates import Rates
from corral.supervisor.recovery import Recovery
from corral.supervisor.redis_server import EmbeddedRedis, EmbeddedRedisError
from corral.supervisor.settings import PoolSettings
from corral.supervisor.spawning.seed import Seed
from corral.supervisor.states import WorkerState
from corral.supervisor.status import Status, WorkTotals, slot_rows, summary
from corral.supervisor.systemd import Notifier

if TYPE_CHECKING:  # the web side (aiohttp, prometheus) is imported only when something listens
    from corral.supervisor.web import Console, WebServer

TICK_S = 1.0
WEB_CLOSE_TIMEOUT_S = 3.0  # the last rung of the exit: open dashboard connections are cut


def private_dirs(*dirs: Path) -> None:
    """Job payloads end up in logs, the embedded server's files and the apps' own files: everything
    the supervisor and its children create is private to the service's user (umask 077), and so are
    the state and log dirs (0700, made so if they exist)."""
    os.umask(0o077)
    for folder in dirs:
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):
            folder.chmod(0o700)


class Supervisor:
    def __init__(self, config: Config, notifier: Notifier | None = None, seed: Seed | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier.from_env()
        self.logs = LogManager(config.log_dir, config.logging)
        self.redis_server = EmbeddedRedis(config.state_dir) if config.work.redis.url is None else None
        self.redis_url = self.redis_server.url if self.redis_server else config.work.redis.url
        self.actions: asyncio.Queue[tuple[Action, Any]] = asyncio.Queue()
        self.pool = WorkerPool(config.pool_name, config.workers, config.worker, self._settings(config))
        self.pool.spawner.adopt(seed)  # the zygote corral run launched first, if any
        redis_url = self.redis_url if config.uses_redis else None  # for the health probes' PING
        self.handlers = control_handlers(self.pool, self.actions, self.status, redis_url)
        self.control = ControlServer(config.control_socket, self.handlers)
        self.recovery = Recovery(self.pool) if config.uses_redis else None
        self.work_totals = WorkTotals(self.pool)
        self.redis_watch = RedisWatch(self.pool)  # logs when the children lose Redis, and get it back
        self.rates, self._summary_at = Rates(), time.monotonic()
        partitioned = {s.stream: s.partitions for s in config.work.streams if s.partitions}
        self.partitions = PartitionAssigner(self.pool, partitioned) if partitioned else None
        self.web: list[WebServer] = []  # [metrics] and [dashboard]: started after the setup hook
        self.consoles: list[Console] = []  # what the dashboard sees of us: updated by a reload
        self.started_at = time.monotonic()
        self.state = SupervisorState.STARTING
        self.exit_code = SupervisorExit.OK
        self._stop_task: asyncio.Task[None] | None = None
        self._reload_task: asyncio.Task[None] | None = None
        self._announced_ready = False
        self._wrote_pid_file = False

    def _settings(self, config: Config) -> PoolSettings:
        work: dict[str, Any] = {}
        if config.uses_redis:
            redis = dataclasses.replace(config.work.redis, url=self.redis_url)
            work = dataclasses.replace(config.work, redis=redis).to_json()
        inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
        python_path = os.pathsep.join([*map(str, config.python_path), *inherited])
        return dataclasses.replace(
            config.pool,
            output=self.logs.output_sink,
            work=work,
            config_dir=str(config.path.parent),
            state_dir=str(config.state_dir),
            env={**config.pool.env, "PYTHONPATH": python_path} if python_path else config.pool.env,
        )

    async def run(self) -> int:
        """Run until stopped; returns the process exit code. Whatever happens (a failed start, a
        Ctrl-C while the start-up checks run), everything started is stopped on the way out."""
        loop = asyncio.get_running_loop()
        for signum, action in SIGNAL_ACTIONS.items():
            loop.add_signal_handler(signum, self.actions.put_nowait, (action, None))
        try:
            code = await self._start_unless_stopped()
            if code is not None:
                self.exit_code = SupervisorExit(code)
                return code
            c = self.config
            logger.info(
                "corral {} supervisor pid {}: {} slots of {}", c.pool_name, os.getpid(), c.workers, c.worker
            )
            spawning = asyncio.create_task(self.pool.spawn_all())
            try:
                await self._loop()
            finally:
                spawning.cancel()
            return self.exit_code
        finally:
            for signum in SIGNAL_ACTIONS:
                loop.remove_signal_handler(signum)
            await self._shutdown()

    async def _start_unless_stopped(self) -> int | None:
        """``_start()``, cut short by a stop (TERM, INT, QUIT) that arrives meanwhile: then 0. Other
        actions wait for the start to finish."""
        starting = asyncio.ensure_future(self._start())
        held: list[tuple[Action, Any]] = []
        while not starting.done():
            getting = asyncio.ensure_future(self.actions.get())
            await asyncio.wait([starting, getting], return_when=asyncio.FIRST_COMPLETED)
            if not getting.done():
                getting.cancel()
                break
            action, arg = getting.result()
            if action in (Action.STOP, Action.QUIT):
                logger.info("{} while starting: not starting", action.value)
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
                return SupervisorExit.OK
            held.append((action, arg))
        for item in held:
            self.actions.put_nowait(item)
        return starting.result()

    async def _start(self) -> int | None:
        """Everything before the first child: None when it all went well, else the exit code (the
        reason printed on stderr: logging may not be set up)."""
        try:
            private_dirs(self.config.state_dir, self.config.log_dir)
            self.logs.start()
            await self.control.start()
            self.config.pid_file.write_text(f"{os.getpid()}\n")
            self._wrote_pid_file = True
            checking = asyncio.ensure_future(self.pool.check_imports())  # meanwhile, Redis starts
            if self.redis_server is not None and self.config.uses_redis:
                await self.redis_server.start(self.logs.output_sink("redis"))
            if problems := await checking:
                raise ConfigError("the workers cannot import their code:\n  " + "\n  ".join(problems))
            await self._setup_hook()
            await self._start_web()
        except AlreadyRunning as exc:
            print(f"corral: {exc}", file=sys.stderr)
            return SupervisorExit.ALREADY_RUNNING
        except (OSError, ConfigError, EmbeddedRedisError) as exc:
            print(f"corral: cannot start: {exc}", file=sys.stderr)
            return SupervisorExit.CONFIG
        return None

    async def _setup_hook(self) -> None:
        """``[pool] setup``: the parent side of the app, called with the pool before any child."""
        if self.config.setup is None:
            return
        for folder in reversed(self.config.python_path):
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))
        try:
            result = load_object(self.config.setup)(self.pool)
            if inspect.isawaitable(result):
                await asyncio.wait_for(result, self.config.pool.ready_timeout_s)
        except TimeoutError:
            raise ConfigError(
                f"pool.setup: {self.config.setup} took over {self.config.pool.ready_timeout_s:g}s"
            ) from None
        except LoadError as exc:
            raise ConfigError(f"pool.setup: {exc}") from None
        except Exception as exc:
            raise ConfigError(f"pool.setup: {self.config.setup} raised {exc!r}") from exc

    async def _start_web(self) -> None:
        """``[metrics] listen`` and ``[dashboard] listen`` (``web.servers_for``)."""
        if not (self.config.metrics_listen or self.config.dashboard.listen):
            return
        from corral.supervisor.metrics import registry_of
        from corral.supervisor.web import Console, servers_for

        console = Console(self.status, self.handlers, self.config, self.redis_url, self.config.log_dir)
        self.web, self.consoles = servers_for(self.config, registry_of(self.status), console)
        for server in self.web:
            await server.start()

    async def _shutdown(self) -> None:
        await self.control.close()
        for server in self.web:  # a stuck client (an event stream) must not hold the exit
            try:
                await asyncio.wait_for(server.close(), WEB_CLOSE_TIMEOUT_S)
            except TimeoutError:
                logger.warning(
                    "http server on port {} did not close in {:g}s; exiting anyway",
                    server.port,
                    WEB_CLOSE_TIMEOUT_S,
                )
        if self.redis_server is not None:
            await self.redis_server.stop()  # last: the workers needed it until they exited
        if self._wrote_pid_file:
            with contextlib.suppress(FileNotFoundError):
                self.config.pid_file.unlink()
        logger.info("supervisor exiting with code {}", int(self.exit_code))
        self.logs.close()

    async def _loop(self) -> None:
        getting: asyncio.Task[tuple[Action, Any]] = asyncio.create_task(self.actions.get())
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

    def _act(self, action: Action, arg: Any) -> None:
        handlers: dict[Action, Callable[[Any], None]] = {
            Action.STOP: lambda _arg: self._on_stop(fast=False),
            Action.QUIT: lambda _arg: self._on_stop(fast=True),
            Action.RELOAD: self._on_reload,
            Action.SCALE_UP: lambda _arg: self._on_scale(self.pool.size + 1),
            Action.SCALE_DOWN: lambda _arg: self._on_scale(self.pool.size - 1),
            Action.SCALE: self._on_scale,
            Action.REOPEN: lambda _arg: self.logs.reopen(),
            Action.RECYCLE: lambda slot: self.pool.request_recycle(slot, "an operator asked"),
        }
        handlers[action](arg)

    def _on_stop(self, fast: bool) -> None:
        if self._stop_task is not None:
            logger.warning("{} again: skipping ahead on the stop ladder", "quit" if fast else "stop")
            self.pool.skip_ahead()
        else:
            self._stop_task = asyncio.create_task(self._stop(fast))

    def _on_reload(self, outcome: asyncio.Future[str] | None) -> None:
        """``outcome`` (a ``corral reload``; None for SIGHUP) learns how the reload ended."""
        if self._stop_task is not None:
            refuse(outcome, "the supervisor is stopping")
        elif self._reload_task is not None and not self._reload_task.done():
            logger.warning("reload already in progress; ignored")
            refuse(outcome, "a reload is already in progress")
        else:
            self._reload_task = asyncio.create_task(self._reload(outcome))

    def _on_scale(self, size: int) -> None:
        if self._stop_task is None:
            self.pool.scale(max(0, size))

    def _tick_s(self) -> float:
        interval = self.notifier.watchdog_interval_s
        return min(TICK_S, interval) if interval else TICK_S

    def _tick(self) -> None:
        if self.pool.all_fatal.is_set() and self._stop_task is None:
            logger.error("every slot is fatal: stopping (exit code {})", int(SupervisorExit.ALL_FATAL))
            self.exit_code = SupervisorExit.ALL_FATAL
            self._act(Action.STOP, None)
            return
        if self.state is SupervisorState.STARTING and self._all_ready():
            self.state = SupervisorState.RUNNING
        if not self._announced_ready and self.state is SupervisorState.RUNNING:
            self._announced_ready = True
            self.notifier.ready(summary(self.pool))
            logger.info("every slot is ready")
        self.notifier.status(summary(self.pool))
        self._sample_work()
        if not self.pool.all_fatal.is_set() and self.state is not SupervisorState.STOPPING:
            self.notifier.watchdog()

    def _sample_work(self) -> None:
        now = time.monotonic()
        self.rates.sample(now, self.work_totals.rows())
        interval_s = self.config.logging.summary_interval_s
        running = self.state is SupervisorState.RUNNING and not self.config.work.empty
        if interval_s and now - self._summary_at >= interval_s and running:
            self._summary_at = now
            logger.info("work: {}", self.rates.summary())

    def _all_ready(self) -> bool:
        slots = [self.pool.slots.get(i) for i in range(self.pool.size)]
        return all(s is not None and s.state is WorkerState.READY for s in slots)

    async def _stop(self, fast: bool) -> None:
        self.state = SupervisorState.STOPPING
        self.notifier.stopping()
        if self._reload_task is not None:
            self._reload_task.cancel()
        await self.pool.stop(fast=fast)

    async def _reload(self, outcome: asyncio.Future[str] | None = None) -> None:
        self.notifier.reloading()
        self.state = SupervisorState.RELOADING
        logger.info("reload: re-reading {}", self.config.path)
        try:
            await self._reload_with(config_module.load(self.config.path))
        except (ConfigError, OSError) as exc:
            logger.error("reload aborted, the running pool is kept: {}", exc)
            refuse(outcome, f"the running pool is kept: {exc}")
        else:
            if outcome is not None and not outcome.done():
                outcome.set_result(f"reloaded: {self.pool.size} slots replaced")
        finally:
            self.state = SupervisorState.RUNNING
            self.notifier.ready(summary(self.pool))

    async def _reload_with(self, new: Config) -> None:
        settings = self._settings(new)
        if problems := await self.pool.check_imports(new.worker, settings, reload=True):
            raise ConfigError("the workers cannot import their code: " + "; ".join(problems))
        self._apply(new)
        if not await self.pool.reload(new.worker, settings):
            raise ConfigError(
                "reload stopped early: a new child did not become ready; the old children left are kept"
            )
        logger.info("reload finished")

    def _apply(self, new: Config) -> None:
        """Take the new config, but what only a restart can change; the slot count follows the
        config only when the config's ``workers`` changed (a ``corral scale`` survives a reload)."""
        kept_fields = ("pool_name", "state_dir", "log_dir", "logging", "metrics_listen")
        for name in kept_fields:
            if getattr(new, name) != getattr(self.config, name):
                logger.warning("reload: {} changed; it takes effect only after a restart", name)
        if new.workers != self.config.workers:
            logger.info("reload: workers {} -> {} (the config changed)", self.config.workers, new.workers)
            self.pool.scale(new.workers)
        elif self.pool.size != new.workers:
            logger.info(
                "reload: keeping {} slots set by scale (the config says {})", self.pool.size, new.workers
            )
        board = dataclasses.replace(
            new.dashboard, listen=self.config.dashboard.listen, app=self.config.dashboard.app
        )
        if board != new.dashboard:
            logger.warning(
                "reload: dashboard.listen or dashboard.app changed; it takes effect only after a restart"
            )
        kept = {name: getattr(self.config, name) for name in kept_fields}
        self.config = dataclasses.replace(new, **kept, dashboard=board)
        for console in self.consoles:  # a new token, read_only and the queues it knows, at once
            console.config, console.token, console.read_only = self.config, board.token, board.read_only
        partitioned = {s.stream: s.partitions for s in new.work.streams if s.partitions}
        if self.partitions is not None:
            self.partitions.update(partitioned)
        elif partitioned:  # the first partitioned stream: an assigner for the children running now
            self.partitions = PartitionAssigner(self.pool, {})
            self.partitions.update(partitioned)

    def status(self) -> Status:
        """What ``corral status`` (and the metrics endpoint) shows."""
        work = self.work_totals.rows()
        self.rates.add_to(work)
        return Status(
            pid=os.getpid(),
            pool=self.pool.name,
            state=self.state.value,
            size=self.pool.size,
            uptime_s=round(time.monotonic() - self.started_at, 3),
            rss_bytes=psutil.Process().memory_info().rss,
            redis_url=redacted(self.redis_url) if self.redis_url else None,
            spawn=self.pool.spawner.describe(self.pool.settings),
            config=str(self.config.path),
            config_digest=self.config.digest,
            slots=slot_rows(self.pool),
            work=work,
        )
