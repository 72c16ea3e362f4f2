"""An independent reference for the time-zone tests: local units from ``zoneinfo``, counts
from ``COUNT(*)`` on the log. It shares no code with the service.

Deliberately plain rather than clever: a zone's local hours, days, ISO weeks and months are
found by converting *every* instant of a grid (every 15 minutes of UTC by default) with
``zoneinfo`` and grouping consecutive grid steps that have the same local key. The reference
checks its own premise as it goes: within one step neither the UTC offset nor the key
changes (so every unit boundary lies on the grid), and a key never comes back once another
one followed it. Zones with odd historic offsets use a finer grid (``step``).

Keys: an ``hour`` is one local clock hour at one UTC offset ``(date, hour, offset)`` (so the
repeated hour when the clock goes back is two units, and an hour cut by a jump forward keeps
the part that exists); a ``day`` is a local date; a ``week`` an ISO ``(year, week)``; a
``month`` ``(year, month)``. A unit's ``start`` is its first instant, ``end`` the first
instant after it (UTC).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

EVENT_TYPES = ("view", "click", "location")
INTERVALS = ("hour", "day", "week", "month")
QUARTER = timedelta(minutes=15)
TICK = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Scan this far beyond a range on both sides, so that the units overlapping it are whole.
_MARGIN = {
    "hour": timedelta(hours=3),
    "day": timedelta(hours=30),
    "week": timedelta(days=8),
    "month": timedelta(days=32),
}


def local_key(local: datetime, interval: str) -> Any:
    if interval == "hour":
        return (local.date(), local.hour, local.utcoffset())
    if interval == "day":
        return local.date()
    if interval == "week":
        return tuple(local.isocalendar())[:2]
    if interval == "month":
        return (local.year, local.month)
    raise ValueError(interval)


@dataclass(frozen=True)
class Unit:
    key: Any
    start: datetime  # first instant, UTC
    end: datetime  # first instant after the unit, UTC


def _floor(moment: datetime, step: timedelta) -> datetime:
    return moment - (moment - _EPOCH) % step


def _scan(
    zone: str, intervals: tuple[str, ...], lo: datetime, hi: datetime, step: timedelta
) -> dict[str, tuple[Unit, ...]]:
    """For each interval, every local unit of ``zone`` that overlaps ``[lo, hi)``, in time
    order, each whole (not cut to the range)."""
    tz = ZoneInfo(zone)
    runs: dict[str, list[list[Any]]] = {interval: [] for interval in intervals}
    seen: dict[str, set[Any]] = {interval: set() for interval in intervals}
    margin = max(_MARGIN[interval] for interval in intervals)
    moment = _floor(lo - margin, step)
    stop = hi + margin
    while moment < stop:
        first, last = moment.astimezone(tz), (moment + step - TICK).astimezone(tz)
        # The same local hour at the same offset at both ends of the step: no hour (so no
        # day, week or month) begins inside it.
        assert local_key(first, "hour") == local_key(last, "hour"), (
            f"{zone}: a unit boundary falls inside the grid step at {moment}; use a finer step"
        )
        for interval in intervals:
            key = local_key(first, interval)
            found = runs[interval]
            if found and found[-1][0] == key:
                found[-1][2] = moment + step
            else:
                assert key not in seen[interval], f"{zone}: {interval} {key} comes back at {moment}"
                seen[interval].add(key)
                found.append([key, moment, moment + step])
        moment += step
    result = {}
    for interval, found in runs.items():
        assert found[0][2] <= lo and found[-1][1] >= hi, "scan margins too small"
        result[interval] = tuple(Unit(*run) for run in found if run[1] < hi and run[2] > lo)
    return result


@lru_cache(maxsize=1024)
def units(
    zone: str, interval: str, lo: datetime, hi: datetime, step: timedelta = QUARTER
) -> tuple[Unit, ...]:
    """Every local unit of ``zone`` that overlaps ``[lo, hi)``, in time order, each whole
    (not cut to the range)."""
    return _scan(zone, (interval,), lo, hi, step)[interval]


@lru_cache(maxsize=128)
def _year_units(zone: str, year: int) -> dict[str, tuple[Unit, ...]]:
    lo = datetime(year, 1, 1, tzinfo=UTC) - timedelta(days=31)
    hi = datetime(year + 1, 1, 1, tzinfo=UTC) + timedelta(days=31)
    return _scan(zone, INTERVALS, lo, hi, QUARTER)


def units_between(
    zone: str, interval: str, lo: datetime, hi: datetime, step: timedelta = QUARTER
) -> list[Unit]:
    """Like ``units``; ranges within a year (±30 days) on the 15-minute grid are cached."""
    edge = timedelta(days=30)
    for year in (lo.year, lo.year + 1):
        if (
            step == QUARTER
            and datetime(year, 1, 1, tzinfo=UTC) - edge <= lo
            and hi <= datetime(year + 1, 1, 1, tzinfo=UTC) + edge
        ):
            cached = _year_units(zone, year)[interval]
            return [u for u in cached if u.start < hi and u.end > lo]
    return list(units(zone, interval, lo, hi, step))


def unit_at(zone: str, interval: str, moment: datetime, step: timedelta = QUARTER) -> Unit:
    """The local unit containing ``moment``."""
    (unit,) = units_between(zone, interval, moment, moment + TICK, step)
    return unit


def local_day(zone: str, day: date, step: timedelta = QUARTER) -> Unit:
    """Local day ``day`` of ``zone``: ``[first instant, first instant of the next day)``."""
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    found = [
        u
        for u in units_between(
            zone, "day", noon - timedelta(days=1), noon + timedelta(days=1), step
        )
        if u.key == day
    ]
    assert len(found) == 1, f"{zone} has no local day {day}"
    return found[0]


def transitions(zone: str, lo: datetime, hi: datetime) -> list[datetime]:
    """The instants in ``[lo, hi)`` at which ``zone``'s UTC offset changes (on the grid)."""
    tz = ZoneInfo(zone)
    found = []
    moment = _floor(lo, QUARTER)
    before = (moment - TICK).astimezone(tz).utcoffset()
    while moment < hi:
        offset = moment.astimezone(tz).utcoffset()
        if offset != before:
            found.append(moment)
        before = offset
        moment += QUARTER
    return found


