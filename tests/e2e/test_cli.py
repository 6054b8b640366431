"""The real ``corral`` CLI end to end: run, status, signals, logs, restarts, limits, exit codes.

Every test runs its own supervisor (under setsid, cwd = the repo root) on a corral.toml in its
tmp_path; the ``corral`` fixture kills the whole session when the test ends.
"""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.conftest import CORRAL, Corral, is_gone, reap, run_cli, wait_until

pytestmark = pytest.mark.e2e

Factory = Callable[..., Corral]
APPS = "tests.e2e.apps"
CRASH_LOOP = {
    "max_restarts": 2,
    "restart_window_s": 30,
    "backoff_initial_s": 0.1,
    "stable_after_s": 30,
}


def pids_of(status: dict[str, Any]) -> dict[int, int]:
    return {s["slot"]: s["pid"] for s in status["slots"]}


def test_run_status_and_sigterm_graceful_stop(corral: Factory) -> None:
    c = corral(f"{APPS}:GoodWorker", workers=3).start()
    c.wait_all_ready(3)
    status = c.status()  # the real `corral status --json`

    assert status["pid"] == c.pid
    assert "redis_url" in status
    assert [s["slot"] for s in status["slots"]] == [0, 1, 2]
    for row in status["slots"]:
        assert row["state"] == "ready"
        assert row["restarts"] == 0
        assert isinstance(row["pid"], int)
        assert psutil.Process(row["pid"]).ppid() == c.pid
    pids = pids_of(status)
    assert len(set(pids.values())) == 3

    table = c.cli("status")
    assert table.returncode == 0, table.stderr
    for slot, pid in pids.items():
        assert any(line.split()[:3] == [str(slot), "ready", str(pid)] for line in table.stdout.splitlines())
    wait_until(lambda: "tick 2" in c.log("1"), 10, what="ticks in worker-1.log")
    tail = c.cli("logs", "1", "-n", "2")
    assert tail.returncode == 0 and len(tail.stdout.splitlines()) == 2 and "worker-1" in tail.stdout

    second = corral(like=c).start()  # the same state dir: refused, and the first one is untouched
    assert second.wait_exit(15) == 4
    assert "already running" in second.output()
    assert pids_of(c.status()) == pids

    c.send(signal.SIGTERM)
    assert c.wait_exit(15) == 0
    for pid in pids.values():
        assert is_gone(pid), f"child {pid} survived the supervisor"

    log = c.log()
    for slot, pid in pids.items():
        for before, after in [("starting", "ready"), ("ready", "stopping"), ("stopping", "stopped")]:
            c.line_of(slot, pid, before, after)  # raises if missing
        assert f"slot {slot} pid {pid}: starting" in log
        worker_log = c.log(str(slot))
        assert f"ready (pid {pid})" in worker_log
        assert f"slot {slot} pid {pid} tick 1" in worker_log
        assert "stopping (graceful)" in worker_log
    assert "supervisor exiting with code 0" in log
    assert "Traceback" not in log


