"""Runnable programs: the ``corral`` CLI, the child bootstrap and the example applications."""
