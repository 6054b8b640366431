"""The demo: every example app in one pool with random traffic (``app``, corral.toml beside it)."""

from corral.entrypoints.demo.app import DemoWorker

__all__ = ["DemoWorker"]
