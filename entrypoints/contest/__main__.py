"""``python -m corral.entrypoints.contest push|scoreboard|answer``: the contest app's own commands."""

import sys

from corral.entrypoints.contest.cli import main

sys.exit(main())
