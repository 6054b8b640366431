"""The smallest pool: children that tick (``app``), configured by corral.toml beside it."""

from corral.entrypoints.ticker.app import TickerWorker

__all__ = ["TickerWorker"]
