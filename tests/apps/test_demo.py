"""The README's first command: the demo config starts on the embedded Redis and work flows."""

from __future__ import annotations

import json
import re
import signal
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Corral, wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


DEMO = Path(__file__).resolve().parents[2] / "entrypoints" / "demo" / "corral.toml"


@pytest.mark.e2e
def test_the_demo_runs_and_work_flows(corral: Callable[..., Corral]) -> None:
    sup = corral(worker="corral.entrypoints.demo:DemoWorker", workers=3)
    text = DEMO.read_text()
    text = re.sub(r'state_dir = ".*"', 'state_dir = "run"', text)  # the test's own dirs
    text = re.sub(r'log_dir = ".*"', 'log_dir = "logs"', text)
    text = text.replace("traffic_rate_per_s = 50", "traffic_rate_per_s = 200")
    port = free_port()
    text = text.replace('listen = "127.0.0.1:8787"', f'listen = "127.0.0.1:{port}"')
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
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/snapshot", timeout=10) as answer:
        board = json.load(answer)  # the dashboard the demo's config opens
    assert board["status"]["pool"] == "demo" and {w["name"] for w in board["work"]} >= {"mm:game-events"}
    sup.send(signal.SIGTERM)
    assert sup.wait_exit(30) == 0
