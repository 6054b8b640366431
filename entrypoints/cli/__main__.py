"""``python -m corral.entrypoints.cli``: the ``corral`` command."""

import sys

from corral.entrypoints.cli.main import main

sys.exit(main())
