"""The life of a child after boot: start the worker, announce ready, run, stop, report, exit.

``ChildRuntime`` drives one ``BaseWorker`` through ``start()`` -> ``run()`` -> ``stop()``, answers
the supervisor's events (``corral.contract.Event``) and pushes the worker's stats every
``stats_interval_s``. Its ``main()`` returns the child's exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import traceback
from typing import Any

from loguru import logger

from corral.contract import ChildSpec, Event, ExitCode, LoadError, StopMode
from corral.ipc import Channel, IPCError
from corral.workers.base import BaseWorker, WorkerContext
from corral.workers.consumers.base import HandlerRunner
from corral.workers.consumers.consumer_set import Consumers, new_worker_id
from corral.workers.topology import connect

MAX_ERROR_CHARS = 500  # of the error a failed child tells the supervisor (its console line)


def say_failure(channel: Channel, exc: BaseException) -> None:
    """Tell the supervisor why we exit, for its console (the traceback stays in our log file): the
    exception's last line, as a traceback ends (``ValueError: bad option x``), on one line. The
    channel is closed, so what was sent is written before we exit."""
    text = " ".join("".join(traceback.format_exception_only(type(exc), exc)).split())
    with contextlib.suppress(IPCError):
        channel.send(Event.FAILED, {"error": text[:MAX_ERROR_CHARS]})
    channel.close("failed")


class ChildRuntime:
    """Drives one BaseWorker through start → run → stop and reports to the supervisor."""

    def __init__(self, spec: ChildSpec, worker: BaseWorker) -> None:
        self.spec = spec
        self.worker = worker
        self.stop_mode: asyncio.Future[StopMode] | None = None
        self.run_task: asyncio.Task[None] | None = None
        self.consumers: Consumers | None = None
        self.log = logger.bind(worker=spec.slot)

    def request_stop(self, mode: StopMode, escalates: bool = True) -> str:
        """Graceful: stop taking work and finish what is in flight. Fast, or a later request that
        ``escalates`` (the stop ladder's SIGTERM after the supervisor's graceful ask): cancel the work
        loop, so consumers hand their in-flight work back."""
        assert self.stop_mode is not None
        if not self.stop_mode.done():
            self.log.info("stopping ({})", mode)
            self.stop_mode.set_result(mode)
            self.worker.stopping.set()
            if mode is not StopMode.FAST:
                return "stopping"
        elif mode is not StopMode.FAST and not escalates:
            return "stopping"
        if self.run_task is not None and not self.run_task.done():
            self.log.warning("stopping fast: in-flight work is cancelled")
            self.run_task.cancel()
        return "stopping"

    def _ask_recycle(self, reason: str) -> None:
        """A sync handler is stuck in a thread nothing can stop: ask for a replacement (the
        supervisor starts one, then stops this child down its ladder)."""
        self.log.error("{}: asking to be recycled", reason)
        if self.worker._channel is not None:
            with contextlib.suppress(IPCError):
                self.worker.channel.send(Event.RECYCLE, {"reason": reason})

    def _on_stop(self, data: Any) -> str:
        mode = (data or {}).get("mode") if isinstance(data, dict) else None
        # a graceful ask after a SIGTERM (a terminal's Ctrl-C or a group TERM reached us and the
        # supervisor at once) is the same stop, not a second one
        return self.request_stop(
            StopMode.FAST if mode == StopMode.FAST else StopMode.GRACEFUL, escalates=False
        )

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        self.stop_mode = loop.create_future()
        sock = socket.socket(fileno=self.spec.fd)
        # a stop may come at any moment, before we are ready too (even before the channel's first
        # read): it is never lost
        channel = await Channel.open(sock, {Event.STOP: self._on_stop}, name=f"worker-{self.spec.slot}")
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, StopMode.GRACEFUL)
        boot = asyncio.ensure_future(self._boot(channel))
        racing: list[asyncio.Future[Any]] = [boot, self.stop_mode]
        await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        if not boot.done():  # stopped while starting: nothing taken yet, nothing to hand back
            boot.cancel()
            await asyncio.gather(boot, return_exceptions=True)
            self.log.info("stopped before it was ready")
            if self.consumers is not None:
                await self.consumers.close()
            return self._leave(channel, ExitCode.OK)
        failed = boot.result()
        return failed if failed is not None else await self._work(channel)

    async def _boot(self, channel: Channel) -> int | None:
        """Everything before ``ready``: None when it went well, else the exit code."""
        spec = self.spec
        context = WorkerContext(
            spec.slot,
            spec.pool,
            spec.host,
            spec.told.options,
            new_worker_id(spec.identity),
            spec.told.config_dir,
            spec.told.state_dir,
        )
        self.worker.bind(context, channel)
        try:
            self.consumers = await self._make_consumers(context)
        except LoadError as exc:
            self.log.error("boot failed: {}", exc)
            return ExitCode.BOOT_IMPORT
        channel.on(Event.STATS, lambda _data: self.worker.stats())
        try:
            await self.worker.start()
        except Exception as exc:
            self.log.exception("start() failed")
            say_failure(channel, exc)
            return ExitCode.BOOT_START
        if self.consumers is not None:  # they begin after the worker's own start()
            await self.consumers.join()  # a lease before any work: what we take is never unowned
            for unit in self.consumers.units():
                self.worker.manager.register_worker(unit)
            consumers = self.consumers
            channel.on(Event.RECOVER, lambda data: consumers.recover(**recover_args(data)))
            channel.on(Event.ASSIGN, consumers.assign)
            channel.on(Event.REVOKE, consumers.revoke)
        if not self.worker.ready_announced:  # a start() that forgot super().start()
            await BaseWorker.start(self.worker)
        return None

    async def _make_consumers(self, context: WorkerContext) -> Consumers | None:
        work = self.spec.work
        if work.redis.url is None:
            if not work.empty:
                raise LoadError("streams or queues are declared but no Redis URL was handed to the child")
            return None  # a pool without Redis (no [redis], no streams, no queues)
        self.worker.redis = await connect(work.redis)
        runner = HandlerRunner(self.spec.told.sync_threads, on_stuck=self._ask_recycle)
        consumers = Consumers(
            work,
            redis=self.worker.redis,
            pool=self.spec.pool,
            worker_id=context.worker_id,
            log=self.log,
            runner=runner,
        )
        self.worker.consumer_stats = consumers.stats
        consumers.give_handlers(self.worker)
        return consumers

    async def _work(self, channel: Channel) -> int:
        assert self.stop_mode is not None
        self.log.info("ready (pid {})", os.getpid())
        self.run_task = asyncio.create_task(self.worker.run(), name="worker.run")
        reporter = asyncio.create_task(self._report(channel), name="stats")
        closed: asyncio.Future[str] = asyncio.ensure_future(channel.wait_closed())
        waiting: list[asyncio.Future[Any]] = [self.run_task, self.stop_mode, closed]
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        code: int = ExitCode.OK
        if closed in done and not self.stop_mode.done():
            self.log.warning("supervisor channel closed ({}); stopping fast", closed.result())
            self.request_stop(StopMode.FAST)
            code = ExitCode.ORPHANED
        try:
            await self.run_task
        except asyncio.CancelledError:
            pass
        except Exception:
            self.log.exception("the work loop crashed")
            code = ExitCode.CRASHED
        else:
            if not self.stop_mode.done():
                self.log.warning("the work loop ended without being asked to stop")
        reporter.cancel()
        try:
            await self.worker.stop()
        except Exception:
            self.log.exception("stop() failed")
        if self.consumers is not None:
            await self.consumers.close()
        self._push_stats(channel)
        closed.cancel()
        return self._leave(channel, code)

    def _leave(self, channel: Channel, code: int) -> int:
        channel.close("child exiting")
        # Exiting now: a late SIGTERM (PR_SET_PDEATHSIG of a dead supervisor) must not turn a clean
        # exit into "killed by SIGTERM" once asyncio.run has removed our handler.
        asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return code

    async def _report(self, channel: Channel) -> None:
        while not channel.closed:
            self._push_stats(channel)
            await asyncio.sleep(self.spec.told.stats_interval_s)

    def _push_stats(self, channel: Channel) -> None:
        with contextlib.suppress(IPCError):
            channel.send(Event.STATS, self.worker.stats())


def recover_args(data: Any) -> dict[str, Any]:
    """``Event.RECOVER``'s payload as ``Consumers.recover``'s arguments (the supervisor saw the exit)."""
    return {"dead_worker_id": str(data["worker_id"]), "force": True, "died": bool(data.get("died", True))}
