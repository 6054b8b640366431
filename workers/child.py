"""The child bootstrap: ``python -m corral.workers.child`` (started by the supervisor, not by hand).

With ``--check`` it only imports what the children will run (the worker and every handler) and
exits: the supervisor runs that before it starts any child, and before a reload, when children are
exec'd. With ``--zygote`` it imports the same, then forks children on the supervisor's request
(``corral.workers.zygote``)."""

from __future__ import annotations

import os
import sys

from corral.contract import SPEC_ENV, ZYGOTE_FLAG
from corral.workers.boot import check_child, run_child

if __name__ == "__main__":
    raw = os.environ.get(SPEC_ENV)
    flags = sys.argv[1:]
    if flags == ["--check"]:
        sys.exit(check_child(raw))
    if flags == [ZYGOTE_FLAG]:
        from corral.workers.zygote import serve  # only the zygote (and what it forks) loads it

        sys.exit(serve())
    sys.exit(run_child(raw))
