"""Server-assigned identity and time: a UUIDv7 ``event_id`` and a ``timestamp`` that agree
to the millisecond (the UUID embeds its millisecond; a reader may compare the two)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import uuid_utils

from schema.timestamps import format_ts

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def stamp_events(n: int) -> list[tuple[str, str]]:
    """``n`` pairs of (event_id, timestamp), in time order."""
    clock_us = time.time_ns() // 1000
    stamps = []
    for _ in range(n):
        uid = uuid_utils.uuid7()  # monotonic: ids sort in the order they were made
        ms = uid.timestamp
        # The UUID's millisecond is authoritative; keep the clock's microseconds within it.
        micros = clock_us if clock_us // 1000 == ms else ms * 1000
        stamps.append((str(uid), timestamp_of(micros)))
    return stamps


def timestamp_of(micros: int) -> str:
    """Microseconds since the epoch as the log's timestamp (``format_ts``), with the
    date and time of day formatted once per second rather than once per event."""
    seconds, fraction = divmod(micros, 1_000_000)
    return f"{_second(seconds)}{fraction:06d}Z"


@lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    """``2025-05-28T14:03:07.`` for a whole second since the epoch."""
    return format_ts(_EPOCH + timedelta(seconds=seconds))[:-7]
