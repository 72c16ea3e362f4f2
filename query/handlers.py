"""The analytics endpoints: exact counts in any IANA time zone, answered from the rollups
plus at most the sub-bucket slivers a date-time bound cuts (see ``query.plan``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import orjson
from aiohttp import web

from app.keys import STORE
from app.problems import Problem, bad_request
from query.params import Query, parse_query
from query.plan import QUARTER_S, Interval, plan_intervals, seconds
from query.zones import (
    Bucket,
    calendar_buckets,
    calendar_end,
    day_start,
    hour_buckets,
    local_date,
    next_day_start,
)
from schema.events import EVENT_TYPES
from schema.storage import BeforeHorizonError, Storage
from schema.timestamps import format_ts, now

DEFAULT_DAYS = 30
MAX_DAYS = 3660  # ten years of daily rows in one answer
MAX_BUCKETS = 10_000
# How far back a time series reaches without a start_date, in units of its interval.
DEFAULT_UNITS = {"hour": 24, "day": 30, "week": 12, "month": 12}

_RANGE = ("start_date", "end_date", "tz")
_LAST_INSTANT = datetime.max.replace(tzinfo=UTC)


def _json(body: object) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def _count(
    store: Storage, intervals: Sequence[Interval], types: Sequence[str], query: Query
) -> dict[tuple[int, str], int]:
    try:
        return await store.count(plan_intervals(intervals), types)
    except BeforeHorizonError as exc:
        raise _before_horizon(exc.horizon, query) from None


def _before_horizon(horizon: str, query: Query) -> Problem:
    """409: a date-time bound cuts a 15-minute bucket whose raw events retention deleted;
    the rollups hold only whole buckets there, and a smaller number would be wrong."""
    span = query.span() or (None, None)
    fields = [
        name
        for name, edge in zip(("start_date", "end_date"), span, strict=True)
        if edge is not None
        and seconds(edge) % QUARTER_S + edge.microsecond
        and format_ts(edge) < horizon
    ] or ["start_date"]
    message = (
        f"cuts a 15-minute bucket before the retention horizon {horizon}: "
        "use whole 15-minute buckets (or days) there, or an instant at or after the horizon"
    )
    return Problem(
        409,
        f"raw events before the retention horizon {horizon} were deleted; the rollups kept "
        "only whole 15-minute buckets of that time, so this question has no exact answer",
        [{"field": name, "message": message} for name in fields],
    )


async def event_counts(request: web.Request) -> web.Response:
    """``{"total_events": n}`` for an optional type and range."""
    query = parse_query(request.query, ("event_type", *_RANGE))
    span = query.span()
    if span is None:
        return _json({"total_events": 0})
    counts = await _count(request.app[STORE], [span], query.types, query)
    return _json({"total_events": sum(counts.values())})


async def event_counts_by_type(request: web.Request) -> web.Response:
    """``{"view": n, …}`` for a range; types without events are left out."""
    query = parse_query(request.query, _RANGE)
    span = query.span()
    counts = await _count(request.app[STORE], [span], EVENT_TYPES, query) if span else {}
    return _json({t: counts[(0, t)] for t in EVENT_TYPES if counts.get((0, t))})


async def event_counts_by_day(request: web.Request) -> web.Response:
    """``{"days": [{"date", "view", "click", "location"}, …]}``: one zero-filled entry per
    local day of the range (default: the last 30 days up to today, or, when those hold no
    event, the 30 days up to the newest day with events)."""
    query = parse_query(request.query, ("event_type", *_RANGE))
    store = request.app[STORE]
    span = query.span()
    if span is None:
        return _json({"days": []})
    first, last = await _listed_days(store, query, span)
    if (last - first).days + 1 > MAX_DAYS:
        raise Problem(
            400,
            f"the range spans more than {MAX_DAYS} days; narrow start_date/end_date",
            [{"field": "start_date", "message": f"range must be at most {MAX_DAYS} days"}],
        )
    days = [date.fromordinal(n) for n in range(first.toordinal(), last.toordinal() + 1)]
    # Each day ends where the next one starts: one zone conversion per day.
    starts = [day_start(d, query.zone) for d in days]
    starts.append(next_day_start(last, query.zone))
    intervals = [_cut(span, starts[i], starts[i + 1]) for i in range(len(days))]
    counts = await _count(store, intervals, query.types, query)
    return _json(
        {
            "days": [
                {"date": d.isoformat(), **{t: counts.get((i, t), 0) for t in EVENT_TYPES}}
                for i, d in enumerate(days)
            ]
        }
    )


async def timeseries(request: web.Request) -> web.Response:
    """``{"interval", "tz", "buckets": [{"start", <type>: n, …}, …]}``: every local hour,
    day, ISO week or month of the range, zero-filled (default: the last 24 hours, 30 days,
    12 weeks or 12 months ending now)."""
    query = parse_query(request.query, ("interval", "event_type", *_RANGE))
    assert query.interval is not None
    buckets = _buckets(query)
    counts = await _count(request.app[STORE], [(b.lo, b.hi) for b in buckets], query.types, query)
    return _json(
        {
            "interval": query.interval,
            "tz": query.zone_name,
            "buckets": [
                {"start": b.start, **{t: counts.get((i, t), 0) for t in query.types}}
                for i, b in enumerate(buckets)
            ],
        }
    )


# --- ranges ---------------------------------------------------------------------------


def _cut(span: Interval, lo: datetime | None, hi: datetime | None) -> Interval:
    """``[lo, hi)`` cut to ``span``."""
    span_lo, span_hi = span
    if span_lo is not None and (lo is None or span_lo > lo):
        lo = span_lo
    if span_hi is not None and (hi is None or span_hi < hi):
        hi = span_hi
    return lo, hi


async def _listed_days(store: Storage, query: Query, span: Interval) -> tuple[date, date]:
    """The first and last local day to list."""
    lo, hi = span
    zone = query.zone
    # A bound past the calendar's ends leaves its side unbounded: pin it to the ends.
    first = local_date(lo, zone) if lo is not None else None
    if first is None and query.start is not None:
        first = date.min
    last = local_date(hi - timedelta(microseconds=1), zone) if hi is not None else None
    if last is None and query.end is not None:
        last = date.max
    if first is not None and last is not None:
        return first, last
    if first is not None:  # through today (or just the start's day if that is later)
        return first, max(first, local_date(now(), zone))
    if last is not None:
        return _days_before(last, DEFAULT_DAYS), last
    today = local_date(now(), zone)
    first = _days_before(today, DEFAULT_DAYS)
    recent = await _count(
        store, [(day_start(first, zone), next_day_start(today, zone))], EVENT_TYPES, query
    )
    if not any(recent.values()):
        newest = await store.newest_bucket()
        if newest is not None:
            last = local_date(datetime.fromtimestamp(newest, UTC), zone)
            return _days_before(last, DEFAULT_DAYS), last
    return first, today


def _days_before(last: date, n: int) -> date:
    """The first of ``n`` days ending with ``last`` (not before the calendar)."""
    return date.fromordinal(max(1, last.toordinal() - n + 1))


def _buckets(query: Query) -> list[Bucket]:
    """The time series' buckets, capped at ``MAX_BUCKETS`` (400 beyond)."""
    assert query.interval is not None
    span = query.span()
    if span is None:
        return []
    buckets: list[Bucket] = []
    try:
        lo, hi = _series_range(query, span)
        unbounded = hi is None  # an end past the last UTC instant: the last bucket is open
        hi = hi or _LAST_INSTANT
        units = (
            hour_buckets(lo, hi, query.zone)
            if query.interval == "hour"
            else calendar_buckets(lo, hi, query.interval, query.zone)
        )
        for bucket in units:
            if len(buckets) == MAX_BUCKETS:
                raise _too_many_buckets(query.interval)
            buckets.append(bucket)
    except OverflowError:  # a local time before 0001-01-01 or after 9999-12-31
        raise bad_request(
            [
                {
                    "field": "tz",
                    "message": "the range reaches local times outside 0001-01-01 … 9999-12-31 "
                    "in this zone; narrow start_date/end_date",
                }
            ]
        ) from None
    if unbounded and buckets and buckets[-1].hi == _LAST_INSTANT:
        buckets[-1] = dataclasses.replace(buckets[-1], hi=None)
    return buckets


