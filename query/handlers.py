"""The analytics endpoints: exact counts, answered from the rollup plus at most two
partial days from the log (see ``query.plan``)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import orjson
from aiohttp import web

from app.keys import STORE
from app.problems import Problem
from query.params import Bound, TimeRange, parse_query
from query.plan import plan_range
from schema.events import EVENT_TYPES
from schema.storage import Storage
from schema.timestamps import UTC, format_ts

DEFAULT_DAYS = 30
MAX_DAYS = 3660  # ten years of daily rows in one answer


def _json(body: object) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _types(event_type: str | None) -> tuple[str, ...]:
    return (event_type,) if event_type else EVENT_TYPES


async def event_counts(request: web.Request) -> web.Response:
    """``{"total_events": n}`` for an optional type and date range."""
    span, event_type, _ = parse_query(request.query, ("event_type", "start_date", "end_date"))
    counts = await request.app[STORE].count(plan_range(span), _types(event_type))
    return _json({"total_events": sum(counts.values())})


async def event_counts_by_type(request: web.Request) -> web.Response:
    """``{"view": n, …}`` for a date range; types without events are left out."""
    span, _, _ = parse_query(request.query, ("start_date", "end_date"))
    counts = await request.app[STORE].count(plan_range(span), EVENT_TYPES)
    return _json({t: counts[t] for t in EVENT_TYPES if counts.get(t)})


async def event_counts_by_day(request: web.Request) -> web.Response:
    """``{"days": [{"date", "view", "click", "location"}, …]}``, one zero-filled entry per
    day; the range defaults to the last 30 days that have data."""
    span, event_type, bounds = parse_query(request.query, ("event_type", "start_date", "end_date"))
    store = request.app[STORE]
    start, end = bounds.get("start_date"), bounds.get("end_date")
    if span.empty:
        return _json({"days": []})

    days_listed = await _listed_days(store, start, end)
    if days_listed is None:
        return _json({"days": []})
    first, last = days_listed
    if (last - first).days + 1 > MAX_DAYS:
        raise Problem(
            400,
            f"the range spans more than {MAX_DAYS} days; narrow start_date/end_date",
            [{"field": "start_date", "message": f"range must be at most {MAX_DAYS} days"}],
        )

    # Unbounded sides of the request are pinned to the listed days.
    lo = span.lo or format_ts(_midnight(first))
    hi = span.hi if span.hi is not None else _after_day(last)
    counts = await store.count_by_day(plan_range(TimeRange(lo, hi)), _types(event_type))
    days = []
    for ordinal in range(first.toordinal(), last.toordinal() + 1):
        key = date.fromordinal(ordinal).isoformat()
        days.append({"date": key, **{t: counts.get((key, t), 0) for t in EVENT_TYPES}})
    return _json({"days": days})


async def _listed_days(
    store: Storage, start: Bound | None, end: Bound | None
) -> tuple[date, date] | None:
    """The first and last UTC day to list; a missing side defaults to the last 30 days
    that have data (the 30th most recent such day, up to ``end``; the newest one).
    None when there is nothing to list."""
    first = start.at.date() if start and start.at else None
    last = end.at.date() if end and end.at else None
    if first is None and start is not None:  # a start before the calendar: from day one
        first = date.min
    if last is not None and first is not None:
        return first, last
    recent = await store.recent_days_with_data(
        DEFAULT_DAYS, until=last.isoformat() if last else None
    )
    if last is None:
        last = date.fromisoformat(recent[0]) if recent else first
        if last is None:
            return None
        if first is not None and last < first:
            last = first
    if first is None:
        first = date.fromisoformat(recent[-1]) if recent else last
        if (last - first).days + 1 > MAX_DAYS:  # sparse data: keep the newest days
            first = date.fromordinal(last.toordinal() - MAX_DAYS + 1)
    return first, last


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _after_day(day: date) -> str | None:
    try:
        return format_ts(_midnight(day) + timedelta(days=1))
    except OverflowError:
        return None


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/analytics/event-counts", event_counts)
    app.router.add_get("/analytics/event-counts-by-type", event_counts_by_type)
    app.router.add_get("/analytics/event-counts-by-day", event_counts_by_day)
