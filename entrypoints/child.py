"""The child bootstrap: ``python -m corral.entrypoints.child`` (started by the supervisor, not by hand)."""

from __future__ import annotations

import os
import sys

from corral.contract import SPEC_ENV
from corral.workers.boot import run_child

if __name__ == "__main__":
    sys.exit(run_child(os.environ.get(SPEC_ENV)))