def test_sighup_rolling_reload_never_leaves_a_slot_without_a_ready_child(corral: Factory) -> None:
    # a slow start() makes the reload long enough to be observed in between
    c = corral(f"{APPS}:GoodWorker", workers=2, options={"start_delay_s": 0.4}).start()
    old = pids_of(c.wait_all_ready(2))

    c.send(signal.SIGHUP)
    samples = []

    def replaced() -> bool:
        status = c.status_fast()
        assert status is not None, f"the supervisor stopped answering during the reload\n{c.output()}"
        samples.append(status)
        new = pids_of(status)
        return all(new[slot] != pid for slot, pid in old.items()) and "reload finished" in c.log()

    wait_until(replaced, 15, interval_s=0.02, what="every slot replaced by the reload")
    assert len(samples) > 10, "too few samples to say anything about the reload"
    for status in samples:
        rows = [r for r in status["slots"] if r["state"] != "draining"]  # old children finishing
        assert [r["slot"] for r in rows] == [0, 1], status
        assert all(r["state"] == "ready" and r["pid"] for r in rows), f"a slot without a ready child: {rows}"

    new = pids_of(c.status())
    assert all(psutil.pid_exists(pid) for pid in new.values())
    wait_until(lambda: all(is_gone(pid) for pid in old.values()), 10, what="old children gone")

    # the order, per slot: the new child is ready before the old one is told to stop, slot by slot
    for slot in (0, 1):
        new_ready = c.line_of(slot, new[slot], "starting", "ready")
        old_stopping = c.line_of(slot, old[slot], "ready", "stopping")
        assert new_ready < old_stopping, f"slot {slot}: old child stopped before its replacement was ready"
        c.wait_line(slot, old[slot], "stopping", "stopped")
    lines = c.log().splitlines()
    slot1_spawned = next(i for i, line in enumerate(lines) if f"slot 1 pid {new[1]}: starting" in line)
    assert c.line_of(0, new[0], "starting", "ready") < slot1_spawned, "slots were not replaced one by one"

    c.send(signal.SIGTERM)
    assert c.wait_exit(15) == 0


def test_sigttin_sigttou_and_cli_scale_change_the_slot_count(corral: Factory) -> None:
    c = corral(f"{APPS}:GoodWorker", workers=2).start()
    c.wait_all_ready(2)

    c.send(signal.SIGTTIN)
    status = c.wait_all_ready(3)
    third = c.slot(status, 2)["pid"]

    c.send(signal.SIGTTOU)
    c.wait_all_ready(2)
    wait_until(lambda: is_gone(third), 10, what=f"slot 2's child {third} gone after TTOU")

    done = c.cli("scale", "4")
    assert done.returncode == 0, done.stderr
    status = c.wait_all_ready(4)
    extra = [c.slot(status, i)["pid"] for i in (1, 2, 3)]
    assert c.status()["size"] == 4

    done = c.cli("scale", "1")
    assert done.returncode == 0, done.stderr
    c.wait_all_ready(1)
    wait_until(lambda: all(is_gone(pid) for pid in extra), 10, what="scaled-down children gone")
    for pid in extra:
        assert "scaled down" in c.log() and f"pid {pid}: ready -> stopping" in c.log()

    done = c.cli("scale", "--", "-1")
    assert done.returncode == 2 and "Traceback" not in done.stderr

    done = c.cli("stop", timeout_s=30)
    assert done.returncode == 0, done.stderr
    assert "stopped" in done.stdout
    assert c.wait_exit(5) == 0


def test_sigusr1_reopens_the_log_files(corral: Factory) -> None:
    c = corral(f"{APPS}:GoodWorker", workers=1, options={"tick_interval_s": 0.05}).start()
    pid = c.slot(c.wait_all_ready(1), 0)["pid"]
    worker_log = c.log_dir / "worker-0.log"
    wait_until(lambda: "tick 3" in c.log("0"), 10, what="ticks in worker-0.log")

    moved = c.log_dir / "worker-0.log.1"
    worker_log.rename(moved)
    (c.log_dir / "supervisor.log").rename(c.log_dir / "corral.supervisor.log.1")
    c.send(signal.SIGUSR1)

    wait_until(lambda: f"pid {pid} tick" in c.log("0"), 10, what="new tick lines in a new worker-0.log")
    wait_until(lambda: "log files reopened" in c.log(), 10, what="a new supervisor.log")
    size = moved.stat().st_size
    first = len(c.log("0").splitlines())
    wait_until(lambda: len(c.log("0").splitlines()) > first + 2, 10, what="more lines in the new file")
    assert moved.stat().st_size == size, "the renamed file is still written to"

    c.send(signal.SIGTERM)
    assert c.wait_exit(15) == 0
    assert "stopping (graceful)" in c.log("0")


