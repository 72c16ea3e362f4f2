"""Server-assigned identity and time: a UUIDv7 ``event_id`` and a ``timestamp`` that agree
to the millisecond (the UUID embeds its millisecond; a reader may compare the two)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import uuid_utils

from schema.timestamps import format_ts

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def stamp_events(n: int) -> list[tuple[str, str]]:
    """``n`` pairs of (event_id, timestamp), in time order."""
    clock_us = time.time_ns() // 1000
    stamps = []
    last_micros, last_text = -1, ""
    for _ in range(n):
        uid = uuid_utils.uuid7()  # monotonic: ids sort in the order they were made
        ms = uid.timestamp
        # The UUID's millisecond is authoritative; keep the clock's microseconds within it.
        micros = clock_us if clock_us // 1000 == ms else ms * 1000
        if micros != last_micros:
            last_micros, last_text = micros, format_ts(_EPOCH + timedelta(microseconds=micros))
        stamps.append((str(uid), last_text))
    return stamps
