"""Split a time range into whole UTC days (answered by the rollup) and at most two
partial days at its edges (counted from the log through its index).

No whole day is ever counted from the log, so a query's cost does not grow with the
data: at most two days of index entries, plus one rollup row per day and type.
"""

from __future__ import annotations

from datetime import date

from query.params import TimeRange
from schema.storage import CountPlan, LogSlice
from schema.timestamps import day_of, day_start, next_day

_MIDNIGHT = "T00:00:00.000000Z"


def _is_midnight(ts: str) -> bool:
    return ts.endswith(_MIDNIGHT)


def plan_range(span: TimeRange) -> CountPlan:
    if span.empty:
        return CountPlan(None, None, (), empty=True)
    lo, hi = span.lo, span.hi
    first_day: str | None = None
    end_day: str | None = None
    slices: list[LogSlice] = []

    if lo is not None:
        lo_day = day_of(lo)
        if _is_midnight(lo):
            first_day = lo_day
        else:
            following = next_day(date.fromisoformat(lo_day))
            slice_hi = day_start(following) if following else None
            if hi is not None and (slice_hi is None or hi <= slice_hi):
                return _slices_only(LogSlice(lo_day, lo, hi))  # within one day
            slices.append(LogSlice(lo_day, lo, slice_hi))
            if following is None:  # the calendar's last day
                return _slices_only(*slices)
            first_day = following.isoformat()

    if hi is not None:
        end_day = day_of(hi)
        if not _is_midnight(hi):
            slices.append(LogSlice(end_day, end_day + _MIDNIGHT, hi))

    if first_day is not None and end_day is not None and first_day >= end_day:
        first_day = end_day  # no whole days: an empty day range
    return CountPlan(first_day, end_day, tuple(slices))


def _slices_only(*slices: LogSlice) -> CountPlan:
    day = slices[0].day
    return CountPlan(day, day, slices)  # first_day == end_day: no whole days