def test_sigkill_of_the_supervisor_takes_every_child_down(corral: Factory) -> None:
    c = corral(f"{APPS}:GoodWorker", workers=3).start()
    pids = list(pids_of(c.wait_all_ready(3)).values())

    # the corral fixture makes this process a child subreaper: the orphans are reparented to us
    # (not to a lazily reaping init), so we see them exit and reap them ourselves
    try:
        os.kill(c.pid, signal.SIGKILL)
        c.wait_exit(5)
        killed_at = time.monotonic()
        wait_until(lambda: all(is_gone(pid) for pid in pids), 2.0, what="every child to exit")
        elapsed = time.monotonic() - killed_at
    finally:
        for pid in pids:  # kill any survivor, so that reaping below cannot block
            with contextlib.suppress(ProcessLookupError):
                if not is_gone(pid):
                    os.kill(pid, signal.SIGKILL)
        statuses = reap(pids, timeout_s=5.0)
    assert sorted(statuses) == sorted(pids), "the orphans were not reparented to the subreaper"
    for pid, wait_status in statuses.items():
        # it exits by itself (channel EOF, orphan watch) or by its PR_SET_PDEATHSIG SIGTERM when that
        # arrives after its loop (and so its SIGTERM handler) is gone; never by our SIGKILL above
        by_itself = os.WIFEXITED(wait_status) or os.WTERMSIG(wait_status) == signal.SIGTERM
        assert by_itself, f"child {pid} did not exit by itself (wait status {wait_status:#x})"
        assert not psutil.pid_exists(pid), f"child {pid} still exists after being reaped"
    assert elapsed < 2.0


def test_crash_looping_slot_goes_fatal_while_the_healthy_slot_keeps_working(corral: Factory) -> None:
    c = corral(
        f"{APPS}:CrashingWorker",
        workers=2,
        options={"slots": [0], "crash_after_s": 0.2},
        restart=CRASH_LOOP,
    ).start()

    def slot1_ready() -> dict[str, Any] | None:
        status = c.status_fast()
        rows = [r for r in status["slots"] if r["slot"] == 1 and r["state"] == "ready"] if status else []
        return rows[0] if rows else None

    healthy = wait_until(slot1_ready, 10, what="slot 1 ready")

    def slot0_fatal() -> dict[str, Any] | None:
        status = c.status_fast()
        return status if status and c.slot(status, 0)["state"] == "fatal" else None

    wait_until(slot0_fatal, 15, what=f"slot 0 fatal\n{c.output()}")
    status = c.status()
    row0, row1 = c.slot(status, 0), c.slot(status, 1)
    assert row0["reason"] and "failures within 30s" in row0["reason"], row0
    assert row0["restarts"] == 2
    assert row0["pid"] is None
    assert row1["state"] == "ready"
    assert row1["restarts"] == 0
    assert row1["pid"] == healthy["pid"]
    processed = row1["processed"]
    wait_until(
        lambda: c.slot(c.status_fast() or status, 1)["processed"] > processed + 2,
        10,
        what="the healthy slot to keep working",
    )
    assert c.running
    assert "slot 0: stopped -> fatal" in c.log()
    assert "crashes on purpose" in c.log("0")
    assert "crashes on purpose" not in c.log("1")

    c.send(signal.SIGTERM)
    assert c.wait_exit(15) == 0


def test_every_slot_fatal_exits_3(corral: Factory) -> None:
    c = corral(f"{APPS}:StartFailsWorker", workers=2, restart=CRASH_LOOP).start()
    assert c.wait_exit(20) == 3
    log = c.log()
    assert "every slot is fatal" in log
    assert "supervisor exiting with code 3" in log
    for slot in (0, 1):
        assert f"slot {slot}: stopped -> fatal" in log
        worker_log = c.log(str(slot))
        assert worker_log.count("start() failed") == 3
        assert f"RuntimeError: start() of slot {slot} fails on purpose" in worker_log


