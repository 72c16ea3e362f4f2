"""Split UTC intervals into the largest rollup units that cover them whole.

An interval ``[lo, hi)`` becomes whole UTC days (the daily rollup), then whole 15-minute
buckets at its edges (the quarter-hour rollup), and only the parts smaller than a bucket —
where a date-time bound cuts one — are counted from the log, through its
``(event_type, timestamp)`` index. A query's cost therefore does not grow with the data:
at most two sub-bucket slivers of the log per interval, plus rollup rows.

A local day in a zone whose offset is not a whole day's (all but UTC) is a tail of one
UTC day and a head of the next. An edge longer than half a day is read as that whole day
minus the rest of it (``_within_day``), so no edge reads more than 48 buckets; and
neighbouring local days share their cut (Kathmandu's 18:15Z), which the store reads once.
A year of local days in Kathmandu is thus ~365 short bucket ranges, not 35,000 buckets.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

from schema.storage import CountPlan
from schema.timestamps import format_ts

QUARTER_S = 15 * 60
DAY_S = 24 * 60 * 60
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# An interval: half-open UTC instants; None is unbounded on that side.
Interval = tuple[datetime | None, datetime | None]


def _split(instant: datetime) -> tuple[int, int]:
    """``(whole seconds since the Unix epoch (floor), microseconds past them)``: one
    subtraction, the rest integer arithmetic (a plan of a year of days splits 730 bounds)."""
    delta = instant - _EPOCH
    return delta.days * DAY_S + delta.seconds, delta.microseconds


def seconds(instant: datetime) -> int:
    """Whole seconds since the Unix epoch (floor)."""
    return _split(instant)[0]


def _instant(epoch_s: int) -> datetime:
    return _EPOCH + timedelta(seconds=epoch_s)


_LAST_S = _split(datetime.max.replace(tzinfo=UTC))[0]
_EPOCH_ORDINAL = _EPOCH.toordinal()


@functools.lru_cache(maxsize=4096)
def _day(epoch_s: int) -> str:
    """The UTC date of a day boundary (cached: the same days recur in every answer)."""
    return date.fromordinal(_EPOCH_ORDINAL + epoch_s // DAY_S).isoformat()


def _day_or_none(epoch_s: int | None) -> str | None:
    """The UTC date of a day boundary; None when unbounded or past the calendar."""
    if epoch_s is None or epoch_s > _LAST_S:
        return None
    return _day(epoch_s)


class _Builder:
    def __init__(self) -> None:
        self.days: list[tuple[int, str | None, str | None]] = []
        self.quarters: list[tuple[int, int, int, int]] = []
        self.log: list[tuple[int, str, str | None]] = []

    def add(self, part: int, lo: datetime | None, hi: datetime | None) -> None:
        if lo is not None and hi is not None and lo >= hi:
            return
        lo_q = hi_q = None
        lo_cut = hi_cut = False  # a bound inside a bucket, not on its edge
        if lo is not None:
            lo_s, lo_us = _split(lo)
            lo_q = -(-(lo_s + (lo_us > 0)) // QUARTER_S) * QUARTER_S  # the bucket edge at/after
            lo_cut = lo_us > 0 or lo_s != lo_q
        if hi is not None:
            hi_s, hi_us = _split(hi)
            hi_q = hi_s // QUARTER_S * QUARTER_S  # the bucket edge at/before
            hi_cut = hi_us > 0 or hi_s != hi_q
        if lo_q is not None and (lo_q > _LAST_S or (hi_q is not None and lo_q >= hi_q)):
            self._log(part, lo, hi)  # no whole bucket inside
            return
        if lo_cut and lo_q is not None:
            self._log(part, lo, _instant(lo_q))
        if hi_cut and hi_q is not None:
            self._log(part, _instant(hi_q), hi)
        self._aligned(part, lo_q, hi_q)

    def _aligned(self, part: int, lo_q: int | None, hi_q: int | None) -> None:
        """``[lo_q, hi_q)`` on bucket boundaries: whole days plus buckets at the edges."""
        lo_d = -(-lo_q // DAY_S) * DAY_S if lo_q is not None else None
        hi_d = hi_q // DAY_S * DAY_S if hi_q is not None else None
        if lo_q is not None and lo_d is not None and lo_d > _LAST_S:  # the calendar's last day
            self.quarters.append((part, lo_q, hi_q if hi_q is not None else lo_d, 1))
            return
        if lo_q is not None and hi_q is not None and lo_d is not None and hi_d is not None:
            if lo_d > hi_d:  # within one day
                self._within_day(part, lo_q, hi_q)
                return
            if lo_d == hi_d:  # across one midnight, no whole day inside
                self._within_day(part, lo_q, lo_d)
                self._within_day(part, hi_d, hi_q)
                return
        self.days.append((part, _day_or_none(lo_d), _day_or_none(hi_d)))
        if lo_q is not None and lo_d is not None:
            self._within_day(part, lo_q, lo_d)
        if hi_q is not None and hi_d is not None:
            self._within_day(part, hi_d, hi_q)

    def _within_day(self, part: int, lo: int, hi: int) -> None:
        """Buckets ``[lo, hi)`` inside one UTC day; more than half a day is read as the
        whole day minus the rest of it (at most 48 buckets either way)."""
        if lo >= hi:
            return
        if hi - lo <= DAY_S // 2:
            self.quarters.append((part, lo, hi, 1))
            return
        day = lo // DAY_S * DAY_S
        self.days.append((part, _day(day), _day_or_none(day + DAY_S)))
        if day < lo:
            self.quarters.append((part, day, lo, -1))
        if hi < day + DAY_S:
            self.quarters.append((part, hi, day + DAY_S, -1))

    def _log(self, part: int, lo: datetime | None, hi: datetime | None) -> None:
        assert lo is not None  # an unbounded side never cuts a bucket
        self.log.append((part, format_ts(lo), format_ts(hi) if hi is not None else None))


def plan_intervals(intervals: Sequence[Interval]) -> CountPlan:
    """The plan counting each interval (its id is its index)."""
    builder = _Builder()
    for part, (lo, hi) in enumerate(intervals):
        builder.add(part, lo, hi)
    return CountPlan(
        intervals=len(intervals),
        days=tuple(builder.days),
        quarters=tuple(builder.quarters),
        log=tuple(builder.log),
    )
