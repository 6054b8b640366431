"""``python -m corral.entrypoints.cli``: the ``corral`` command."""

import sys

from corral.entrypoints.cli import main

sys.exit(main())
