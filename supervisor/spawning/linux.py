"""The Linux process controls the supervisor uses (``prctl``); elsewhere each does nothing.

Imports nothing but the standard library: ``corral run`` uses it before it imports the supervisor."""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_PRCTL: Callable[..., int] | None = (
    ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
)
AVAILABLE = _PRCTL is not None


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """``sig`` to this process when its parent dies, even by SIGKILL (kept across exec). Runs in a
    forked child before exec (a ``preexec_fn``): one prctl call, resolved before any fork."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, sig)


def become_subreaper() -> bool:
    """Orphans of our descendants become our children: what a zygote forks through a go-between
    that exits is ours to reap. False where it cannot be."""
    return _PRCTL is not None and _PRCTL(PR_SET_CHILD_SUBREAPER, 1) == 0
