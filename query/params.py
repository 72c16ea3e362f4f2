"""Strict query-string parsing for the analytics endpoints.

Unknown or repeated parameters are errors (a typo like ``start-date`` must not silently
mean "no filter"), and a value is taken exactly as sent: surrounding whitespace or a
trailing newline makes it malformed (every pattern is matched with ``fullmatch``). Date
bounds become a half-open UTC interval ``[lo, hi)``: a ``YYYY-MM-DD`` bound is a local
day of ``tz``; a date-time with an offset is the same instant whatever ``tz`` says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo

from multidict import MultiMapping

from app.problems import bad_request
from query.plan import Interval
from query.zones import day_start, next_day_start, parse_zone
from schema.events import EVENT_TYPES

# re.ASCII: \d is 0-9 only (without it, "٢٠٢٥-٠١-٠١" would be read as 2025-01-01).
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})", re.ASCII)
# RFC 3339 date-time. A space before the offset is read as "+": an unencoded "+" in a
# query string arrives as a space.
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:(?P<z>[Zz])|(?P<sign>[+\- ])(?P<oh>\d{2}):(?P<om>\d{2}))?",
    re.ASCII,
)
MAX_PARAM_CHARS = 64
INTERVALS = ("hour", "day", "week", "month")
_MICRO = timedelta(microseconds=1)


@dataclass(frozen=True)
class Bound:
    """A parsed bound: a local ``day`` (``YYYY-MM-DD``), or an instant ``at`` (UTC,
    truncated to microseconds; ``nanos`` the digits beyond, 0–999). ``beyond`` is -1/+1
    for an instant outside datetime's range (``at`` is then None)."""

    day: date | None = None
    at: datetime | None = None
    nanos: int = 0
    beyond: int = 0


@dataclass(frozen=True)
class Query:
    """A validated analytics query string."""

    event_type: str | None
    zone: tzinfo
    zone_name: str
    start: Bound | None
    end: Bound | None
    interval: str | None = None

    @property
    def types(self) -> tuple[str, ...]:
        return (self.event_type,) if self.event_type else EVENT_TYPES

    def span(self) -> Interval | None:
        """``[lo, hi)`` in UTC (None sides unbounded), or None when nothing can match."""
        return _span(self.start, self.end, self.zone)


def parse_query(query: MultiMapping[str], allowed: tuple[str, ...]) -> Query:
    """Validate the query string against the ``allowed`` parameter names.

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

    zone_name = values.get("tz", "UTC")
    zone = parse_zone(zone_name)
    if zone is None:
        shown = zone_name[:MAX_PARAM_CHARS]
        errors.append(
            {"field": "tz", "message": f"{shown!r} is not an IANA time zone (e.g. Europe/Berlin)"}
        )
        zone = UTC

    interval = values.get("interval")
    if "interval" in allowed:
        if interval is None:
            errors.append({"field": "interval", "message": "is required: hour, day, week or month"})
        elif interval not in INTERVALS:
            errors.append({"field": "interval", "message": "must be hour, day, week or month"})

    bounds: dict[str, Bound] = {}
    for name in ("start_date", "end_date"):
        if name in values:
            bound, message = _parse_bound(values[name])
            if message:
                errors.append({"field": name, "message": message})
            elif bound is not None:
                bounds[name] = bound

    start, end = bounds.get("start_date"), bounds.get("end_date")
    if start and end and _after(start, end, zone):
        errors.append({"field": "start_date", "message": "must not be after end_date"})
    if errors:
        raise bad_request(errors)
    return Query(event_type, zone, zone_name, start, end, interval)


def _first_point(bound: Bound, zone: tzinfo) -> tuple[int, datetime | None, int]:
    """The bound's first instant as a sortable ``(beyond, instant, nanos)``."""
    if bound.day is not None:
        return 0, day_start(bound.day, zone), 0
    return bound.beyond, bound.at, bound.nanos


def _last_point(bound: Bound, zone: tzinfo) -> tuple[int, datetime | None, int]:
    """The bound's last instant: a date's last nanosecond, or the instant itself."""
    if bound.day is not None:
        end = next_day_start(bound.day, zone)
        return (1, None, 0) if end is None else (0, end - _MICRO, 999)
    return bound.beyond, bound.at, bound.nanos


def _after(start: Bound, end: Bound, zone: tzinfo) -> bool:
    first, last = _first_point(start, zone), _last_point(end, zone)
    if first[0] or last[0] or first[1] is None or last[1] is None:
        return first[0] > last[0]  # -1 is before every datetime, +1 after every one
    return (first[1], first[2]) > (last[1], last[2])


def _span(start: Bound | None, end: Bound | None, zone: tzinfo) -> Interval | None:
    lo: datetime | None = None
    hi: datetime | None = None
    if start is not None:
        if start.day is not None:
            lo = day_start(start.day, zone)
            if lo is None:
                return None  # a start past the calendar
        elif start.beyond > 0:
            return None
        elif start.at is not None:
            try:  # the log has microseconds: a start between two of them rounds up
                lo = start.at + (_MICRO if start.nanos else timedelta(0))
            except OverflowError:
                return None
    if end is not None:
        if end.day is not None:
            hi = next_day_start(end.day, zone)
        elif end.beyond < 0:
            return None
        elif end.at is not None:
            try:
                hi = end.at + _MICRO
            except OverflowError:
                hi = None
    if lo is not None and hi is not None and lo >= hi:
        return None
    return lo, hi


def _parse_bound(text: str) -> tuple[Bound | None, str]:
    if len(text) > MAX_PARAM_CHARS:
        return None, "is too long to be a date"
    if m := _DATE.fullmatch(text):
        try:
            return Bound(day=date(int(m[1]), int(m[2]), int(m[3]))), ""
        except ValueError:
            return None, f"{text!r} is not a real calendar date"
    if m := _DATETIME.fullmatch(text):
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
            return Bound(beyond=-1 if local.year < 5000 else 1), ""
        return Bound(at=at, nanos=nanos), ""
    return None, f"{text!r} is neither a date (YYYY-MM-DD) nor an RFC 3339 date-time with offset"
