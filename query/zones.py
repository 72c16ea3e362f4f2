"""Local calendars of IANA time zones, as UTC instants.

Every local unit an answer is grouped by — a day, a clock hour at one offset, an ISO week,
a month — is a half-open UTC interval ``[lo, hi)`` computed here from the standard
library's ``zoneinfo`` (with the ``tzdata`` package as its database where the system has
none). Since 1979 every UTC offset in the IANA database is a multiple of 15 minutes, so
these intervals are whole 15-minute rollup buckets; ``query.plan`` counts any part that
is not (older, odd offsets; date-time bounds) from the log.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo

# Names that exist on some machines' tz search path but are not zones of the database.
_NOT_ZONES = {"localtime", "posixrules"}
MAX_ZONE_CHARS = 64
HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones() - _NOT_ZONES)


def parse_zone(text: str) -> tzinfo | None:
    """The zone named exactly ``text`` (``Europe/Berlin``, ``UTC``), or None."""
    if len(text) > MAX_ZONE_CHARS or text not in _zone_names():
        return None
    return zoneinfo.ZoneInfo(text)


@functools.lru_cache(maxsize=8192)
def day_start(day: date, zone: tzinfo) -> datetime | None:
    """The first instant of local ``day`` in UTC; None beyond the calendar's range.
    (Cached: a pure function of immutable arguments, and every by-day answer asks for the
    same days again.)

    A local midnight that does not exist (the clock jumps over it) is read with the
    offset before the jump, which is exactly the instant of the jump: the day's first
    instant. A midnight that occurs twice is its first occurrence (``fold=0``).
    """
    local = datetime(day.year, day.month, day.day, tzinfo=zone)
    try:
        return local.astimezone(UTC)
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC) if day.year == 1 else None


def next_day_start(day: date, zone: tzinfo) -> datetime | None:
    """The first instant after local ``day`` (its exclusive end), or None past the calendar."""
    if day == date.max:
        return None
    return day_start(day + timedelta(days=1), zone)


def calendar_end(zone: tzinfo) -> datetime | None:
    """The first UTC instant after local 9999-12-31 (exclusive), or None when that lies
    past the last UTC instant too (zones west of Greenwich)."""
    try:
        return datetime.max.replace(tzinfo=zone).astimezone(UTC) + timedelta(microseconds=1)
    except OverflowError:
        return None


def local_date(instant: datetime, zone: tzinfo) -> date:
    """The local calendar date of a UTC instant."""
    try:
        return instant.astimezone(zone).date()
    except OverflowError:  # within a day of the calendar's ends
        return instant.date()


@dataclass(frozen=True)
class Bucket:
    """One local unit of a time series: ``start`` is its first local instant with its
    offset (ISO 8601), ``[lo, hi)`` its UTC interval (``hi`` None: unbounded)."""

    start: str
    lo: datetime
    hi: datetime | None


def _iso(instant: datetime, zone: tzinfo) -> str:
    return instant.astimezone(zone).isoformat()


def _offset_at(instant: datetime, zone: tzinfo) -> timedelta | None:
    return instant.astimezone(zone).utcoffset()


def _next_transition(lo: datetime, hi: datetime, zone: tzinfo) -> datetime | None:
    """The first instant in ``(lo, hi)`` whose UTC offset differs from ``lo``'s, or None.

    Transitions fall on whole seconds; a binary search over the seconds of the interval
    finds one in about 12 steps for an hour."""
    offset = _offset_at(lo, zone)
    last = hi - SECOND
    if last <= lo or _offset_at(last, zone) == offset:
        return None
    low, high = lo, last  # offset(low) == offset, offset(high) != offset
    while high - low > SECOND:
        middle = low + (high - low) // 2
        middle -= timedelta(microseconds=middle.microsecond)
        if middle <= low:
            middle = low + SECOND
        if _offset_at(middle, zone) == offset:
            low = middle
        else:
            high = middle
    return high


def hour_buckets(lo: datetime, hi: datetime, zone: tzinfo) -> Iterator[Bucket]:
    """Local clock hours at one UTC offset covering ``[lo, hi)``, cut at its ends.

    When the clock goes back, the repeated hour is two buckets, each with its offset; when
    it jumps forward by less than an hour (Lord Howe, 30 minutes), that hour keeps the part
    that exists. Each bucket is one offset: it ends at the next hour or transition."""
    at = lo
    while at < hi:
        local = at.astimezone(zone)
        into_hour = timedelta(
            minutes=local.minute, seconds=local.second, microseconds=local.microsecond
        )
        # Written so that no sum passes datetime.max (an hour ending at the calendar's end).
        end = hi if hi - at <= HOUR - into_hour else at + (HOUR - into_hour)
        end = _next_transition(at, end, zone) or end
        yield Bucket(local.isoformat(), at, end)
        at = end


def calendar_buckets(
    lo: datetime, hi: datetime | None, interval: str, zone: tzinfo
) -> Iterator[Bucket]:
    """Local days, ISO weeks (from Monday) or months covering ``[lo, hi)``, cut at its
    ends; ``start`` is the bucket's first local instant within the range."""
    day = local_date(lo, zone)
    unit_start = _unit_start(day, interval)
    while True:
        following = _following(unit_start, interval)
        end = day_start(following, zone) if following is not None else None
        cut_lo = max(lo, day_start(unit_start, zone) or lo)
        cut_hi = end if hi is None or (end is not None and end < hi) else hi
        if cut_hi is not None and cut_hi <= cut_lo:
            if following is None or (hi is not None and cut_lo >= hi):
                break  # the range is done
            unit_start = following  # a day the clock skipped (Samoa, 2011-12-30): no bucket
            continue
        yield Bucket(_iso(cut_lo, zone), cut_lo, cut_hi)
        if cut_hi is None or (hi is not None and cut_hi >= hi) or following is None:
            break
        unit_start = following


def _unit_start(day: date, interval: str) -> date:
    if interval == "week":  # 0001-01-01 is a Monday: never before the calendar
        return day - timedelta(days=day.weekday())
    if interval == "month":
        return day.replace(day=1)
    return day


def _following(start: date, interval: str) -> date | None:
    """The start of the next unit, or None past the calendar."""
    try:
        if interval == "week":
            return start + timedelta(days=7 - start.weekday())
        if interval == "month":
            if start.month == 12:
                return date(start.year + 1, 1, 1)
            return date(start.year, start.month + 1, 1)
        return start + timedelta(days=1)
    except (OverflowError, ValueError):
        return None
