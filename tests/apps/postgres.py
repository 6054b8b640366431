"""A private PostgreSQL server for the tests that need one.

``CONTEST_TEST_DATABASE_URL`` points the tests at an existing server (its ``contest_*`` tables are
dropped). Otherwise a throwaway cluster is made in a temporary directory and served on a free TCP
port of 127.0.0.1 (its Unix socket stays in that directory), as the ``postgres`` user when the tests
run as root; it is stopped by its pid and removed at the end of the session, whatever the tests did.
psycopg 3 and PostgreSQL's ``initdb``/``postgres`` are required: ``.ci/setup`` installs both, and
without them the PostgreSQL tests fail (they are not skipped).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

URL_ENV = "CONTEST_TEST_DATABASE_URL"
MISSING = (
    "the PostgreSQL tests need psycopg 3 and a PostgreSQL server (initdb/postgres): "
    f"run .ci/setup, which installs them, or set {URL_ENV} to an existing server"
)
INITDB_FLAGS = ("-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync")
SERVER_SETTINGS = ("-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=50")


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
        conn.execute("SET lock_timeout = '20s'")  # a straggler holding the tables fails the test
        conn.execute("DROP TABLE IF EXISTS contest_results, contest_scoreboard")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_user() -> pwd.struct_passwd | None:
    """Who runs the server: the ``postgres`` user when we are root (the server refuses root)."""
    if os.geteuid() != 0:
        return None
    user = next((entry for entry in pwd.getpwall() if entry.pw_name == "postgres"), None)
    if user is None:
        pytest.fail(f"running as root and there is no 'postgres' user to run the server as: {MISSING}")
    return user


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # fast shutdown: ends its backends too
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the backends go with it
            proc.wait(10)


@contextlib.contextmanager
def private_server() -> Iterator[str]:
    initdb, postgres = find_binary("initdb"), find_binary("postgres")
    if initdb is None or postgres is None:
        pytest.fail(
            f"PostgreSQL is not installed (no initdb/postgres on PATH or in /usr/lib/postgresql): {MISSING}"
        )
    user = server_user()
    run_as = user.pw_name if user is not None else None
    workdir = Path(tempfile.mkdtemp(prefix="contest-pg-"))  # short: Unix socket paths are limited
    if user is not None:
        os.chown(workdir, user.pw_uid, user.pw_gid)
    data, log_path, port = workdir / "data", workdir / "server.log", free_port()
    proc: subprocess.Popen[bytes] | None = None
    try:
        done = subprocess.run(
            [initdb, "-D", str(data), *INITDB_FLAGS],
            check=False,
            user=run_as,
            capture_output=True,
            timeout=120,
        )
        if done.returncode != 0:  # with its output, which a CalledProcessError would not show
            output = (done.stdout + done.stderr).decode("utf-8", "replace")
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{output[-2000:]}")
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [postgres, "-D", str(data), "-k", str(workdir), "-p", str(port), *SERVER_SETTINGS],
                user=run_as,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 30
        while True:
            try:
                connect(url).close()
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    text = log_path.read_text("utf-8", "replace")
                    raise RuntimeError(f"PostgreSQL did not start on port {port}:\n{text[-2000:]}") from None
                time.sleep(0.1)
        yield url
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server for the session (failing, not skipping, when there is none)."""
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        problem = f"psycopg 3 is not usable ({exc})"
    else:
        problem = None
    if problem:  # outside the except: one message, not the ImportError's traceback too
        pytest.fail(f"{problem}: {MISSING}")
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