def test_a_failed_start_shows_its_error_on_the_console(corral: Factory) -> None:
    c = corral(f"{APPS}:StartFailsWorker", workers=1, restart=CRASH_LOOP).start()
    assert c.wait_exit(20) == 3
    console = (c.root / "supervisor.out").read_text("utf-8", "replace")  # corral run's own output
    error = "RuntimeError: start() of slot 0 fails on purpose"
    said = [line for line in console.splitlines() if "exit 5 (boot_start)" in line]
    assert len(said) == 6, console  # each of the 3 children: stopped, then died (the last: fatal)
    assert all(f"exit 5 (boot_start), {error}" in line for line in said), said
    assert "Traceback" not in console, "only the exception's last line reaches the console"
    assert "Traceback" in c.log("0") and error in c.log("0")  # the whole of it stays in the slot's log


@pytest.mark.parametrize(
    ("worker", "expected"),
    [
        (
            "tests.e2e.no_such_module:Worker",
            "ModuleNotFoundError: No module named 'tests.e2e.no_such_module'",
        ),
        ("tests.e2e.broken_app:Worker", "ImportError: broken_app refuses to be imported"),
    ],
)
def test_a_bad_import_path_is_a_config_error_before_any_child(
    corral: Factory, worker: str, expected: str
) -> None:
    c = corral(worker, workers=2).start()
    assert c.wait_exit(15) == 2
    output = c.output()
    assert (
        "the workers cannot import their code" in output
        and f"pool.worker: worker: cannot import {worker!r}" in output
    )
    assert expected in output
    assert "slot 0 pid" not in c.log(), "a child was started"
    assert not list(c.log_dir.glob("worker-*.log"))
    if "broken_app" in worker:
        assert "broken_app: stdout before the import fails" in output


def test_a_handler_that_cannot_be_imported_is_named(corral: Factory) -> None:
    sup = corral(f"{APPS}:GoodWorker", workers=1)
    sup.config.write_text(
        sup.config.read_text() + '\n[[queues]]\nnames = ["q"]\nhandler = "tests.e2e.apps:no_such_handler"\n'
    )
    sup.start()
    assert sup.wait_exit(15) == 2
    assert "queues[0].handler: cannot import 'tests.e2e.apps:no_such_handler'" in sup.output()


@pytest.mark.parametrize("handler", ["handler_of_three", "handler_of_none"])
def test_a_handler_that_cannot_take_a_job_is_a_config_error(corral: Factory, handler: str) -> None:
    sup = corral(f"{APPS}:GoodWorker", workers=1)
    sup.config.write_text(
        sup.config.read_text() + f'\n[[queues]]\nnames = ["q"]\nhandler = "{APPS}:{handler}"\n'
    )
    sup.start()
    assert sup.wait_exit(15) == 2
    assert (
        f"queues[0].handler: handler '{APPS}:{handler}' must take (job) or (job, ctx), not (" in sup.output()
    )


