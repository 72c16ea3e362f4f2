"""How appended events change the daily rollup: one grouped delta per (day, event_type).

The writer adds these deltas in the same transaction as the events, so the rollup
never disagrees with the log it caches.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from schema.timestamps import day_of


def daily_deltas(rows: Iterable[tuple[str, str, str, str, str]]) -> list[tuple[str, str, int]]:
    """``(day, event_type, added)`` for log rows
    ``(event_id, user_id, event_type, timestamp, payload)``."""
    counts = Counter((day_of(row[3]), row[2]) for row in rows)
    return [(day, event_type, n) for (day, event_type), n in sorted(counts.items())]
