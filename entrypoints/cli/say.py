"""How the CLI tells the user something went wrong: one line on stderr, and an exit code."""

from __future__ import annotations

import sys

from corral.supervisor.config import Config, redacted


def fail(message: str, code: int) -> int:
    print(f"corral: {message}", file=sys.stderr)
    return code


def warn(message: str) -> None:
    print(f"corral: warning: {message}", file=sys.stderr)


def unreachable(config: Config, exc: BaseException) -> str:
    """The one line for "Redis did not answer", saying when the server is the embedded one."""
    message = f"cannot reach Redis at {redacted(config.redis_url)}: {exc}"
    if config.work.redis.url is None:
        message += " (the embedded Valkey runs only while `corral run` does: start the pool first)"
    return message