def test_corral_reload_waits_for_the_outcome_and_says_why_it_was_refused(corral: Factory) -> None:
    c = corral(f"{APPS}:GoodWorker", workers=2).start()
    before = pids_of(c.wait_all_ready(2))
    done = c.cli("reload")
    assert (done.returncode, done.stdout.strip()) == (0, "reloaded: 2 slots replaced"), done.stderr
    assert not set(pids_of(c.status()).values()) & set(before.values()), "answered before the new children"

    good = c.config.read_text()  # valid TOML whose new code cannot be imported: refused, the pool kept
    c.config.write_text(good.replace(f"{APPS}:GoodWorker", f"{APPS}:NoSuchWorker"))
    kept = pids_of(c.status())
    done = c.cli("reload")
    assert done.returncode == 1 and done.stdout == "", (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("corral: reload refused: "), done.stderr
    assert "cannot import 'tests.e2e.apps:NoSuchWorker'" in done.stderr, done.stderr
    assert pids_of(c.status()) == kept
    c.send(signal.SIGTERM)
    assert c.wait_exit(15) == 0


def test_hung_child_is_aborted_with_a_traceback_and_replaced(corral: Factory, tmp_path: Path) -> None:
    c = corral(
        f"{APPS}:HangingWorker",
        workers=2,
        options={"slots": [0], "hang_after_s": 0.3, "once_file": str(tmp_path / "hung")},
        health={"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 1},
    ).start()
    first = pids_of(c.wait_all_ready(2))

    def replaced() -> dict[str, Any] | None:
        status = c.status_fast()
        row = c.slot(status, 0) if status else None
        ok = row and row["state"] == "ready" and row["pid"] not in (None, first[0])
        return status if ok else None

    status = wait_until(replaced, 15, what=f"slot 0 replaced after hanging\n{c.output()}")
    assert pids_of(status)[1] == first[1], "the healthy slot was touched"
    assert c.slot(status, 0)["restarts"] == 1
    assert is_gone(first[0])

    log = c.log()
    assert f"slot 0 pid {first[0]}: no heartbeat answer within 1s: SIGABRT" in log
    assert "killed by SIGABRT" in log
    worker_log = c.log("0")
    assert "blocking the event loop" in worker_log
    assert "Fatal Python error: Aborted" in worker_log
    assert "most recent call first" in worker_log
    assert "apps.py" in worker_log and "in hang" in worker_log

    c.send(signal.SIGTERM)
    assert c.wait_exit(15) == 0


def test_child_over_max_memory_is_recycled_new_one_ready_first(corral: Factory, tmp_path: Path) -> None:
    c = corral(
        f"{APPS}:MemoryHogWorker",
        workers=2,
        options={"slots": [1], "hog_mb": 160, "once_file": str(tmp_path / "hogged")},
        health={"max_memory_mb": 100, "monitor_interval_s": 0.1},
    ).start()
    first = pids_of(c.wait_all_ready(2))

    def recycled() -> dict[str, Any] | None:
        status = c.status_fast()
        row = c.slot(status, 1) if status else None
        return status if row and row["state"] == "ready" and row["pid"] != first[1] else None

    status = wait_until(recycled, 15, what=f"slot 1 recycled\n{c.output()}")
    new = pids_of(status)
    assert new[0] == first[0]
    wait_until(lambda: is_gone(first[1]), 10, what="the hog to be stopped")

    log = c.log()
    assert f"slot 1 pid {first[1]}: recycling: RSS" in log
    assert "over max_memory_mb=100" in log
    new_ready = c.line_of(1, new[1], "starting", "ready")
    old_stopping = c.line_of(1, first[1], "ready", "stopping")
    assert new_ready < old_stopping, "the hog was stopped before its replacement was ready"
    c.wait_line(1, first[1], "stopping", "stopped")
    assert c.slot(c.status(), 1)["restarts"] == 0  # a recycle is not a failure
    assert "holding 160 MiB" in c.log("1")

    c.send(signal.SIGTERM)
    assert c.wait_exit(15) == 0


@pytest.mark.parametrize(
    ("config", "key", "problem"),
    [
        ('[pool]\nworker = "tests.e2e.apps:GoodWorker"\nwrkers = 2\n', "pool.wrkers", "unknown key"),
        ('[pool]\nworker = "tests.e2e.apps:GoodWorker"\nworkers = "two"\n', "pool.workers", "must be an int"),
        (
            '[pool]\nworker = "tests.e2e.apps:GoodWorker"\n[health]\nmax_memory_mb = -1\n',
            "health.max_memory_mb",
            "> 0",
        ),
        ("[pool\nworkers = 2\n", "corral.toml", "not valid TOML"),
    ],
    ids=["unknown-key", "wrong-type", "bad-value", "bad-toml"],
)
@pytest.mark.parametrize("command", ["run", "status"])
def test_bad_config_exits_2_with_one_clear_message(
    corral: Factory, config: str, key: str, problem: str, command: str
) -> None:
    c = corral(f"{APPS}:GoodWorker")
    c.config.write_text(config)
    if command == "run":  # started like any supervisor, so that a wrongly started one is cleaned up
        code, stdout, stderr = c.start().wait_exit(20), "", (c.root / "supervisor.out").read_text()
    else:
        done = c.cli(command)
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    assert code == 2, (code, stdout, stderr)
    assert key in stderr and problem in stderr, stderr
    assert "Traceback" not in stderr
    assert stderr.startswith("corral: ")
    assert not (c.root / "run").exists(), "nothing should be started on a bad config"
    assert not (c.root / "logs").exists()


def test_missing_config_exits_2(corral: Factory) -> None:
    c = corral(f"{APPS}:GoodWorker")
    c.config.unlink()
    assert c.start().wait_exit(20) == 2
    stderr = (c.root / "supervisor.out").read_text()
    assert "no such config file" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["stop"], ["reload"], ["scale", "3"]])
