"""The one timestamp format of the log: UTC, microseconds, ``2025-05-28T14:03:07.123456Z``.

Fixed width (27 characters), so string order is time order and SQLite compares stored
timestamps and query bounds as plain text.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_ts(moment: datetime) -> str:
    """An aware datetime as the log's timestamp string (isoformat: zero-padded years)."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_ts(text: str) -> datetime:
    return datetime.strptime(text, _FORMAT).replace(tzinfo=UTC)


def now() -> datetime:
    return datetime.now(UTC)


def day_start(day: date) -> str:
    """The first instant of a UTC day, as a timestamp string (an inclusive lower bound)."""
    return f"{day.isoformat()}T00:00:00.000000Z"


def day_of(timestamp: str) -> str:
    """The UTC day ``YYYY-MM-DD`` a timestamp string falls on."""
    return timestamp[:10]


def next_day(day: date) -> date | None:
    """The following day, or None past ``date.max``."""
    return None if day == date.max else day + timedelta(days=1)


_DAY = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


def parse_day(text: str) -> date | None:
    """A ``YYYY-MM-DD`` calendar date, exactly (no surrounding whitespace), or None (also
    for an impossible date such as ``2025-02-30``)."""
    if not _DAY.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None
