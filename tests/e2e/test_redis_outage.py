"""An unreachable Redis, said where the operator looks: the console of ``corral run`` (its log) and
``corral status`` (table and ``--json``) name the server (its password as ``***``) and since when,
and its slots are not shown as ``ready`` meanwhile. The server is one of this test alone, killed and
started again on the same port (the page's view: ``test_dashboard.py``)."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import Corral, outage_pool, wait_until
from tests.servers import Standalone

pytestmark = pytest.mark.e2e

DOWN = re.compile(
    r"Redis unreachable since (\d\d:\d\d:\d\d), for \d+s: (\S+) \(slot \d pid \d+: lease not renewed\)"
)


def time_of_day(hms: str, near: float) -> float:
    """``HH:MM:SS`` (local time, as the supervisor prints it) as a timestamp of the day of ``near``."""
    day = time.localtime(near)
    hour, minute, second = map(int, hms.split(":"))
    return time.mktime((day.tm_year, day.tm_mon, day.tm_mday, hour, minute, second, 0, 0, -1))


def test_an_unreachable_redis_is_said_on_the_console_and_in_status(
    corral: Callable[..., Corral], locked_redis: Standalone, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # corral status's table on one line per row
    sup = outage_pool(corral, locked_redis, workers=2).start()
    sup.wait_all_ready(2, timeout_s=30)
    killed_at = time.time()
    locked_redis.kill()

    [line] = wait_until(
        lambda: [x for x in (sup.root / "supervisor.out").read_text().splitlines() if DOWN.search(x)],
        timeout_s=20,
        what=f"the console to say Redis is unreachable\n{sup.output()}",
    )
    said_at = time.time()
    match = DOWN.search(line)
    assert match is not None and " | WARNING  | " in line, line
    since, url = match.groups()
    assert url == locked_redis.shown_url, line
    assert killed_at - 1 <= time_of_day(since, killed_at) <= said_at, (line, killed_at, said_at)

    def both_cut_off() -> list[dict[str, Any]] | None:
        status = sup.status_fast()
        rows = status["slots"] if status else []
        return rows if len(rows) == 2 and all(r["state"] == "redis-down" for r in rows) else None

    wait_until(both_cut_off, timeout_s=20, what=f"both slots shown as redis-down\n{sup.output()}")
    status = sup.status()  # corral status --json
    for row in status["slots"]:
        assert row["reason"].startswith("Redis unreachable since "), row
        assert row["reason"].endswith(f": {locked_redis.shown_url} (lease not renewed)"), row
        assert killed_at - 1 <= row["redis_down_since"] <= time.time(), (row, killed_at)
    table = sup.cli("status")
    assert table.returncode == 0, table.stderr
    assert table.stdout.count("redis-down") == 2 and locked_redis.shown_url in table.stdout, table.stdout
    shown = [(sup.root / "supervisor.out").read_text(), sup.log(), json.dumps(status), table.stdout]
    assert not [text for text in shown if locked_redis.password in text], "the password was shown"

    locked_redis.start()  # the same port
    wait_until(
        lambda: "Redis reachable again: " in (sup.root / "supervisor.out").read_text(),
        timeout_s=20,
        what=f"the console to say Redis is back\n{sup.output()}",
    )
    status = sup.wait_all_ready(2, timeout_s=20)
    assert all(r["reason"] is None and r["redis_down_since"] is None for r in status["slots"]), status
    console = (sup.root / "supervisor.out").read_text()
    assert len(DOWN.findall(console)) == 1, "once per outage, not once per slot"
    assert console.count("Redis reachable again: ") == 1
    sup.send(signal.SIGTERM)
    assert sup.wait_exit(30) == 0