# --- bounds, formats and counts ---------------------------------------------------------


def ts(moment: datetime) -> str:
    """The log's timestamp string for an aware instant."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def local_iso(moment: datetime, zone: str) -> str:
    """``moment`` as a local ISO 8601 date-time with its offset, whole seconds when it has
    no fraction: ``2025-10-05T02:30:00+11:00``."""
    local = moment.astimezone(ZoneInfo(zone))
    return local.isoformat(timespec="seconds" if local.microsecond == 0 else "microseconds")


@dataclass(frozen=True)
class Range:
    """A query range as sent (``start``/``end`` texts, None = omitted) and the instants it
    means in ``zone``: ``[lo, hi)``."""

    zone: str
    start: str | None
    end: str | None
    lo: datetime
    hi: datetime

    def params(self, **extra: str | None) -> dict[str, str]:
        out = {"start_date": self.start, "end_date": self.end, **extra}
        return {k: v for k, v in out.items() if v is not None}


def date_range(zone: str, first: date, last: date, step: timedelta = QUARTER) -> Range:
    """``start_date=first&end_date=last`` as local days of ``zone``."""
    return Range(
        zone,
        first.isoformat(),
        last.isoformat(),
        local_day(zone, first, step).start,
        local_day(zone, last, step).end,
    )


def counts(db: sqlite3.Connection, lo: datetime, hi: datetime) -> dict[str, int]:
    """``COUNT(*)`` per type of the log rows with ``lo <= timestamp < hi`` (0s included)."""
    found = dict.fromkeys(EVENT_TYPES, 0)
    if lo < hi:
        found.update(
            db.execute(
                "SELECT event_type, COUNT(*) FROM events WHERE event_type IN (?, ?, ?)"
                " AND timestamp >= ? AND timestamp < ? GROUP BY event_type",
                (*EVENT_TYPES, ts(lo), ts(hi)),
            ).fetchall()
        )
    return found


def expected_by_day(
    db: sqlite3.Connection, r: Range, step: timedelta = QUARTER
) -> list[tuple[str, dict[str, int]]]:
    """By-day: one entry per local date from the date of ``lo`` to that of ``hi - 1 µs``,
    each counted over that local day cut to the range."""
    days = units_between(r.zone, "day", r.lo, r.hi, step)
    return [(u.key.isoformat(), counts(db, max(u.start, r.lo), min(u.end, r.hi))) for u in days]


@dataclass(frozen=True)
class Bucket:
    unit: Unit
    cut_start: datetime  # the bucket's first instant within the range
    counts: dict[str, int]

    @property
    def cut(self) -> bool:
        return self.cut_start != self.unit.start


def expected_series(
    db: sqlite3.Connection, r: Range, interval: str, step: timedelta = QUARTER
) -> list[Bucket]:
    """Time series: every local unit overlapping the range, counted over its part in it."""
    return [
        Bucket(u, max(u.start, r.lo), counts(db, max(u.start, r.lo), min(u.end, r.hi)))
        for u in units_between(r.zone, interval, r.lo, r.hi, step)
    ]
