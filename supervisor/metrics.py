"""Prometheus metrics of the pool, served by the supervisor (``[metrics] listen = "host:port"``).

The figures come from what the children report over IPC (and psutil); a custom collector reads them
at scrape time. The HTTP endpoint runs on the supervisor's own event loop, so a scrape reads the
pool's state on the loop thread, without locks or a second thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from corral.supervisor.status import Status

SLOT_COUNTERS = {"processed": "events processed", "failed": "events failed", "restarts": "restarts"}
WORK_COUNTERS = ("processed", "failed", "retried", "dead", "requeued", "throttled")
WORK_GAUGES = ("in_flight", "lag", "delayed", "paused")


class PoolCollector(Collector):
    def __init__(self, status: Callable[[], Status]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        pool, rows = status["pool"], status["slots"]
        for name, text in SLOT_COUNTERS.items():
            family = CounterMetricFamily(f"corral_slot_{name}", f"Per slot: {text}", labels=["pool", "slot"])
            for row in rows:
                family.add_metric([pool, str(row["slot"])], float(row[name]))  # type: ignore[literal-required]
            yield family
        up = GaugeMetricFamily(
            "corral_slot_ready", "1 if the slot has a ready child", labels=["pool", "slot"]
        )
        rss = GaugeMetricFamily(
            "corral_slot_rss_bytes", "Resident memory of the slot's child", labels=["pool", "slot"]
        )
        cpu = GaugeMetricFamily("corral_slot_cpu_percent", "CPU of the slot's child", labels=["pool", "slot"])
        for row in rows:
            labels = [pool, str(row["slot"])]
            up.add_metric(labels, 1.0 if row["state"] == "ready" else 0.0)
            rss.add_metric(labels, float(row["rss_bytes"]))
            cpu.add_metric(labels, float(row["cpu_percent"]))
        yield from (up, rss, cpu)
        yield from self._work(pool, status["work"])

    def _work(self, pool: str, work: dict[str, dict[str, dict[str, float]]]) -> Iterator[Metric]:
        kinds: tuple[tuple[tuple[str, ...], type[CounterMetricFamily | GaugeMetricFamily]], ...] = (
            (WORK_COUNTERS, CounterMetricFamily),
            (WORK_GAUGES, GaugeMetricFamily),
        )
        for kind in ("queue", "stream"):
            rows = work.get(f"{kind}s", {})
            for names, family_type in kinds:
                for figure in names:
                    family = family_type(
                        f"corral_{kind}_{figure}", f"Per {kind}: {figure}", labels=["pool", kind]
                    )
                    for name, figures in sorted(rows.items()):
                        family.add_metric([pool, name], float(figures.get(figure, 0)))
                    yield family


class MetricsServer:
    def __init__(self, status: Callable[[], Status], listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PoolCollector(status))
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        logger.info("metrics on http://{}:{}/metrics", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if path.split(b"?")[0] in (b"/metrics", b"/"):
                status, body, kind = b"200 OK", generate_latest(self.registry), CONTENT_TYPE_LATEST.encode()
            else:
                status, body, kind = b"404 Not Found", b"not found: try /metrics\n", b"text/plain"
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + kind
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
