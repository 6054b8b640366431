"""The child bootstrap: ``python -m corral.entrypoints.child`` (started by the supervisor, not by hand).

With ``--check`` it only imports what the children will run (the worker and every handler) and
exits: the supervisor runs that before it starts any child, and before a reload."""

from __future__ import annotations

import os
import sys

from corral.contract import SPEC_ENV
from corral.workers.boot import check_child, run_child

if __name__ == "__main__":
    raw = os.environ.get(SPEC_ENV)
    sys.exit(check_child(raw) if sys.argv[1:] == ["--check"] else run_child(raw))
