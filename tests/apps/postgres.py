"""A private PostgreSQL server for the tests that need one, or a skip when there can be none.

``CONTEST_TEST_DATABASE_URL`` points the tests at an existing server (its ``contest_*`` tables are
dropped). Otherwise, when psycopg 3 and PostgreSQL's ``initdb``/``postgres`` are installed, a
throwaway cluster is made in a temporary directory and served on a Unix socket only (as the
``postgres`` user when the tests run as root), then stopped and removed. Neither is a dependency of
the project: without them the PostgreSQL tests are skipped.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

URL_ENV = "CONTEST_TEST_DATABASE_URL"
SERVER_SETTINGS = ("-c", "listen_addresses=", "-c", "fsync=off", "-c", "max_connections=50")


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def drop_tables(url: str) -> None:
    with connect(url) as conn:
        conn.execute("DROP TABLE IF EXISTS contest_results, contest_scoreboard")


@contextlib.contextmanager
def private_server() -> Iterator[str]:
    initdb, postgres = find_binary("initdb"), find_binary("postgres")
    if initdb is None or postgres is None:
        pytest.skip("PostgreSQL is not installed (no initdb/postgres)")
    user: str | None = None
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        user = entry.pw_name
    workdir = Path(tempfile.mkdtemp(prefix="contest-pg-"))  # short: Unix socket paths are limited
    if user is not None:
        os.chown(workdir, entry.pw_uid, entry.pw_gid)
    data = workdir / "data"
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            user=user,
            check=True,
            capture_output=True,
            timeout=120,
        )
        with (workdir / "server.log").open("wb") as log:
            proc = subprocess.Popen(
                [postgres, "-D", str(data), "-k", str(workdir), "-p", "5432", *SERVER_SETTINGS],
                user=user,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"postgresql://postgres@/postgres?host={workdir}&port=5432"
        deadline = time.monotonic() + 30
        while True:
            try:
                connect(url).close()
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    text = (workdir / "server.log").read_text("utf-8", "replace")
                    raise RuntimeError(f"PostgreSQL did not start:\n{text[-2000:]}") from None
                time.sleep(0.1)
        yield url
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: ends its backends too
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server for the session (or the test is skipped)."""
    pytest.importorskip("psycopg", reason="psycopg 3 is not usable", exc_type=ImportError)
    url = os.environ.get(URL_ENV)
    if url:
        yield url
        return
    with private_server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """The session's server with no contest tables."""
    drop_tables(postgres_server)
    return postgres_server
