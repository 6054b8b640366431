"""Prometheus metrics of the pool, served by the supervisor (``[metrics] listen = "host:port"``).

The figures come from what the children report over IPC (and psutil); a custom collector reads them
at scrape time. The HTTP endpoint (``supervisor/web.py``, aiohttp) runs on the supervisor's own event
loop, so a scrape reads the pool's state on the loop thread, without locks or a second thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from corral.supervisor.status import Status

SLOT_COUNTERS = {"processed": "events processed", "failed": "events failed", "restarts": "restarts"}
WORK_COUNTERS = ("processed", "failed", "retried", "dead", "requeued", "throttled", "refused")
WORK_GAUGES = ("in_flight", "lag", "delayed", "paused")


class PoolCollector(Collector):
    def __init__(self, status: Callable[[], Status]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        pool = status["pool"]
        rows = [row for row in status["slots"] if row["state"] != "draining"]  # one row per slot
        for name, text in SLOT_COUNTERS.items():
            family = CounterMetricFamily(f"corral_slot_{name}", f"Per slot: {text}", labels=["pool", "slot"])
            for row in rows:
                family.add_metric([pool, str(row["slot"])], float(row[name]))  # type: ignore[literal-required]
            yield family
        up = GaugeMetricFamily(
            "corral_slot_ready",
            "1 if the slot has a ready child (that reaches Redis)",
            labels=["pool", "slot"],
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


def registry_of(status: Callable[[], Status]) -> CollectorRegistry:
    """A registry whose collector reads the pool's status at each scrape (served by ``web.py``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(status))
    return registry
