"""Exit codes of a child process: part of the contract between a child and its supervisor.

The supervisor decodes them in its logs and in ``corral status`` and decides what to do: a boot
failure before ``ready`` counts toward the crash-loop limit; ``BOOT_IMPORT`` cannot heal by itself,
so the slot goes ``fatal`` at once (a reload with fixed config or code clears it).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # stopped when asked to
    CRASHED = 1  # an unhandled exception in the worker's run loop
    BOOT_IMPORT = 4  # the target import path could not be imported or is not a worker
    BOOT_START = 5  # the worker's start() raised
    BOOT_USAGE = 6  # the child was started with a bad spec (a supervisor bug, not the user's)
    ORPHANED = 7  # the supervisor went away; the child stopped on its own

    @classmethod
    def describe(cls, returncode: int | None) -> str:
        """Human text for a ``Popen.returncode``: exit codes by name, signals by name."""
        import signal

        if returncode is None:
            return "running"
        if returncode < 0:
            try:
                return f"killed by {signal.Signals(-returncode).name}"
            except ValueError:
                return f"killed by signal {-returncode}"
        try:
            return f"exit {returncode} ({cls(returncode).name.lower()})"
        except ValueError:
            return f"exit {returncode}"


BOOT_FAILURES = frozenset({ExitCode.BOOT_IMPORT, ExitCode.BOOT_START, ExitCode.BOOT_USAGE})
