"""The dashboard in a real headless browser (Debian's chromium, driven by Playwright): the overview's
graph moves while jobs flow; pausing a queue by clicking stops its jobs; a dead letter retried by
clicking is processed; an action without the token is refused and changes nothing. A screenshot of
each page goes to ``$CORRAL_SCREENSHOTS`` (default: the test's temporary folder)."""

from __future__ import annotations

import calendar
import json
import os
import re
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api as playwright_api

from corral.workers.jobs.keys import Keys
from tests.e2e.conftest import Corral, outage_pool, wait_until
from tests.servers import Standalone

H = "tests.integration.workers.redis_handlers"
TOKEN = "test-token-3f9a"
KEYS = Keys()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: .ci/setup installs it (apt-get install chromium)")
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def board(corral: Callable[..., Corral], redis_clean: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    port = free_port()
    sup = corral(worker="corral.workers.base:BaseWorker", workers=2, redis={"url": redis_clean.url})
    sup.config.write_text(
        sup.config.read_text()
        + f'[dashboard]\nlisten = "127.0.0.1:{port}"\ntoken = "{TOKEN}"\n'
        + f'[[queues]]\nnames = ["jobs"]\nhandler = "{H}:slow_count"\nblock_s = 0.2\nconcurrency = 4\n'
        + f'[[queues]]\nnames = ["flaky"]\nhandler = "{H}:fail_until_allowed"\nmax_attempts = 1\nblock_s = 0.2\n'
        + '[[schedules]]\nname = "beat"\nevery_s = 1\nqueue = "ticks"\noverlap = true\n'
    )
    sup.start()
    sup.wait_all_ready(2, timeout_s=30)
    shots = Path(os.environ.get("CORRAL_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    state = {"url": f"http://127.0.0.1:{port}/", "sup": sup, "redis": redis_clean.client(), "shots": shots}
    yield state
    if state["sup"].running:  # a test may have replaced it (a restart)
        state["sup"].send(signal.SIGTERM)
        state["sup"].wait_exit(30)


def open_page(browser: Any, url: str, token: str | None = TOKEN) -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(url)
    page.wait_for_selector("#slots tbody tr")
    if token is not None:
        page.fill("#token", token)
        page.click("#token-save")
    return page


@pytest.mark.e2e
def test_the_overview_graph_moves_while_jobs_flow(board: dict[str, Any], browser: Any) -> None:
    redis, stop = board["redis"], threading.Event()

    def produce() -> None:
        n = 0
        while not stop.is_set():
            redis.lpush("jobs", *(json.dumps({"n": n + i, "sleep": 0.01}) for i in range(20)))
            n += 20
            stop.wait(0.1)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        page = open_page(browser, board["url"], token=None)
        chart = page.locator("#chart-total")
        first = chart.locator("polyline.processed").get_attribute("points")
        wait_until(
            lambda: float(page.inner_text("#rate-processed")) > 0, timeout_s=15, what="a processed rate"
        )
        wait_until(
            lambda: chart.locator("polyline.processed").get_attribute("points") != first,
            timeout_s=10,
            what="the graph moving",
        )
        page.wait_for_selector('#charts [data-name="queue:jobs"] polyline.processed')
        page.screenshot(path=str(board["shots"] / "overview.png"), full_page=True)
    finally:
        stop.set()
        producer.join(5)


@pytest.mark.e2e
def test_pausing_a_queue_by_clicking_stops_its_jobs(board: dict[str, Any], browser: Any) -> None:
    redis = board["redis"]
    page = open_page(browser, board["url"])
    page.click('nav button[data-tab="work"]')
    row = page.locator('#work tr[data-name="jobs"]')
    row.locator("button.pause").click()
    wait_until(lambda: row.locator("td.state").inner_text() == "paused", timeout_s=5, what="the row paused")
    assert redis.exists(KEYS.paused("jobs"))
    time.sleep(1.0)  # the documented bound for every consumer to see the pause (the claim tested)
    redis.lpush("jobs", *(json.dumps({"n": n, "sleep": 0}) for n in range(30)))
    wait_until(
        lambda: row.locator("td.depth").inner_text() == "30", timeout_s=5, what="30 waiting on the page"
    )
    time.sleep(0.5)  # a window in which nothing may be taken
    assert redis.llen("jobs") == 30 and redis.hlen("test:handled") == 0
    page.screenshot(path=str(board["shots"] / "queues.png"), full_page=True)
    row.locator("button.resume").click()
    wait_until(lambda: redis.hlen("test:handled") == 30, timeout_s=10, what="the jobs after resume")


@pytest.mark.e2e
def test_a_dead_letter_retried_by_clicking_is_processed(board: dict[str, Any], browser: Any) -> None:
    redis = board["redis"]
    redis.lpush("flaky", json.dumps({"n": 1}), json.dumps({"n": 2}))
    wait_until(lambda: redis.llen(KEYS.dead("flaky")) == 2, timeout_s=10, what="two dead letters")
    redis.set("test:allow", "1")  # what made them fail is fixed
    page = open_page(browser, board["url"])
    page.click('nav button[data-tab="dead"]')
    page.select_option("#dead-name", "flaky")
    page.fill("#dead-grep", '"n": 2')
    page.click("#dead-search")
    rows = page.locator("#dead-list tbody tr")
    wait_until(lambda: rows.count() == 1, timeout_s=5, what="the search finding one letter")
    letter = rows.first.get_attribute("data-id")
    page.screenshot(path=str(board["shots"] / "dead-letters.png"), full_page=True)
    rows.first.locator("button.retry-one").click()
    wait_until(lambda: redis.hget("test:handled", letter), timeout_s=10, what="the retried job processed")
    assert redis.llen(KEYS.dead("flaky")) == 1  # the other one stays
    page.click("#dead-retry-all")  # all matching the search: just that one, gone now
    page.fill("#dead-grep", "")
    page.click("#dead-retry-all")
    wait_until(lambda: redis.hlen("test:handled") == 2, timeout_s=10, what="the rest retried")
    wait_until(
        lambda: "retried 1 dead letters of flaky" in page.inner_text("#message"), timeout_s=5, what="said"
    )


@pytest.mark.e2e
def test_an_action_without_the_token_is_refused(board: dict[str, Any], browser: Any) -> None:
    redis = board["redis"]
    page = open_page(browser, board["url"], token=None)
    page.click('nav button[data-tab="work"]')
    page.locator('#work tr[data-name="jobs"] button.pause').click()
    wait_until(lambda: "wrong or missing token" in page.inner_text("#message"), timeout_s=5, what="refusal")
    assert not redis.exists(KEYS.paused("jobs"))
    page.click('nav button[data-tab="schedules"]')
    wait_until(lambda: "beat" in page.inner_text("#schedules"), timeout_s=5, what="the schedule listed")
    page.screenshot(path=str(board["shots"] / "schedules.png"), full_page=True)
    page.click('nav button[data-tab="logs"]')
    wait_until(lambda: "supervisor" in page.inner_text("#log"), timeout_s=5, what="the log tail")
    page.screenshot(path=str(board["shots"] / "logs.png"), full_page=True)


@pytest.mark.e2e
def test_recycle_and_scale_from_the_page(board: dict[str, Any], browser: Any) -> None:
    sup = board["sup"]
    page = open_page(browser, board["url"])
    first_row = page.locator("#slots tbody tr").first
    old_pid = first_row.locator("td").nth(2).inner_text()
    first_row.locator("button.recycle").click()
    wait_until(
        lambda: (
            first_row.locator("td").nth(2).inner_text() not in ("", old_pid)
            and first_row.locator("td").nth(1).inner_text() == "ready"
        ),
        timeout_s=20,
        what="slot 0 replaced by a new ready child",
    )
    page.fill("#scale-n", "3")
    page.click("#scale")
    wait_until(lambda: page.locator("#slots tbody tr").count() == 3, timeout_s=20, what="a third slot")
    assert "replacement starts first" in page.inner_text("#message") or "scaling to 3" in page.inner_text(
        "#message"
    )
    done = sup.cli("recycle", "9")
    assert done.returncode == 2 and "recycle needs a slot of the pool, got 9" in done.stderr, done.stderr


@pytest.mark.e2e
def test_the_graphs_history_outlives_a_supervisor_restart(
    board: dict[str, Any], corral: Callable[..., Corral]
) -> None:
    def history() -> list[dict[str, Any]]:
        with urllib.request.urlopen(board["url"] + "api/history", timeout=5) as answer:
            return list(json.load(answer))

    wait_until(lambda: len(history()) >= 2, timeout_s=15, what="two samples")
    before = history()
    sup = board["sup"]
    sup.send(signal.SIGTERM)
    assert sup.wait_exit(30) == 0
    again = corral(like=sup).start()  # the same config: the same Redis, host and pool
    again.wait_all_ready(2, timeout_s=30)
    board["sup"] = again  # what the fixture stops
    after = wait_until(history, timeout_s=10, what="the dashboard back")
    assert after[: len(before)] == before, "the samples from before the restart are still there"


@pytest.mark.e2e
def test_every_host_shows_the_other_hosts_slots(
    board: dict[str, Any], corral: Callable[..., Corral], redis_clean: Any
) -> None:
    """A second host (its own supervisor and dashboard, on the same Redis and pool); what the page
    renders into "Other hosts' slots", read from the snapshot it is pushed."""
    beta = corral(worker="corral.workers.base:BaseWorker", workers=2, redis={"url": redis_clean.url})
    text = board["sup"].config.read_text().replace("[pool]\n", '[pool]\nhost = "beta"\n')
    beta.config.write_text(re.sub(r'listen = "127.0.0.1:\d+"', f'listen = "127.0.0.1:{free_port()}"', text))
    beta.start()
    try:
        beta.wait_all_ready(2, timeout_s=30)

        def betas() -> Any:
            with urllib.request.urlopen(board["url"] + "api/snapshot", timeout=5) as answer:
                snap = json.load(answer)
            slots = (snap.get("hosts") or {}).get("beta", {}).get("slots", [])
            return snap if len(slots) == 2 and "beta" in snap.get("members", {}) else None

        snap = wait_until(
            betas, timeout_s=15, what="beta's two slots and members on the first host's dashboard"
        )
        assert {row["state"] for row in snap["hosts"]["beta"]["slots"]} == {"ready"}
    finally:
        beta.send(signal.SIGTERM)
        beta.wait_exit(30)


@pytest.mark.e2e
def test_an_unreachable_redis_is_said_on_the_page(
    corral: Callable[..., Corral], locked_redis: Standalone, browser: Any, tmp_path: Path
) -> None:
    """The slot's row says redis-down and why; the header which Redis (no password) and since when."""
    port = free_port()
    sup = outage_pool(corral, locked_redis, workers=1, extra=f'[dashboard]\nlisten = "127.0.0.1:{port}"\n')
    sup.start()  # (no status polls here: they run an event loop, and Playwright's runs in this thread)
    url = f"http://127.0.0.1:{port}/"

    def answers() -> bool:
        try:
            return http(url + "api/snapshot")[0] == 200
        except OSError:
            return False

    wait_until(answers, timeout_s=30, what=f"the dashboard\n{sup.output()}")
    page = open_page(browser, url, token=None)
    page.wait_for_selector("#slots td.state-ready", timeout=30_000)
    killed_at = time.time()
    locked_redis.kill()
    page.wait_for_selector("#slots td.state-redis-down", timeout=20_000)
    header = page.inner_text("#redis")
    since = header.removeprefix("Redis unreachable since ").split(" ")[0]  # 2026-01-31T14:03:07Z
    assert header == f"Redis unreachable since {since} · {locked_redis.shown_url}", header
    assert killed_at - 1 <= calendar.timegm(time.strptime(since, "%Y-%m-%dT%H:%M:%SZ")) <= time.time(), header
    assert page.get_attribute("#redis", "class") == "alert"
    reason = page.locator("#slots tbody tr td").nth(9).inner_text()
    assert reason.startswith("Redis unreachable since ") and locked_redis.shown_url in reason, reason
    assert locked_redis.password not in page.content()
    shots = Path(os.environ.get("CORRAL_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "redis-down.png"), full_page=True)
    locked_redis.start()  # the same port
    page.wait_for_selector("#slots td.state-ready", timeout=20_000)
    assert page.inner_text("#redis").startswith("redis ") and page.get_attribute("#redis", "class") == "muted"
    sup.send(signal.SIGTERM)
    assert sup.wait_exit(30) == 0


def http(url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.e2e
def test_an_empty_selection_acts_on_nothing_and_a_foreign_host_is_refused(board: dict[str, Any]) -> None:
    """Found by review: "Delete selected" with nothing ticked deleted every dead letter."""
    redis = board["redis"]
    redis.lpush("flaky", json.dumps({"n": 1}))
    wait_until(lambda: redis.llen(KEYS.dead("flaky")) == 1, timeout_s=10, what="a dead letter")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for verb in ("delete", "retry"):
        status, text = http(board["url"] + "api/act/dead", {"do": verb, "name": "flaky", "ids": []}, auth)
        assert status == 400 and "nothing selected" in text, (status, text)
    status, text = http(board["url"] + "api/act/dead", {"do": "drop", "name": "flaky"}, auth)
    assert status == 400 and "'retry' or 'delete'" in text
    assert redis.llen(KEYS.dead("flaky")) == 1  # untouched
    port = board["url"].rsplit(":", 1)[1].rstrip("/")
    status, text = http(board["url"] + "api/snapshot", headers={"Host": f"evil.example:{port}"})
    assert status == 403 and "not evil.example" in text  # DNS rebinding


@pytest.mark.e2e
def test_a_reload_rotates_the_token(board: dict[str, Any]) -> None:
    """Found by review: the dashboard kept the token (and the queues) it started with."""
    sup = board["sup"]
    sup.config.write_text(sup.config.read_text().replace(TOKEN, "rotated-token-7"))
    assert sup.cli("reload").returncode == 0

    def refused_old() -> bool:
        status, _ = http(
            board["url"] + "api/act/pause", {"name": "jobs"}, {"Authorization": f"Bearer {TOKEN}"}
        )
        return status == 401

    wait_until(refused_old, timeout_s=30, what="the old token refused after the reload")
    status, text = http(
        board["url"] + "api/act/resume", {"name": "jobs"}, {"Authorization": "Bearer rotated-token-7"}
    )
    assert status == 200 and "resumed queue jobs" in text, (status, text)
