"""``corral.supervisor.systemd.Notifier`` against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corral.supervisor.systemd import Notifier
from tests.conftest import LogCapture

RECV_TIMEOUT_S = 5.0


class FakeSystemd:
    """The receiving end of ``$NOTIFY_SOCKET``: a bound datagram socket read with a timeout."""

    def __init__(self, address: str) -> None:
        self.address = address  # as it appears in NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(RECV_TIMEOUT_S)

    def env(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address, **extra}

    def recv(self) -> list[str]:
        return self.sock.recv(4096).decode().split("\n")

    def fields(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.recv())

    def assert_nothing_pending(self) -> None:
        self.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            self.sock.recv(4096)
        self.sock.settimeout(RECV_TIMEOUT_S)


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    yield fake
    fake.sock.close()


@pytest.fixture
def make_notifier() -> Iterator[Callable[[dict[str, str]], Notifier]]:
    notifiers: list[Notifier] = []

    def make(environ: dict[str, str]) -> Notifier:
        notifiers.append(Notifier.from_env(environ))
        return notifiers[-1]

    yield make
    for notifier in notifiers:
        notifier.close()


def test_ready_with_status(systemd: FakeSystemd, make_notifier: Callable[..., Notifier]) -> None:
    notifier = make_notifier(systemd.env())
    assert notifier.enabled
    notifier.ready("4 workers\nready")
    assert systemd.recv() == ["READY=1", "STATUS=4 workers ready"]  # one datagram, status on one line
    notifier.ready()
    assert systemd.recv() == ["READY=1"]


def test_reloading_sends_monotonic_timestamp_in_the_same_datagram(
    systemd: FakeSystemd, make_notifier: Callable[..., Notifier]
) -> None:
    notifier = make_notifier(systemd.env())
    before = time.monotonic_ns() // 1000
    notifier.reloading()
    after = time.monotonic_ns() // 1000
    fields = systemd.fields()
    assert fields.keys() == {"RELOADING", "MONOTONIC_USEC"}
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after


def test_stopping_watchdog_status_and_low_level(
    systemd: FakeSystemd, make_notifier: Callable[..., Notifier]
) -> None:
    notifier = make_notifier(systemd.env())
    notifier.stopping()
    assert systemd.recv() == ["STOPPING=1"]
    notifier.watchdog()
    assert systemd.recv() == ["WATCHDOG=1"]
    notifier.status("slot 3 fatal")
    assert systemd.recv() == ["STATUS=slot 3 fatal"]
    notifier.notify(READY=1, MAINPID=42)
    assert systemd.recv() == ["READY=1", "MAINPID=42"]
    notifier.send("EXTEND_TIMEOUT_USEC=5000000")
    assert systemd.recv() == ["EXTEND_TIMEOUT_USEC=5000000"]
    with pytest.raises(ValueError):
        notifier.send("STATUS=a\nREADY=1")  # would smuggle a second assignment in
    systemd.assert_nothing_pending()


def test_abstract_namespace_socket(make_notifier: Callable[..., Notifier]) -> None:
    fake = FakeSystemd(f"@corral-test-{os.getpid()}-{uuid.uuid4().hex}")
    try:
        notifier = make_notifier(fake.env())
        notifier.ready("abstract")
        assert fake.recv() == ["READY=1", "STATUS=abstract"]
    finally:
        fake.sock.close()


def test_watchdog_interval_is_half_of_watchdog_usec(
    systemd: FakeSystemd, make_notifier: Callable[..., Notifier]
) -> None:
    assert make_notifier(systemd.env(WATCHDOG_USEC="30000000")).watchdog_interval_s == 15.0
    mine = systemd.env(WATCHDOG_USEC="2000000", WATCHDOG_PID=str(os.getpid()))
    assert make_notifier(mine).watchdog_interval_s == 1.0
    assert make_notifier(systemd.env()).watchdog_interval_s is None
    assert make_notifier(systemd.env(WATCHDOG_USEC="0")).watchdog_interval_s is None
    assert make_notifier(systemd.env(WATCHDOG_USEC="bogus")).watchdog_interval_s is None


def test_watchdog_pid_of_another_process_disables_the_watchdog(
    systemd: FakeSystemd, make_notifier: Callable[..., Notifier]
) -> None:
    other = systemd.env(WATCHDOG_USEC="30000000", WATCHDOG_PID=str(os.getppid()))
    notifier = make_notifier(other)
    assert notifier.watchdog_interval_s is None
    assert notifier.enabled  # only the watchdog is someone else's; notifications still go out
    notifier.ready()
    assert systemd.recv() == ["READY=1"]


def test_disabled_notifier_is_a_no_op(make_notifier: Callable[..., Notifier]) -> None:
    for environ in ({}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "30000000"}):
        notifier = make_notifier(environ)
        assert not notifier.enabled
        assert notifier.watchdog_interval_s is None
        notifier.ready("x")
        notifier.reloading()
        notifier.stopping()
        notifier.watchdog()
        notifier.status("x")
        notifier.notify(READY=1)
        notifier.send("READY=1")
        assert notifier._sock is None  # not even a socket was created


def test_vanished_socket_does_not_raise_and_logs_once(
    systemd: FakeSystemd, make_notifier: Callable[..., Notifier], loguru_records: LogCapture
) -> None:
    notifier = make_notifier(systemd.env())
    notifier.ready()
    assert systemd.recv() == ["READY=1"]
    systemd.sock.close()
    os.unlink(systemd.address)  # systemd went away
    for _ in range(3):
        notifier.watchdog()
        notifier.stopping()
    warnings = [r for r in loguru_records.records if r[0] == "WARNING"]
    assert len(warnings) == 1
    assert "sd_notify" in warnings[0][1]


def test_socket_path_that_never_existed_does_not_raise(
    tmp_path: Path, make_notifier: Callable[..., Notifier]
) -> None:
    notifier = make_notifier({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    assert notifier.enabled
    notifier.ready()
    notifier.reloading()


def test_unsupported_address_disables_notifications(make_notifier: Callable[..., Notifier]) -> None:
    notifier = make_notifier({"NOTIFY_SOCKET": "relative/notify.sock"})
    assert not notifier.enabled
    notifier.ready()
