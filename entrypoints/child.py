"""The child bootstrap: ``python -m entrypoints.child`` (started by the supervisor, not by hand)."""

from __future__ import annotations

import os
import sys

from workers.runtime import SPEC_ENV, run_child

if __name__ == "__main__":
    sys.exit(run_child(os.environ.get(SPEC_ENV)))
