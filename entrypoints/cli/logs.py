"""``corral logs``: print (and follow, across rotation) a log file; no running supervisor needed."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from corral.entrypoints.cli.call import Call
from corral.entrypoints.cli.say import fail
from corral.supervisor.actions import SupervisorExit


def show_logs(log_dir: Path, slot: str, lines: int, follow: bool) -> int:
    named = slot in ("supervisor", "zygote", "redis")  # the supervisor's own files
    name = f"{slot}.log" if named else f"worker-{slot}.log"
    if not named and not slot.isdigit():
        return fail(
            f"logs takes a slot number, 'supervisor', 'zygote' or 'redis', got {slot!r}",
            SupervisorExit.CONFIG,
        )
    path = log_dir / name
    if not path.exists():
        return fail(f"no log file {path}", SupervisorExit.FAILED)
    with path.open("rb") as handle:
        tail = handle.readlines()[-lines:] if lines > 0 else []
        sys.stdout.buffer.write(b"".join(tail))
        sys.stdout.flush()
        if follow:
            _follow(path, handle)
    return 0


def _follow(path: Path, handle: Any) -> None:
    """Like ``tail -F``: keeps going across rotation (the file replaced by a new one)."""
    inode = path.stat().st_ino
    while True:
        chunk = handle.read()
        if chunk:
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            continue
        try:
            if path.stat().st_ino != inode:
                handle.close()
                handle = path.open("rb")
                inode = path.stat().st_ino
                continue
        except FileNotFoundError:
            pass
        time.sleep(0.2)


def command(call: Call) -> int:
    args = call.args
    return show_logs(call.where.log_dir, args.slot, args.lines, args.follow)
