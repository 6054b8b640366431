"""Rates of work: processed and failed per second, per queue and stream, over the last seconds.

The supervisor samples the pool's totals (``WorkTotals``) once a second; a rate is the difference
between the newest sample and the oldest one still inside ``window_s``, divided by the time between
them. Shown by ``corral status`` and logged as a one-line summary in the foreground.
"""

from __future__ import annotations

from collections import deque
from typing import Any

Key = tuple[str, str]  # ("queues" | "streams", name)


class Rates:
    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, dict[Key, tuple[int, int]]]] = deque()

    def sample(self, now: float, work: dict[str, dict[str, dict[str, Any]]]) -> None:
        totals = {
            (kind, name): (int(row.get("processed", 0)), int(row.get("failed", 0)))
            for kind, rows in work.items()
            for name, row in rows.items()
        }
        self._samples.append((now, totals))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def per_second(self) -> dict[Key, tuple[float, float]]:
        """(processed/s, failed/s) of every queue and stream seen in the window."""
        if len(self._samples) < 2:
            return {}
        (start, old), (end, new) = self._samples[0], self._samples[-1]
        span_s = max(end - start, 1e-9)
        out = {}
        for key, (processed, failed) in new.items():
            was_processed, was_failed = old.get(key, (0, 0))
            out[key] = ((processed - was_processed) / span_s, (failed - was_failed) / span_s)
        return out

    def add_to(self, work: dict[str, dict[str, dict[str, Any]]]) -> None:
        """Put ``processed_per_s`` and ``failed_per_s`` into the rows of a status's ``work``."""
        rates = self.per_second()
        for kind, rows in work.items():
            for name, row in rows.items():
                processed, failed = rates.get((kind, name), (0.0, 0.0))
                row["processed_per_s"], row["failed_per_s"] = round(processed, 2), round(failed, 2)

    def summary(self) -> str:
        """``contest:submissions:spring 5.1/s, mm:game-events 40.2/s (0.3 failed/s)``, or ``idle``."""
        parts = []
        for (_kind, name), (processed, failed) in sorted(self.per_second().items()):
            if processed or failed:
                failures = f" ({failed:.1f} failed/s)" if failed else ""
                parts.append(f"{name} {processed:.1f}/s{failures}")
        return ", ".join(parts) or "idle"