def test_control_commands_with_nothing_running_exit_5(corral: Factory, command: list[str]) -> None:
    c = corral(f"{APPS}:GoodWorker")
    done = c.cli(*command)
    assert done.returncode == 5, (done.returncode, done.stdout, done.stderr)
    assert "no supervisor is running" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_stray_output_of_a_child_lands_in_its_slot_log(corral: Factory) -> None:
    c = corral(f"{APPS}:StrayOutputWorker", workers=2).start()
    c.wait_all_ready(2)
    wait_until(lambda: "tick 2" in c.log("1"), 10, what="ticks in worker-1.log")
    for slot in (0, 1):
        text = c.log(str(slot))
        assert f"stray stdout line from slot {slot}" in text
        assert f"stray stderr line from slot {slot}" in text
        assert f"raw bytes on fd 2 from slot {slot}" in text
        assert "Traceback (most recent call last)" in text
        assert "KeyError: 'no-such-key'" in text
        assert "an unterminated last line ... ended" in text
        assert f"from slot {1 - slot}" not in text
    assert "stray" not in c.log()  # not in the supervisor's own log

    c.send(signal.SIGTERM)
    assert c.wait_exit(15) == 0


def test_second_sigterm_skips_the_slow_graceful_stop(corral: Factory) -> None:
    c = corral(
        f"{APPS}:SlowStopWorker",
        workers=2,
        options={"linger_s": 20},
        pool={"graceful_timeout_s": 30, "kill_timeout_s": 5},
    ).start()
    pids = list(pids_of(c.wait_all_ready(2)).values())

    first_term = time.monotonic()
    c.send(signal.SIGTERM)

    def all_stopping() -> bool:
        status = c.status_fast()
        return bool(status) and all(s["state"] == "stopping" for s in status["slots"])

    wait_until(all_stopping, 10, what="every slot stopping")
    wait_until(
        lambda: all(c.log(str(i)).count("finishing slow in-flight work") == 1 for i in (0, 1)),
        10,
        what="the children lingering in their graceful stop",
    )
    assert c.running, "the first TERM did not wait for the graceful stop"

    c.send(signal.SIGTERM)
    assert c.wait_exit(10) == 0
    assert time.monotonic() - first_term < 12, "the second TERM did not skip ahead"
    for pid in pids:
        assert is_gone(pid)
    log = c.log()
    assert "skipping ahead on the stop ladder" in log
    assert "graceful_timeout_s skipped (stop again), sent SIGTERM" in log
    assert "SIGKILL" not in log


def test_sigquit_stops_fast_without_waiting_for_in_flight_work(corral: Factory) -> None:
    c = corral(
        f"{APPS}:SlowStopWorker",
        workers=2,
        options={"linger_s": 20},
        pool={"graceful_timeout_s": 30, "kill_timeout_s": 5},
    ).start()
    pids = pids_of(c.wait_all_ready(2))
    quit_at = time.monotonic()
    c.send(signal.SIGQUIT)
    assert c.wait_exit(10) == 0
    assert time.monotonic() - quit_at < 5
    for slot, pid in pids.items():
        assert is_gone(pid)
        c.line_of(slot, pid, "stopping", "stopped")
        assert "stopping (fast)" in c.log(str(slot))
    assert "sent SIG" not in c.log()  # they stopped when asked, no signal needed
    assert "(2 children, fast)" in c.log()


