"""The supervisor's HTTP side, on its own event loop (aiohttp): ``/metrics`` for Prometheus, the
probes ``/health/live`` and ``/health/ready`` (``health.py``), and
what an app mounted on it adds: the dashboard (``[dashboard] app``, an import path, by default
``corral.entrypoints.dashboard:mount``). The supervisor never imports the dashboard: it is handed
the import path, as it is handed the worker, and gives the mount a ``Console``: what it may read
and ask of the running pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from corral.contract import LoadError, load_object
from corral.supervisor import health
from corral.supervisor.config import ConfigError
from corral.supervisor.status import Status


@dataclass
class Console:
    """What a mounted app gets of the supervisor: its status, its control requests (the control
    socket's: ``scale``, ``reload``, ``recycle``, ...), and where its config, Redis and logs are."""

    status: Callable[[], Status]
    control: dict[str, Callable[[Any], Any]]
    config: Any  # the pool's Config
    redis_url: str | None
    log_dir: Path
    token: str | None = None
    read_only: bool = False


Mount = Callable[[web.Application, Console], None]


class WebServer:
    def __init__(
        self, listen: str, registry: CollectorRegistry | None = None, console: Console | None = None
    ) -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.port = host.strip("[]") or "127.0.0.1", int(port)  # [::1]:8080 -> ::1
        self.registry = registry
        self.console = console
        self.app = web.Application()
        if registry is not None:
            self.app.router.add_get("/metrics", self._metrics)
        if console is not None:  # the probes: no token needed, nothing but the pool's health
            self.app.router.add_get("/health/live", self._live)
            self.app.router.add_get("/health/ready", self._ready)
        self._runner: web.AppRunner | None = None
        self._mounted = False

    def mount(self, mount: Mount, console: Console) -> None:
        mount(self.app, console)
        self._mounted = True

    async def start(self) -> None:
        if self.registry is not None and not self._mounted:
            self.app.router.add_get("/", self._metrics)  # a metrics-only server answers / too
        # handlers still running 1 s into a shutdown (an open event stream) are cancelled
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        logger.info("http on http://{}:{}/", self.host, self.port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _live(self, _request: web.Request) -> web.Response:
        """200 while the supervisor's loop turns (it answers)."""
        return web.json_response({"live": True})

    async def _ready(self, _request: web.Request) -> web.Response:
        """200 when every slot is ready and Redis answers; 503 with the reasons otherwise."""
        assert self.console is not None
        url = self.console.redis_url if self.console.config.uses_redis else None
        found = await health.check(self.console.status(), url)
        return web.json_response(found.to_json(), status=200 if found.ready else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        assert self.registry is not None
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def servers_for(
    config: Any, registry: CollectorRegistry, console: Console
) -> tuple[list[WebServer], list[Console]]:
    """``[metrics] listen`` and ``[dashboard] listen``: one server per address, each with
    ``/metrics``; the dashboard mounted from its import path (``[dashboard] app``) with ``console``
    (given the dashboard's token and read_only). ConfigError when that path does not load."""
    servers: dict[str, WebServer] = {}
    if config.metrics_listen:
        servers[config.metrics_listen] = WebServer(config.metrics_listen, registry, console)
    board = config.dashboard
    if not board.listen:
        return list(servers.values()), []
    server = servers.setdefault(board.listen, WebServer(board.listen, registry, console))
    try:
        mount = load_object(board.app)
    except LoadError as exc:
        raise ConfigError(f"dashboard.app: {exc}") from None
    console.token, console.read_only = board.token, board.read_only
    server.mount(mount, console)
    return list(servers.values()), [console]
