"""How the CLI tells the user something went wrong: one line on stderr, and an exit code."""

from __future__ import annotations

import sys


def fail(message: str, code: int) -> int:
    print(f"corral: {message}", file=sys.stderr)
    return code


def warn(message: str) -> None:
    print(f"corral: warning: {message}", file=sys.stderr)
