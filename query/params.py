"""Strict query-string parsing for the analytics endpoints.

Unknown or repeated parameters are errors (a typo like ``start-date`` must not silently
mean "no filter"). Date bounds become a half-open UTC range ``[lo, hi)`` of log timestamps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from multidict import MultiMapping

from app.problems import bad_request
from schema.events import EVENT_TYPES
from schema.timestamps import UTC, format_ts

# re.ASCII: \d is 0-9 only (without it, "٢٠٢٥-٠١-٠١" would be read as 2025-01-01).
_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$", re.ASCII)
# RFC 3339 date-time. A space before the offset is read as "+": an unencoded "+" in a
# query string arrives as a space.
_DATETIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:(?P<z>[Zz])|(?P<sign>[+\- ])(?P<oh>\d{2}):(?P<om>\d{2}))?$",
    re.ASCII,
)
MAX_PARAM_CHARS = 64


@dataclass(frozen=True)
class Bound:
    """A parsed bound: ``at`` is the UTC instant truncated to microseconds (None when
    outside datetime's range), ``nanos`` the digits beyond microseconds (0–999),
    ``whole_day`` says it was a plain date, ``beyond`` is -1/+1 when out of range."""

    at: datetime | None
    whole_day: bool
    beyond: int = 0
    nanos: int = 0


@dataclass(frozen=True)
class TimeRange:
    """``[lo, hi)`` as log timestamp strings; None is unbounded; ``empty``: nothing matches."""

    lo: str | None
    hi: str | None
    empty: bool = False


def parse_query(
    query: MultiMapping[str], allowed: tuple[str, ...]
) -> tuple[TimeRange, str | None, dict[str, Bound]]:
    """Validate the query string; return the range, the event type and the raw bounds.

    Raises a 400 Problem listing every bad parameter.
    """
    errors = []
    values: dict[str, str] = {}
    for name in query:
        if name in values:
            continue
        given = query.getall(name)
        if name not in allowed:
            errors.append(
                {
                    "field": name,
                    "message": f"is not a known parameter (known: {', '.join(allowed)})",
                }
            )
        elif len(given) > 1:
            errors.append({"field": name, "message": "must be given at most once"})
        else:
            values[name] = given[0]

    event_type = values.get("event_type")
    if event_type is not None and event_type not in EVENT_TYPES:
        errors.append(
            {"field": "event_type", "message": "must be one of 'view', 'click', 'location'"}
        )
        event_type = None

    bounds: dict[str, Bound] = {}
    for name, is_end in (("start_date", False), ("end_date", True)):
        if name in values:
            bound, message = _parse_bound(values[name], is_end)
            if message:
                errors.append({"field": name, "message": message})
            elif bound is not None:
                bounds[name] = bound

    start, end = bounds.get("start_date"), bounds.get("end_date")
    if start and end and _after(start, end):
        errors.append({"field": "start_date", "message": "must not be after end_date"})
    if errors:
        raise bad_request(errors)
    return _to_range(start, end), event_type, bounds


def _after(start: Bound, end: Bound) -> bool:
    if start.beyond or end.beyond:  # -1 is before every datetime, +1 after every one
        return start.beyond > end.beyond
    assert start.at is not None and end.at is not None
    return (start.at, start.nanos) > (end.at, end.nanos)


def _parse_bound(text: str, is_end: bool) -> tuple[Bound | None, str]:
    if len(text) > MAX_PARAM_CHARS:
        return None, "is too long to be a date"
    if m := _DATE.match(text):
        try:
            day = date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError:
            return None, f"{text!r} is not a real calendar date"
        at = datetime(day.year, day.month, day.day, tzinfo=UTC)
        if is_end:  # the last instant of the day
            at = at.replace(hour=23, minute=59, second=59, microsecond=999_999)
        return Bound(at, whole_day=True), ""
    if m := _DATETIME.match(text):
        if not m["z"] and not m["sign"]:
            return None, "a date-time needs an offset (Z or ±HH:MM): without one it is ambiguous"
        fraction = (m[7] or "").ljust(9, "0")
        micro, nanos = int(fraction[:6]), int(fraction[6:])
        sign = -1 if m["sign"] == "-" else 1
        try:
            offset = timezone(sign * timedelta(hours=int(m["oh"] or 0), minutes=int(m["om"] or 0)))
            local = datetime(
                int(m[1]),
                int(m[2]),
                int(m[3]),
                int(m[4]),
                int(m[5]),
                int(m[6]),
                micro,
                tzinfo=offset,
            )
        except ValueError:
            return None, f"{text!r} is not a real date-time"
        try:
            at = local.astimezone(UTC)
        except OverflowError:
            return Bound(None, whole_day=False, beyond=-1 if local.year < 5000 else 1), ""
        return Bound(at, whole_day=False, nanos=nanos), ""
    return None, f"{text!r} is neither a date (YYYY-MM-DD) nor an RFC 3339 date-time with offset"


def _to_range(start: Bound | None, end: Bound | None) -> TimeRange:
    lo: str | None = None
    hi: str | None = None
    if start is not None:
        if start.beyond > 0:
            return TimeRange(None, None, empty=True)
        if start.at is not None:
            try:  # the log has microseconds: a start between two of them rounds up
                lo = format_ts(start.at + timedelta(microseconds=1 if start.nanos else 0))
            except OverflowError:
                return TimeRange(None, None, empty=True)
    if end is not None:
        if end.beyond < 0:
            return TimeRange(None, None, empty=True)
        if end.at is not None:
            try:
                hi = format_ts(end.at + timedelta(microseconds=1))
            except OverflowError:
                hi = None
    if lo is not None and hi is not None and lo >= hi:
        return TimeRange(None, None, empty=True)
    return TimeRange(lo, hi)
