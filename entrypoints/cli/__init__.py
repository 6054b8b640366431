"""The ``corral`` command: ``main`` (``cli/main.py``), its arguments (``parser.py``), the commands
that talk to a running supervisor (``control.py``) and those that read logs or produce work
(``files.py``)."""

from corral.entrypoints.cli.main import main

__all__ = ["main"]
