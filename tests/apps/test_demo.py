"""The README's first command: the demo config starts on the embedded Redis and work flows."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Corral, wait_until

DEMO = Path(__file__).resolve().parents[2] / "entrypoints" / "demo" / "corral.toml"


@pytest.mark.e2e
def test_the_demo_runs_and_work_flows(corral: Callable[..., Corral]) -> None:
    sup = corral(worker="corral.entrypoints.demo:DemoWorker", workers=3)
    text = DEMO.read_text()
    text = re.sub(r'state_dir = ".*"', 'state_dir = "run"', text)  # the test's own dirs
    text = re.sub(r'log_dir = ".*"', 'log_dir = "logs"', text)
    text = text.replace("traffic_rate_per_s = 50", "traffic_rate_per_s = 200")
    sup.config.write_text(text)
    sup.start()
    status = sup.wait_all_ready(3, timeout_s=20)
    assert status["redis_url"].startswith("unix://")  # the embedded server

    def flowing() -> Any:
        streams = sup.status()["work"]["streams"]
        return streams if streams.get("mm:game-events", {}).get("processed", 0) >= 200 else None

    streams = wait_until(flowing, timeout_s=30, what="demo events handled")
    assert streams["mm:game-events"]["failed"] == 0
    table = sup.cli("status").stdout
    assert "APP METRICS" in table and "matchmaker" in table
    sup.send(signal.SIGTERM)
    assert sup.wait_exit(30) == 0