def test_child_not_ready_in_time_is_killed_and_replaced(corral: Factory, tmp_path: Path) -> None:
    c = corral(
        f"{APPS}:StallingStartWorker",
        workers=1,
        options={"once_file": str(tmp_path / "stalled")},
        pool={"ready_timeout_s": 1},
    ).start()

    def first_pid() -> int | None:
        status = c.status_fast()
        return status["slots"][0]["pid"] if status and status["slots"] else None

    stalled = wait_until(first_pid, 10, what="the first child")
    status = c.wait_all_ready(1)
    assert c.slot(status, 0)["pid"] != stalled
    assert c.slot(status, 0)["restarts"] == 1
    assert is_gone(stalled)
    assert f"slot 0 pid {stalled}: not ready within 1s; killing it" in c.log()
    assert "stalling in start()" in c.log("0")

    c.send(signal.SIGTERM)
    assert c.wait_exit(15) == 0


def test_reload_rereads_the_config(corral: Factory) -> None:
    c = corral(
        f"{APPS}:CrashingWorker",
        workers=2,
        options={"slots": [0], "crash_after_s": 0.1},
        restart=CRASH_LOOP,
    ).start()

    def slot0_fatal() -> dict[str, Any] | None:
        status = c.status_fast()
        return status if status and c.slot(status, 0)["state"] == "fatal" else None

    wait_until(slot0_fatal, 15, what=f"slot 0 fatal\n{c.output()}")

    # a broken config is refused by reload: the running pool is kept
    good = c.config.read_text()
    c.config.write_text(good.replace("workers = 2", 'workers = "three"'))
    done = c.cli("reload")  # the CLI checks the config first: nothing is sent
    assert done.returncode == 2 and "pool.workers" in done.stderr, done.stderr
    c.send(signal.SIGHUP)  # the supervisor checks it too
    wait_until(lambda: "reload aborted" in c.log(), 10, what="the reload to be refused")
    assert "pool.workers" in c.log()
    assert c.running

    # a fixed config: three slots, nobody crashes; the fatal slot gets a new chance
    c.config.write_text(good.replace("workers = 2", "workers = 3").replace("slots = [0]", "slots = []"))
    done = c.cli("reload")
    assert done.returncode == 0, done.stderr
    status = c.wait_all_ready(3)
    assert "slot 0: fatal cleared by reload" in c.log()
    assert all(row["reason"] is None for row in status["slots"])
    wait_until(lambda: "reload finished" in c.log(), 10, what="the reload to finish")

    c.send(signal.SIGTERM)
    assert c.wait_exit(15) == 0


def test_a_scale_survives_a_reload_unless_the_config_changes_workers(corral: Factory) -> None:
    c = corral(f"{APPS}:GoodWorker", workers=2).start()
    c.wait_all_ready(2)
    assert c.cli("scale", "3").returncode == 0
    c.wait_all_ready(3)
    assert c.cli("reload").returncode == 0
    wait_until(lambda: "reload finished" in c.log(), 20, what="the reload to finish")
    assert c.status()["size"] == 3, "the reload undid the scale"
    assert "keeping 3 slots set by scale (the config says 2)" in c.log()

    c.config.write_text(c.config.read_text().replace("workers = 2", "workers = 1"))
    assert c.cli("reload").returncode == 0
    wait_until(lambda: c.log().count("reload finished") == 2, 20, what="the second reload")
    c.wait_all_ready(1)
    assert c.status()["size"] == 1 and "workers 2 -> 1 (the config changed)" in c.log()


