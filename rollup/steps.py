"""How many rows a lifecycle step may take: as many as fit a time budget.

An erasure step of a heavy user touches a page of the table and of each index per event
(its events lie scattered over the log), while a retention step deletes neighbours; how
long a row takes also depends on the page cache and the disk. So the size is measured,
not guessed: after each step the next one is scaled towards ``TARGET_MS`` of write lock,
at most doubling or halving at a time, within fixed bounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

TARGET_MS = 40.0  # ingestion waits at most about this long for one step


@dataclass
class StepSize:
    """The current number of rows per step, between ``least`` and ``most``."""

    rows: int
    least: int
    most: int

    def after(self, held_ms: float) -> None:
        """Scale the next step by how long this one held the write lock."""
        factor = 2.0 if held_ms <= 0 else min(2.0, max(0.5, TARGET_MS / held_ms))
        self.rows = min(self.most, max(self.least, int(self.rows * factor)))


def percentiles(held_ms: Sequence[float]) -> tuple[float, float]:
    """The median and the 99th percentile (nearest rank) of the steps' lock times, ms."""
    if not held_ms:
        return 0.0, 0.0
    ordered = sorted(held_ms)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return round(statistics.median(ordered), 2), round(p99, 2)