def _too_many_buckets(interval: str) -> Problem:
    return bad_request(
        [
            {
                "field": "interval",
                "message": f"the range holds more than {MAX_BUCKETS} {interval} "
                "buckets; narrow start_date/end_date or choose a longer interval",
            }
        ]
    )


def _series_range(query: Query, span: Interval) -> tuple[datetime, datetime | None]:
    """The series' ``[lo, hi)``: the given bounds, or the default number of units before
    the end (aligned to the start of a unit), ending now when no end is given. A bound
    past the calendar's ends is that end (``hi`` None: past the last UTC instant), never
    "no bound"."""
    assert query.interval is not None
    lo, hi = span
    if lo is None and query.start is not None:
        lo = datetime.min.replace(tzinfo=UTC)
    if hi is None and query.end is not None:
        # A date's end past the last UTC instant is the end of local 9999-12-31 (or the
        # last instant itself, west of Greenwich); an instant past it leaves the series
        # open (None: the caller's last bucket).
        end = calendar_end(query.zone) if query.end.day is not None else None
        return lo or _units_before((end or _LAST_INSTANT) - timedelta(microseconds=1), query), end
    if hi is None:
        moment = now()
        hi = moment if lo is None or lo < moment else _unit_end(lo, query)
    if lo is None:
        lo = _units_before(hi - timedelta(microseconds=1), query)
    return lo, hi


def _unit_end(instant: datetime, query: Query) -> datetime:
    """The end of the unit that holds ``instant`` (for a start after now)."""
    assert query.interval is not None
    if query.interval == "hour":
        return next(hour_buckets(instant, instant + timedelta(hours=1), query.zone)).hi or instant
    first = next(calendar_buckets(instant, None, query.interval, query.zone))
    return first.hi or datetime.max.replace(tzinfo=UTC)


def _units_before(last: datetime, query: Query) -> datetime:
    """The start of the unit ``DEFAULT_UNITS - 1`` units before the one holding ``last``."""
    interval, zone = query.interval, query.zone
    n = DEFAULT_UNITS[interval or "day"]
    if interval == "hour":
        local = last.astimezone(zone)
        into = timedelta(minutes=local.minute, seconds=local.second, microseconds=local.microsecond)
        return last - into - timedelta(hours=n - 1)
    day = local_date(last, zone)
    if interval == "day":
        start = _days_before(day, n)
    elif interval == "week":
        start = _days_before(day - timedelta(days=day.weekday()), 7 * (n - 1) + 1)
    else:
        months = day.year * 12 + day.month - 1 - (n - 1)
        start = date(max(1, months // 12), months % 12 + 1, 1) if months >= 12 else date.min
    return day_start(start, zone) or datetime.min.replace(tzinfo=UTC)


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/analytics/event-counts", event_counts)
    app.router.add_get("/analytics/event-counts-by-type", event_counts_by_type)
    app.router.add_get("/analytics/event-counts-by-day", event_counts_by_day)
    app.router.add_get("/analytics/timeseries", timeseries)