def test_the_cli_reaches_a_running_pool_when_the_config_on_disk_is_broken(corral: Factory) -> None:
    c = corral(f"{APPS}:GoodWorker", workers=2).start()
    c.wait_all_ready(2)
    good = c.config.read_text()
    c.config.write_text(good.replace("workers = 2", "workers = 2\nwokers = 3"))
    status = c.cli("status")
    assert status.returncode == 0 and "ready" in status.stdout
    assert "children from: zygote pid" in status.stdout
    assert "does not validate (pool.wokers: unknown key (did you mean 'workers'?))" in status.stderr
    assert c.cli("logs", "supervisor", "-n", "1").returncode == 0
    assert c.cli("logs", "zygote", "-n", "1").returncode == 0  # the zygote's own file
    assert "was launched by corral run before its config was read" in c.log()  # its imports overlapped ours
    bad = c.cli("logs", "zygot")
    assert bad.returncode == 2 and "'supervisor', 'zygote' or 'redis', got 'zygot'" in bad.stderr
    assert c.cli("reload").returncode == 2  # a reload needs a config that validates
    c.config.write_text(good.replace("workers = 2", "workers = 2\n# an edit"))  # valid, not what runs
    assert "changed since the pool loaded it" in c.cli("status").stdout
    c.config.write_text(good.replace("workers = 2", 'workers = "x"'))
    stop = c.cli("stop")
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stderr
    assert c.wait_exit(15) == 0
    missing = c.cli("status")  # nothing runs any more: the config's problem is the message
    assert missing.returncode == 2 and "pool.workers: must be an int" in missing.stderr
    assert c.cli("logs", "7").returncode == 1  # no such log file


@contextlib.contextmanager
def ctrl_c_as_on_a_terminal() -> Iterator[None]:
    """A shell without job control starts background commands with SIGINT ignored, and the
    ignoring is inherited (CI may run us so): children started inside get the default Ctrl-C a
    terminal gives them."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def drain_until_exit(
    proc: subprocess.Popen[bytes], controller: int, timeout_s: float
) -> tuple[bytes, int | None]:
    """Read the terminal, as a real one is read, until ``proc`` exits: what was read, and its exit
    code, or None if it had not exited within ``timeout_s`` (it is then SIGKILLed and reaped)."""
    read, deadline = b"", time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.1)
        with contextlib.suppress(OSError):  # EIO once the terminal's last writer is gone
            read += os.read(controller, 65536) if ready else b""
    code = proc.poll()
    if code is None:
        proc.kill()
        proc.wait(10)
    return read, code


def test_status_watch_redraws_the_table_on_a_terminal(corral: Factory) -> None:
    c = corral(f"{APPS}:GoodWorker", workers=2).start()
    c.wait_all_ready(2)
    controller, terminal = pty.openpty()  # rich redraws only on a terminal
    with ctrl_c_as_on_a_terminal():
        watch = subprocess.Popen(
            [*CORRAL, "status", "--watch", "--interval", "0.2", "-c", str(c.config)],
            stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, start_new_session=True,
        )  # fmt: skip
    os.close(terminal)
    seen = b""
    try:
        deadline = time.monotonic() + 15
        while seen.count(b"SLOT") < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                seen += os.read(controller, 65536)
    finally:
        watch.send_signal(signal.SIGINT)  # Ctrl-C ends it
        tail, code = drain_until_exit(watch, controller, timeout_s=10)
        seen += tail
        os.close(controller)
    assert code is not None, f"still running 10 s after Ctrl-C; its last output: {seen[-2000:]!r}"
    assert seen.count(b"SLOT") >= 3, seen[-2000:]  # three frames at least
    assert b"ready" in seen and b"Traceback" not in seen
    assert code in (0, 130)


def test_a_redis_password_never_appears_in_output(tmp_path: Path) -> None:
    config = tmp_path / "corral.toml"
    config.write_text(
        '[redis]\nurl = "redis://:s3cret-pass@127.0.0.1:1/0"\n[[queues]]\nnames = ["q"]\nhandler = "a:b"\n'
    )
    done = run_cli("enqueue", "q", '{"n": 1}', "-c", str(config))  # nothing listens on port 1
    assert done.returncode == 5 and "redis://:***@127.0.0.1:1/0" in done.stderr, done.stderr
    assert "s3cret-pass" not in done.stdout + done.stderr
    inspect = run_cli("inspect", "-c", str(config))
    assert inspect.returncode == 5 and "s3cret-pass" not in inspect.stdout + inspect.stderr
