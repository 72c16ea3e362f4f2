"""Time zones: ``tz`` on every analytics endpoint and ``GET /analytics/timeseries``.

Every answer is compared with an independent reference (``tests/zone_reference.py``): local
hours, days, ISO weeks and months found by converting every 15-minute UTC instant with
``zoneinfo``, and ``COUNT(*)`` on the log over those instants. The data is a year (2025)
with events piled on every 15-minute boundary (±1 µs) around each daylight-saving change of
the zones below and on every local month start, plus random ones.

How the contract is read where it leaves room:
* ``start`` of a bucket that the range cuts (a week or month that begins before
  ``start_date``, an hour cut by a date-time bound) may be the unit's own first instant or
  the range's first instant; every other ``start`` is exactly the unit's first local
  instant as ``YYYY-MM-DDTHH:MM:SS±HH:MM`` (``+00:00`` in UTC, never ``Z``); an offset with
  seconds (local mean time, before 1980) may be spelled ``±HH:MM:SS``.
* By-day with date-time bounds lists the local dates from that of the start instant to
  that of the end instant, the first and last cut to the range (as in UTC).
* With ``event_type``, by-day checks only that type's numbers (the other types are present);
  a time-series bucket has exactly ``start`` and that type.
* "The last 24 hours / 30 days / 12 weeks / 12 months ending now" may be N whole units up
  to the current one or N units' time cut at its start (N + 1 buckets).
* The ends of the calendar (local 0001-01-01 east of Greenwich) answer 200 or 400, not 500.
"""

from __future__ import annotations

import random
import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import orjson
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from app.config import Config
from schema.storage import EventRow
from tests.databases import Database, connect
from tests.helpers import append, assert_problem, row, stored
from tests.zone_reference import (
    EVENT_TYPES,
    INTERVALS,
    QUARTER,
    TICK,
    Bucket,
    Range,
    counts,
    date_range,
    expected_by_day,
    expected_series,
    local_day,
    local_iso,
    transitions,
    ts,
    unit_at,
    units_between,
)

ZONES = (
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "Australia/Lord_Howe",
    "America/St_Johns",
)
DST_ZONES = tuple(z for z in ZONES if z not in {"UTC", "Asia/Kolkata", "Asia/Kathmandu"})
YEAR_LO = datetime(2025, 1, 1, tzinfo=UTC)
YEAR_HI = datetime(2026, 1, 1, tzinfo=UTC)
FIRST_DAY, LAST_DAY = date(2025, 1, 1), date(2025, 12, 31)
COUNTS, BY_TYPE, BY_DAY, SERIES = (
    "/analytics/event-counts",
    "/analytics/event-counts-by-type",
    "/analytics/event-counts-by-day",
    "/analytics/timeseries",
)
# Fixed offsets for date-time bounds: whole, half and quarter hours, both extremes.
OFFSET_MINUTES = (0, 60, -300, 330, 345, 765, -210, 840, -720, 525)
START_FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?[+-]\d{2}:\d{2}")
START_FORMAT_ODD = re.compile(START_FORMAT.pattern + r"(:\d{2})?")


# --- data ---------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def year_rows() -> tuple[EventRow, ...]:
    """About 3,000 events in 2025 (a few just outside it), in timestamp order."""
    rng = random.Random(2025)
    instants: list[datetime] = []
    for zone in ZONES:
        for change in transitions(zone, YEAR_LO, YEAR_HI):
            for k in range(-12, 13):  # every quarter hour within 3 hours of the change
                edge = change + k * QUARTER
                instants += [edge - TICK, edge, edge + TICK]
        for month in units_between(zone, "month", YEAR_LO, YEAR_HI):
            instants += [month.start - TICK, month.start, month.start + TICK]
    span_us = int((YEAR_HI - YEAR_LO + timedelta(days=2)).total_seconds() * 1e6)
    for _ in range(2000):
        moment = YEAR_LO - timedelta(days=1) + timedelta(microseconds=rng.randrange(span_us))
        if rng.random() < 0.4:  # onto a 15-minute boundary, or 1 µs either side of it
            moment = moment - (moment - YEAR_LO) % QUARTER + rng.choice((-1, 0, 1)) * TICK
        instants.append(moment)
    instants.sort()
    return tuple(
        row(rng.choice(EVENT_TYPES), ts(m), user=f"u{i % 50}") for i, m in enumerate(instants)
    )


async def seed(client: TestClient, rows: tuple[EventRow, ...] | list[EventRow]) -> None:
    for i in range(0, len(rows), 500):  # several transactions, like real ingest
        await append(client, rows[i : i + 500])


@pytest.fixture
async def year_log(client: TestClient) -> TestClient:
    await seed(client, year_rows())
    return client


# --- ranges -------------------------------------------------------------------------------


def make_range(
    zone: str,
    at: datetime,
    length: timedelta,
    kinds: tuple[str, str],
    offset_minutes: int = 0,
    whole_seconds: bool = False,
) -> Range:
    """A range from ``at`` lasting ``length``; each side is a local date (``"date"``) or a
    date-time with a fixed offset (``"instant"``)."""
    end_at = at + length
    if kinds[0] == "date":
        day = at.astimezone(ZoneInfo(zone)).date()
        start, lo = day.isoformat(), local_day(zone, day).start
    else:
        at = at.replace(microsecond=0) if whole_seconds else at
        start, lo = _instant_text(at, offset_minutes), at
    if kinds[1] == "date":
        day = end_at.astimezone(ZoneInfo(zone)).date()
        end, hi = day.isoformat(), local_day(zone, day).end
    else:
        end_at = end_at.replace(microsecond=0) if whole_seconds else end_at
        end, hi = _instant_text(end_at, offset_minutes), end_at + TICK
    return Range(zone, start, end, lo, hi)


def _instant_text(moment: datetime, offset_minutes: int) -> str:
    local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    text = local.isoformat(timespec="microseconds" if moment.microsecond else "seconds")
    return text.removesuffix("+00:00") + "Z" if offset_minutes == 0 else text


def random_range(rng: random.Random, zone: str, max_days: float = 366) -> Range:
    while True:
        span_us = int((YEAR_HI - YEAR_LO).total_seconds() * 1e6)
        at = YEAR_LO + timedelta(microseconds=rng.randrange(span_us))
        if rng.random() < 0.3:  # onto a 15-minute boundary, or 1 µs either side of it
            at = at - (at - YEAR_LO) % QUARTER + rng.choice((-1, 0, 1)) * TICK
        length = timedelta(days=rng.random() * max_days) * rng.random()
        kinds = (rng.choice(("date", "instant")), rng.choice(("date", "instant")))
        r = make_range(
            zone, at, length, kinds, rng.choice(OFFSET_MINUTES), whole_seconds=rng.random() < 0.3
        )
        if (
            r.lo < r.hi
            and r.hi <= YEAR_HI + timedelta(days=1)
            and r.lo >= YEAR_LO - timedelta(days=1)
        ):
            return r


# --- checks: one per endpoint, each against the reference -----------------------------------


async def answer(client: TestClient, path: str, params: dict[str, str]) -> Any:
    response = await client.get(path, params=params)
    text = await response.text()
    assert response.status == 200, f"GET {path} {params}: {response.status} {text}"
    return orjson.loads(text)


async def check_counts(client: TestClient, db: Database, r: Range, event_type: str | None) -> None:
    params = r.params(tz=r.zone, event_type=event_type)
    got = (await answer(client, COUNTS, params))["total_events"]
    want = counts(db, r.lo, r.hi)
    assert got == (want[event_type] if event_type else sum(want.values())), params


async def check_by_type(client: TestClient, db: Database, r: Range) -> None:
    params = r.params(tz=r.zone)
    got = await answer(client, BY_TYPE, params)
    assert got == {t: n for t, n in counts(db, r.lo, r.hi).items() if n}, params


async def check_by_day(
    client: TestClient,
    db: Database,
    r: Range,
    event_type: str | None,
    step: timedelta = QUARTER,
) -> list[dict[str, Any]]:
    params = r.params(tz=r.zone, event_type=event_type)
    days = (await answer(client, BY_DAY, params))["days"]
    types = (event_type,) if event_type else EVENT_TYPES
    for entry in days:
        assert set(entry) >= {"date", *EVENT_TYPES}, (params, entry)  # each type present
    got = [(d["date"], {t: d[t] for t in types}) for d in days]
    want = [(day, {t: c[t] for t in types}) for day, c in expected_by_day(db, r, step)]
    assert got == want, params
    return days


async def check_series(
    client: TestClient,
    db: Database,
    r: Range,
    interval: str,
    event_type: str | None,
    step: timedelta = QUARTER,
) -> list[dict[str, Any]]:
    params = r.params(tz=r.zone, interval=interval, event_type=event_type)
    body = await answer(client, SERIES, params)
    assert body["interval"] == interval and body["tz"] == r.zone, (params, body.keys())
    types = (event_type,) if event_type else EVENT_TYPES
    buckets = body["buckets"]
    for bucket in buckets:  # zero-filled, each type present (only the filtered one)
        assert set(bucket) == {"start", *types}, (params, bucket)
    want = expected_series(db, r, interval, step)
    got = [
        (_start_as_unit(b["start"], want[i] if i < len(want) else None, r.zone), b)
        for i, b in enumerate(buckets)
    ]
    assert [(start, {t: b[t] for t in types}) for start, b in got] == [
        (local_iso(ref.unit.start, r.zone), {t: ref.counts[t] for t in types}) for ref in want
    ], params
    return buckets


def _start_as_unit(got: str, ref: Bucket | None, zone: str) -> str:
    """``got`` unchanged unless it is an accepted other spelling of the unit's start: the
    range's first instant for a cut bucket, and for an offset with seconds (local mean
    time before 1980, which ``+HH:MM`` cannot spell) any exact ``±HH:MM:SS`` spelling."""
    if ref is None or got == local_iso(ref.unit.start, zone):
        return got
    try:
        at = datetime.fromisoformat(got)
    except ValueError:
        return got
    offset = at.astimezone(ZoneInfo(zone)).utcoffset()
    if at.utcoffset() != offset:
        return got  # the right instant at the wrong offset is still wrong
    odd = offset is not None and offset.total_seconds() % 60 != 0
    if not (START_FORMAT if not odd else START_FORMAT_ODD).fullmatch(got):
        return got
    if (ref.cut and at == ref.cut_start) or (odd and at == ref.unit.start):
        return local_iso(ref.unit.start, zone)
    return got


async def check_everything(client: TestClient, db: Database, r: Range, rng: random.Random) -> None:
    """Every endpoint on one range, with and without a random event_type."""
    event_type = rng.choice(EVENT_TYPES)
    await check_counts(client, db, r, None)
    await check_counts(client, db, r, event_type)
    await check_by_type(client, db, r)
    await check_by_day(client, db, r, rng.choice((None, event_type)))
    for interval in INTERVALS:
        if interval == "hour" and r.hi - r.lo > timedelta(days=12):
            continue
        await check_series(client, db, r, interval, rng.choice((None, event_type)))


# --- the reference, checked by hand --------------------------------------------------------


def _hours(day: str, offset: str, hours: range) -> list[str]:
    return [f"{day}T{h:02d}:00:00{offset}" for h in hours]


# (zone, local day, its first instant and the first instant after it (UTC), its hour buckets' starts)
HAND_DAYS = [
    ("UTC", "2025-05-01", "2025-05-01T00:00Z", "2025-05-02T00:00Z",
     _hours("2025-05-01", "+00:00", range(24))),
    ("Asia/Kathmandu", "2025-05-01", "2025-04-30T18:15Z", "2025-05-01T18:15Z",
     _hours("2025-05-01", "+05:45", range(24))),
    ("Asia/Kolkata", "2025-01-01", "2024-12-31T18:30Z", "2025-01-01T18:30Z",
     _hours("2025-01-01", "+05:30", range(24))),
    ("Europe/Berlin", "2025-03-30", "2025-03-29T23:00Z", "2025-03-30T22:00Z",
     [*_hours("2025-03-30", "+01:00", range(2)), *_hours("2025-03-30", "+02:00", range(3, 24))]),
    ("Europe/Berlin", "2025-10-26", "2025-10-25T22:00Z", "2025-10-26T23:00Z",
     [*_hours("2025-10-26", "+02:00", range(3)), *_hours("2025-10-26", "+01:00", range(2, 24))]),
    ("America/New_York", "2025-03-09", "2025-03-09T05:00Z", "2025-03-10T04:00Z",
     [*_hours("2025-03-09", "-05:00", range(2)), *_hours("2025-03-09", "-04:00", range(3, 24))]),
    ("America/New_York", "2025-11-02", "2025-11-02T04:00Z", "2025-11-03T05:00Z",
     [*_hours("2025-11-02", "-04:00", range(2)), *_hours("2025-11-02", "-05:00", range(1, 24))]),
    ("America/St_Johns", "2025-03-09", "2025-03-09T03:30Z", "2025-03-10T02:30Z",
     [*_hours("2025-03-09", "-03:30", range(2)), *_hours("2025-03-09", "-02:30", range(3, 24))]),
    ("America/St_Johns", "2025-11-02", "2025-11-02T02:30Z", "2025-11-03T03:30Z",
     [*_hours("2025-11-02", "-02:30", range(2)), *_hours("2025-11-02", "-03:30", range(1, 24))]),
    # Lord Howe: +11:00 in summer, +10:30 in winter; the clock moves by 30 minutes at 02:00.
    ("Australia/Lord_Howe", "2025-04-06", "2025-04-05T13:00Z", "2025-04-06T13:30Z",
     [*_hours("2025-04-06", "+11:00", range(2)), "2025-04-06T01:30:00+10:30",
      *_hours("2025-04-06", "+10:30", range(2, 24))]),
    ("Australia/Lord_Howe", "2025-10-05", "2025-10-04T13:30Z", "2025-10-05T13:00Z",
     [*_hours("2025-10-05", "+10:30", range(2)), "2025-10-05T02:30:00+11:00",
      *_hours("2025-10-05", "+11:00", range(3, 24))]),
    # Chatham: +13:45 in summer, +12:45 in winter; the change is at 03:45 / 02:45 local.
    ("Pacific/Chatham", "2025-04-06", "2025-04-05T10:15Z", "2025-04-06T11:15Z",
     [*_hours("2025-04-06", "+13:45", range(4)), "2025-04-06T02:45:00+12:45",
      *_hours("2025-04-06", "+12:45", range(3, 24))]),
    ("Pacific/Chatham", "2025-09-28", "2025-09-27T11:15Z", "2025-09-28T10:15Z",
     [*_hours("2025-09-28", "+12:45", range(3)), "2025-09-28T03:45:00+13:45",
      *_hours("2025-09-28", "+13:45", range(4, 24))]),
]  # fmt: skip


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize(("zone", "day", "first", "after", "hours"), HAND_DAYS)
def test_the_reference_agrees_with_hand_computed_days(
    zone: str, day: str, first: str, after: str, hours: list[str]
) -> None:
    unit = local_day(zone, date.fromisoformat(day))
    assert (unit.start, unit.end) == (_utc(first), _utc(after))
    r = Range(zone, day, day, unit.start, unit.end)
    starts = [local_iso(u.start, zone) for u in units_between(zone, "hour", r.lo, r.hi)]
    assert starts == hours


def test_the_reference_agrees_with_hand_computed_weeks_months_and_changes() -> None:
    week = unit_at("Europe/Berlin", "week", _utc("2025-01-01T12:00Z"))
    assert week.key == (2025, 1)
    assert (week.start, week.end) == (_utc("2024-12-29T23:00Z"), _utc("2025-01-05T23:00Z"))
    march = unit_at("Asia/Kathmandu", "month", _utc("2025-03-15T00:00Z"))
    assert (march.start, march.end) == (_utc("2025-02-28T18:15Z"), _utc("2025-03-31T18:15Z"))
    october = unit_at("Pacific/Chatham", "month", _utc("2025-10-15T00:00Z"))
    assert local_iso(october.start, "Pacific/Chatham") == "2025-10-01T00:00:00+13:45"
    assert october.end - october.start == timedelta(days=31)
    april = unit_at("Australia/Lord_Howe", "month", _utc("2025-04-15T00:00Z"))
    assert april.end - april.start == timedelta(days=30, minutes=30)
    assert transitions("Australia/Lord_Howe", YEAR_LO, YEAR_HI) == [
        _utc("2025-04-05T15:00Z"),
        _utc("2025-10-04T15:30Z"),
    ]
    assert transitions("Asia/Kathmandu", YEAR_LO, YEAR_HI) == []
    # A date-time bound is inclusive: the range ends 1 µs after it.
    r = make_range(
        "UTC", _utc("2025-05-01T10:00Z"), timedelta(hours=1), ("instant", "instant"), 345
    )
    assert (r.start, r.end) == ("2025-05-01T15:45:00+05:45", "2025-05-01T16:45:00+05:45")
    assert r.hi == _utc("2025-05-01T11:00Z") + TICK
    assert (
        make_range("UTC", r.lo, timedelta(0), ("instant", "instant")).start
        == "2025-05-01T10:00:00Z"
    )


def test_the_reference_counts_the_log(tmp_path) -> None:
    db = sqlite3.connect(tmp_path / "log.db")
    db.execute("CREATE TABLE events (event_type TEXT, timestamp TEXT)")
    day = local_day("Asia/Kathmandu", date(2025, 5, 1))
    stamps = [day.start - TICK, day.start, day.end - TICK, day.end]
    db.executemany("INSERT INTO events VALUES ('view', ?)", [(ts(s),) for s in stamps])
    assert counts(db, day.start, day.end) == {"view": 2, "click": 0, "location": 0}
    r = Range("Asia/Kathmandu", "2025-05-01", "2025-05-01", day.start, day.end)
    assert expected_by_day(db, r) == [("2025-05-01", {"view": 2, "click": 0, "location": 0})]
    series = expected_series(db, r, "hour")
    assert [b.counts["view"] for b in series] == [1] + [0] * 22 + [1]
    db.close()


# --- 1. exactness in zones ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("zone", ZONES)
async def test_every_endpoint_in_a_zone_equals_the_log_for_random_ranges(
    year_log: TestClient, db: Database, zone: str
) -> None:
    rng = random.Random(f"ranges {zone}")
    whole_year = date_range(zone, FIRST_DAY, LAST_DAY)
    await check_everything(year_log, db, whole_year, rng)
    days = await check_by_day(year_log, db, whole_year, None)
    assert len(days) == 365 and sum(d[t] for d in days for t in EVENT_TYPES) > 3000
    for _ in range(25):
        await check_everything(year_log, db, random_range(rng, zone), rng)
    for _ in range(15):  # short ones: hour series, ranges inside one bucket
        await check_everything(year_log, db, random_range(rng, zone, max_days=3), rng)


@pytest.mark.slow
@pytest.mark.parametrize("zone", DST_ZONES)
async def test_every_dst_change_day_is_exact_in_every_endpoint(
    year_log: TestClient, db: Database, zone: str
) -> None:
    rng = random.Random(f"dst {zone}")
    changes = transitions(zone, YEAR_LO, YEAR_HI)
    assert len(changes) == 2
    for change in changes:
        tz = ZoneInfo(zone)
        days = {(change - TICK).astimezone(tz).date(), change.astimezone(tz).date()}
        for day in sorted(days):
            r = date_range(zone, day, day)
            assert r.hi - r.lo != timedelta(hours=24)  # the reference sees the change
            await check_everything(year_log, db, r, rng)
            around = date_range(zone, day - timedelta(days=1), day + timedelta(days=1))
            by_day = await check_by_day(year_log, db, around, None)
            assert [d["date"] for d in by_day][1] == day.isoformat()
            await check_series(year_log, db, around, "hour", None)
            await check_series(year_log, db, around, "day", rng.choice(EVENT_TYPES))
        # Date-time bounds a few quarter hours either side of the change, ±1 µs.
        for _ in range(6):
            at = change + rng.randrange(-8, 8) * QUARTER + rng.choice((-1, 0, 1)) * TICK
            length = rng.randrange(0, 12) * QUARTER + rng.choice((-1, 0, 1)) * TICK
            r = make_range(
                zone, at, abs(length), ("instant", "instant"), rng.choice(OFFSET_MINUTES)
            )
            await check_everything(year_log, db, r, rng)


@pytest.mark.parametrize(("zone", "day", "first", "after", "hours"), HAND_DAYS)
async def test_hour_buckets_follow_the_local_clock(
    year_log: TestClient,
    db: Database,
    zone: str,
    day: str,
    first: str,
    after: str,
    hours: list[str],
) -> None:
    """Repeated hours are two buckets, each with its own offset; an hour the clock skips
    into keeps the part that exists; every start is the bucket's first local instant."""
    r = Range(zone, day, day, _utc(first), _utc(after))
    buckets = await check_series(year_log, db, r, "hour", None)
    assert [b["start"] for b in buckets] == hours
    (entry,) = await check_by_day(year_log, db, r, None)
    assert entry["date"] == day
    (whole,) = await check_series(year_log, db, r, "day", None)
    assert whole["start"] == hours[0]


async def test_week_and_month_buckets_are_local_calendar_units_cut_to_the_range(
    year_log: TestClient, db: Database
) -> None:
    zone = "Asia/Kathmandu"
    # Thursday 2025-05-01 to Tuesday 2025-06-10: weeks of Apr 28 (cut) .. Jun 9 (cut).
    r = date_range(zone, date(2025, 5, 1), date(2025, 6, 10))
    weeks = await check_series(year_log, db, r, "week", None)
    assert len(weeks) == 7
    assert [b["start"] for b in weeks[1:]] == [
        f"2025-{m:02d}-{d:02d}T00:00:00+05:45"
        for m, d in ((5, 5), (5, 12), (5, 19), (5, 26), (6, 2), (6, 9))
    ]
    assert weeks[0]["start"] in {"2025-04-28T00:00:00+05:45", "2025-05-01T00:00:00+05:45"}
    r = date_range("America/St_Johns", date(2025, 2, 14), date(2025, 4, 2))
    months = await check_series(year_log, db, r, "month", "click")
    assert [b["start"] for b in months[1:]] == [
        "2025-03-01T00:00:00-03:30",
        "2025-04-01T00:00:00-02:30",
    ]
    # ISO weeks across a year end: 2025-12-29 is the Monday of 2026-W01.
    r = date_range("Pacific/Chatham", date(2025, 12, 22), date(2025, 12, 31))
    weeks = await check_series(year_log, db, r, "week", None)
    assert [b["start"] for b in weeks] == [
        "2025-12-22T00:00:00+13:45",
        "2025-12-29T00:00:00+13:45",
    ]


# --- 2. validation and bound rules --------------------------------------------------------

BAD_ZONES = [
    "Mars/Olympus",
    "Europe/Berlin ",
    " Europe/Berlin",
    "Europe/Berlin\n",
    "",
    "../etc/passwd",
    "/etc/localtime",
    "Europe/../UTC",
    "Europe//Berlin",
    "Europe/Berlin\x00",
    "UTC/",
    ".",
    "Europe/" + "x" * 300,
    "A" * 5000,
    "+05:45",
]
ALL_ENDPOINTS = [
    (COUNTS, {}),
    (BY_TYPE, {}),
    (BY_DAY, {}),
    (SERIES, {"interval": "day"}),
]


@pytest.mark.parametrize("tz", BAD_ZONES)
@pytest.mark.parametrize(("path", "extra"), ALL_ENDPOINTS)
async def test_an_unknown_zone_is_a_400_naming_tz(
    client: TestClient, path: str, extra: dict[str, str], tz: str
) -> None:
    params = {"tz": tz, "start_date": "2025-05-01", "end_date": "2025-05-02", **extra}
    body = await assert_problem(await client.get(path, params=params), 400, "tz")
    for leak in ("Traceback", "/usr/share/zoneinfo", "site-packages"):  # no server paths
        assert leak not in body["detail"]


@pytest.mark.parametrize(("path", "extra"), ALL_ENDPOINTS)
async def test_tz_given_twice_is_a_400(
    client: TestClient, path: str, extra: dict[str, str]
) -> None:
    query = "&".join(f"{k}={v}" for k, v in extra.items())
    response = await client.get(f"{path}?tz=UTC&tz=UTC&{query}")
    await assert_problem(response, 400, "tz")


@pytest.mark.parametrize(
    "interval",
    [
        "",
        "Hour",
        "HOUR",
        "hours",
        " hour",
        "hour ",
        "hour\n",
        "minute",
        "year",
        "quarter",
        "1h",
        "day,week",
    ],
)
async def test_interval_is_strict(client: TestClient, interval: str) -> None:
    response = await client.get(SERIES, params={"interval": interval})
    await assert_problem(response, 400, "interval")


async def test_interval_is_required_and_only_on_the_time_series(client: TestClient) -> None:
    await assert_problem(await client.get(SERIES), 400, "interval")
    await assert_problem(await client.get(f"{SERIES}?interval=day&interval=day"), 400, "interval")
    for path in (COUNTS, BY_TYPE, BY_DAY):
        await assert_problem(await client.get(path, params={"interval": "day"}), 400, "interval")
    # Every problem at once; a typo is not silently ignored.
    response = await client.get(
        SERIES, params={"interval": "days", "tz": "Mars/Olympus", "bucket": "1"}
    )
    await assert_problem(response, 400, "interval", "tz", "bucket")
    response = await client.get(SERIES, params={"interval": "day", "start_date": "2025-02-30"})
    await assert_problem(response, 400, "start_date")
    params = {"interval": "day", "start_date": "2025-05-02", "end_date": "2025-05-01"}
    await assert_problem(await client.get(SERIES, params=params), 400, "start_date")


async def test_more_than_10000_buckets_is_a_400(client: TestClient) -> None:
    await seed(client, [row("view", "2025-03-01T12:00:00.000000Z")])
    first = datetime(2025, 1, 1, tzinfo=UTC)
    # UTC: 10,000 hours are fine, 1 µs more is a 10,001st bucket.
    ok = {"interval": "hour", "start_date": first.isoformat(), "tz": "UTC"}
    last = first + timedelta(hours=10_000) - TICK
    body = await answer(client, SERIES, {**ok, "end_date": last.isoformat()})
    assert len(body["buckets"]) == 10_000
    assert body["buckets"][-1]["start"] == local_iso(
        last.replace(microsecond=0, minute=0, second=0), "UTC"
    )
    assert sum(b["view"] for b in body["buckets"]) == 1
    response = await client.get(SERIES, params={**ok, "end_date": (last + TICK).isoformat()})
    await assert_problem(response, 400)
    # Berlin: the 10,000 local hours from 2025-01-01 include two DST changes a year.
    zone = "Europe/Berlin"
    lo = local_day(zone, date(2025, 1, 1)).start
    hours = units_between(zone, "hour", lo, lo + timedelta(hours=10_010))
    assert len(hours) > 10_001
    params = {"interval": "hour", "tz": zone, "start_date": "2025-01-01"}
    body = await answer(
        client, SERIES, {**params, "end_date": (hours[9_999].end - TICK).isoformat()}
    )
    assert len(body["buckets"]) == 10_000
    assert body["buckets"][-1]["start"] == local_iso(hours[9_999].start, zone)
    response = await client.get(
        SERIES, params={**params, "end_date": hours[10_000].start.isoformat()}
    )
    await assert_problem(response, 400)
    for interval, start, end in (
        ("day", "2000-01-01", (date(2000, 1, 1) + timedelta(days=10_000)).isoformat()),
        ("week", "1800-01-01", "2025-12-31"),
        ("month", "1000-01-01", "2025-12-31"),
        ("hour", "0001-01-01", "9999-12-31"),
    ):
        params = {
            "interval": interval,
            "start_date": start,
            "end_date": end,
            "tz": "Asia/Kathmandu",
        }
        await assert_problem(await client.get(SERIES, params=params), 400)
    params = {"interval": "day", "start_date": "2000-01-01", "tz": "Asia/Kathmandu"}
    params["end_date"] = (date(2000, 1, 1) + timedelta(days=9_999)).isoformat()
    assert len((await answer(client, SERIES, params))["buckets"]) == 10_000


@pytest.mark.parametrize("tz", ["Asia/Kathmandu", "Pacific/Kiritimati", "Etc/GMT+12", "UTC"])
async def test_the_ends_of_the_calendar_are_a_200_or_a_400_in_every_zone(
    client: TestClient, tz: str
) -> None:
    """Local 0001-01-01 begins before the first UTC instant east of Greenwich, and local
    9999-12-31 ends after the last one west of it: an answer or a 400, never a 500."""
    await seed(client, [row("view", "0001-01-01T00:00:00.000000Z")])
    for start, end in (
        ("0001-01-01", "0001-01-01"),
        ("0001-01-01", "0001-01-02"),
        ("9999-12-31", "9999-12-31"),
        ("9999-12-30", "9999-12-31"),
        ("0001-01-01T00:00:00Z", "0001-01-01T05:00:00Z"),
        ("9999-12-31T20:00:00Z", "9999-12-31T23:59:59.999999Z"),
    ):
        for path, extra in (*ALL_ENDPOINTS, *((SERIES, {"interval": i}) for i in INTERVALS)):
            params = {"start_date": start, "end_date": end, "tz": tz, **extra}
            response = await client.get(path, params=params)
            assert response.status in (200, 400), (path, params, await response.text())


async def test_a_range_that_ends_at_the_end_of_the_calendar_lists_every_bucket(
    client: TestClient,
) -> None:
    """An ``end_date`` whose local day ends past 9999-12-31 UTC (its next local midnight
    cannot be written) still ends the series there: it is not "no end_date" (found by an
    outside probe: these answered one bucket, or ran only up to now)."""
    await seed(client, [row("view", "2025-05-01T12:00:00.000000Z")])
    cases = (
        ({"interval": "hour", "tz": "Asia/Tokyo"}, "9999-12-31", "9999-12-31", 24),
        ({"interval": "week", "tz": "UTC"}, "9999-12-01", "9999-12-31", 5),
        ({"interval": "month", "tz": "Pacific/Kiritimati"}, "9999-01-01", "9999-12-31", 12),
        ({"interval": "day", "tz": "America/New_York"}, "9999-12-29", "9999-12-31", 3),
        ({"interval": "hour", "tz": "UTC"}, "9999-12-31T22:00:00Z", "9999-12-31T23:59:59.999Z", 2),
    )
    for extra, start, end, buckets in cases:
        params = {**extra, "start_date": start, "end_date": end}
        body = await answer(client, SERIES, params)
        assert len(body["buckets"]) == buckets, (params, body["buckets"][:3])
    # From 2025 to the end of the calendar is far more than 10,000 months: a 400, not
    # a series that silently stops at now.
    params = {"interval": "month", "start_date": "2025-01-01", "end_date": "9999-12-31"}
    await assert_problem(await client.get(SERIES, params=params), 400, "interval")
    # A start before the calendar's first instant is the calendar's start, not "no start".
    params = {"interval": "month", "start_date": "0001-01-01T00:00:00+14:00"}
    await assert_problem(
        await client.get(SERIES, params={**params, "end_date": "2025-01-01"}), 400, "interval"
    )


async def test_a_local_day_that_does_not_exist_does_not_end_the_series(
    client: TestClient,
) -> None:
    """Samoa skipped 2011-12-30 (UTC-10 to UTC+14): the day series goes on past it, and
    every event is in a bucket (found by an outside probe: the series stopped at 12-29)."""
    zone = "Pacific/Apia"
    rows = [
        row("view", "2011-12-29T12:00:00.000000Z"),  # 12-29 02:00 local
        row("click", "2011-12-30T12:00:00.000000Z"),  # 12-31 02:00 local
        row("click", "2012-01-01T12:00:00.000000Z"),  # 2012-01-02 02:00 local
    ]
    await seed(client, rows)
    params = {"interval": "day", "tz": zone, "start_date": "2011-12-29", "end_date": "2012-01-02"}
    body = await answer(client, SERIES, params)
    dates = [b["start"][:10] for b in body["buckets"]]
    assert dates == ["2011-12-29", "2011-12-31", "2012-01-01", "2012-01-02"], dates
    assert sum(b["view"] + b["click"] for b in body["buckets"]) == 3
    by_day = await answer(client, BY_DAY, {k: v for k, v in params.items() if k != "interval"})
    assert sum(d["view"] + d["click"] for d in by_day["days"]) == 3


async def test_a_date_time_bound_is_the_same_instant_whatever_tz_says(
    year_log: TestClient, db: Database
) -> None:
    rng = random.Random(11)
    for _ in range(12):
        r = random_range(rng, "UTC", max_days=40)
        r = make_range(
            "UTC", r.lo, r.hi - r.lo - TICK, ("instant", "instant"), rng.choice(OFFSET_MINUTES)
        )
        want = counts(db, r.lo, r.hi)
        for zone in ZONES:
            params = r.params(tz=zone)
            got = (await answer(year_log, COUNTS, params))["total_events"]
            assert got == sum(want.values()), params
            assert await answer(year_log, BY_TYPE, params) == {t: n for t, n in want.items() if n}
            await check_by_day(year_log, db, Range(zone, r.start, r.end, r.lo, r.hi), None)


async def test_the_default_zone_is_utc(year_log: TestClient, db: Database) -> None:
    rng = random.Random(12)
    for r in (date_range("UTC", date(2025, 3, 1), date(2025, 4, 30)), random_range(rng, "UTC", 9)):
        for path, extra in (
            *ALL_ENDPOINTS,
            (SERIES, {"interval": "hour"}),
            (SERIES, {"interval": "week"}),
        ):
            plain = await answer(year_log, path, r.params(**extra))
            assert plain == await answer(year_log, path, r.params(tz="UTC", **extra)), (path, r)
        await check_everything(year_log, db, r, rng)
    body = await answer(year_log, SERIES, {"interval": "month", "start_date": "2025-01-01"})
    assert body["tz"] == "UTC"


async def test_zone_links_and_fixed_zones_are_accepted(year_log: TestClient, db: Database) -> None:
    """Any IANA name works, links included; a link answers like its target."""
    for link, target in (
        ("Asia/Calcutta", "Asia/Kolkata"),
        ("US/Eastern", "America/New_York"),
        ("Etc/UTC", "UTC"),
    ):
        r = date_range(target, date(2025, 3, 8), date(2025, 3, 10))
        for path, extra in (*ALL_ENDPOINTS, (SERIES, {"interval": "hour"})):
            got = await answer(year_log, path, r.params(tz=link, **extra))
            want = await answer(year_log, path, r.params(tz=target, **extra))
            if path == SERIES:  # the name as given, or its target
                assert got.pop("tz") in (link, target) and want.pop("tz") == target
            assert got == want, (link, path)
    for zone in ("Etc/GMT+5", "Etc/GMT-14", "EST5EDT", "Asia/Kathmandu"):
        await check_everything(
            year_log, db, date_range(zone, date(2025, 3, 8), date(2025, 3, 10)), random.Random(zone)
        )


async def test_the_openapi_document_describes_tz_and_the_time_series(client: TestClient) -> None:
    doc = await answer(client, "/openapi.json", {})
    for path in (COUNTS, BY_TYPE, BY_DAY, SERIES):
        names = {p["name"] for p in doc["paths"][path]["get"].get("parameters", [])}
        assert "tz" in names, path
    names = {p["name"] for p in doc["paths"][SERIES]["get"]["parameters"]}
    assert names >= {"interval", "start_date", "end_date", "event_type", "tz"}


# --- 3. property: any zone, any range -----------------------------------------------------

# IANA names; "localtime" is this machine's /etc/localtime, not a zone name.
ANY_ZONE = sorted(available_timezones() - {"localtime"})
YEAR_US = int((YEAR_HI - YEAR_LO).total_seconds() * 1e6)


@st.composite
def queries(
    draw: st.DrawFn,
) -> tuple[str, datetime, timedelta, tuple[str, str], int, bool, str, str | None]:
    endpoint = draw(
        st.sampled_from([COUNTS, BY_TYPE, BY_DAY, *(f"{SERIES}?{i}" for i in INTERVALS)])
    )
    at = YEAR_LO + timedelta(microseconds=draw(st.integers(0, YEAR_US)))
    if draw(st.booleans()):  # onto a 15-minute boundary, or 1 µs either side of it
        at = at - (at - YEAR_LO) % QUARTER + draw(st.sampled_from((-1, 0, 1))) * TICK
    max_days = 10 if endpoint.endswith("hour") else 360
    length = timedelta(microseconds=draw(st.integers(0, max_days * 86_400_000_000)))
    kinds = (draw(st.sampled_from(("date", "instant"))), draw(st.sampled_from(("date", "instant"))))
    return (
        draw(st.sampled_from(ANY_ZONE)),
        at,
        length,
        kinds,
        draw(st.sampled_from(OFFSET_MINUTES)),
        draw(st.booleans()),
        endpoint,
        draw(st.none() | st.sampled_from(EVENT_TYPES)),
    )


@pytest.mark.slow
@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
    # No shrinking: an example is one request already, and each new zone costs the
    # reference a year of conversions; shrinking across 600 zones takes minutes.
    phases=[Phase.explicit, Phase.generate],
)
@given(query=queries())
async def test_any_zone_any_range_any_endpoint_equals_the_log(
    client: TestClient, db: Database, query: tuple
) -> None:
    """Random IANA zones (all of them are 15-minute zones in 2025), random ranges, random
    endpoints: the answer equals the reference."""
    if stored(db) == 0:  # one database for all examples
        await seed(client, year_rows())
    zone, at, length, kinds, offset, whole_seconds, endpoint, event_type = query
    r = make_range(zone, at, length, kinds, offset, whole_seconds)
    if endpoint == COUNTS:
        await check_counts(client, db, r, event_type)
    elif endpoint == BY_TYPE:
        await check_by_type(client, db, r)
    elif endpoint == BY_DAY:
        await check_by_day(client, db, r, event_type)
    else:
        await check_series(client, db, r, endpoint.split("?")[1], event_type)


# Zones whose offset was not a multiple of 15 minutes (local mean times), around a change:
# (zone, first local day, days, grid step that puts every boundary on the grid).
ODD_OFFSETS = [
    ("Europe/Amsterdam", date(1935, 5, 14), 3, timedelta(seconds=4)),  # +00:19:32 -> +01:19:32
    ("Africa/Monrovia", date(1972, 1, 6), 2, timedelta(seconds=30)),  # -00:44:30 -> +00:00
    ("America/St_Johns", date(1935, 3, 29), 3, timedelta(seconds=4)),  # -03:30:52 -> -03:30
    ("Europe/Dublin", date(1916, 9, 30), 3, timedelta(seconds=9)),  # +00:34:39 -> +00:00
    ("Pacific/Kiritimati", date(1979, 9, 30), 3, timedelta(minutes=5)),  # -10:40 -> -10:00
]


@pytest.mark.slow
@pytest.mark.parametrize(("zone", "first", "days", "step"), ODD_OFFSETS)
async def test_zones_with_historic_odd_offsets_are_still_exact(
    client: TestClient, db: Database, zone: str, first: date, days: int, step: timedelta
) -> None:
    """The contract says exact in every zone: parts of a range that no 15-minute bucket
    covers whole come from the log."""
    rng = random.Random(zone)
    last = first + timedelta(days=days - 1)
    r = date_range(zone, first, last, step)
    instants = [
        r.lo + timedelta(microseconds=rng.randrange(int((r.hi - r.lo) / TICK))) for _ in range(300)
    ]
    for unit in units_between(zone, "hour", r.lo, r.hi, step):
        instants += [unit.start - TICK, unit.start, unit.start + TICK]
    await seed(client, [row(rng.choice(EVENT_TYPES), ts(m)) for m in sorted(instants)])

    await check_counts(client, db, r, None)
    await check_by_type(client, db, r)
    await check_by_day(client, db, r, None, step)
    await check_series(client, db, r, "hour", None, step)
    await check_series(client, db, r, "day", "view", step)
    for day in range(days):
        one = date_range(zone, first + timedelta(days=day), first + timedelta(days=day), step)
        await check_counts(client, db, one, "click")
    for _ in range(10):
        at = r.lo + timedelta(microseconds=rng.randrange(int((r.hi - r.lo) / TICK)))
        length = timedelta(microseconds=rng.randrange(int(timedelta(hours=30) / TICK)))
        cut = make_range("UTC", at, length, ("instant", "instant"), rng.choice(OFFSET_MINUTES))
        cut = Range(zone, cut.start, cut.end, cut.lo, cut.hi)
        await check_counts(client, db, cut, None)
        await check_series(client, db, cut, "hour", None, step)


# --- 4. default ranges --------------------------------------------------------------------


def _now_rows(now: datetime) -> list[EventRow]:
    ago = [timedelta(minutes=1), timedelta(hours=2), timedelta(hours=30), timedelta(days=20),
           timedelta(days=45), timedelta(days=100), timedelta(days=200), timedelta(days=400)]  # fmt: skip
    return [row(t, ts(now - a)) for a in ago for t in EVENT_TYPES]


async def test_by_day_defaults_to_the_last_30_local_days_up_to_today(
    client: TestClient, db: Database
) -> None:
    await seed(client, _now_rows(datetime.now(UTC)))
    # At any moment, Kiritimati (+14) and Pago Pago (-11) are on different dates.
    for zone in ("Pacific/Kiritimati", "Pacific/Pago_Pago", "Asia/Kathmandu", "UTC"):
        for _ in range(3):  # again if local midnight passed during the request
            today = datetime.now(ZoneInfo(zone)).date()
            days = (await answer(client, BY_DAY, {"tz": zone}))["days"]
            if datetime.now(ZoneInfo(zone)).date() == today:
                break
        first = today - timedelta(days=29)
        assert [d["date"] for d in days] == [
            (first + timedelta(days=i)).isoformat() for i in range(30)
        ]
        await check_by_day(client, db, date_range(zone, first, today), None)


async def test_by_day_defaults_to_the_30_days_up_to_the_newest_local_day_with_events(
    client: TestClient, db: Database
) -> None:
    newest = "2025-03-10T23:30:00.000000Z"  # long before "today"
    rows = [row("view", newest), row("click", "2025-02-09T00:00:00.000000Z")]
    rows += [row("location", f"2025-02-{d:02d}T18:14:59.999999Z") for d in range(1, 28)]
    await seed(client, rows)
    for zone, last in (
        ("UTC", date(2025, 3, 10)),
        ("Asia/Kathmandu", date(2025, 3, 11)),  # 05:15 on the 11th
        ("Pacific/Kiritimati", date(2025, 3, 11)),
        ("America/St_Johns", date(2025, 3, 10)),  # 21:00 -02:30
        ("Pacific/Pago_Pago", date(2025, 3, 10)),
    ):
        days = (await answer(client, BY_DAY, {"tz": zone}))["days"]
        first = last - timedelta(days=29)
        assert [d["date"] for d in days] == [
            (first + timedelta(days=i)).isoformat() for i in range(30)
        ], zone
        await check_by_day(client, db, date_range(zone, first, last), None)


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kathmandu", "Asia/Kolkata", "Pacific/Chatham"])
async def test_time_series_defaults_end_now(client: TestClient, db: Database, zone: str) -> None:
    """The last 24 hours / 30 days / 12 weeks / 12 months ending now: consecutive local
    units, zero-filled, the last one containing now, whole ones counted exactly."""
    await seed(client, _now_rows(datetime.now(UTC)))
    for interval, n in (("hour", 24), ("day", 30), ("week", 12), ("month", 12)):
        before = datetime.now(UTC)
        body = await answer(client, SERIES, {"interval": interval, "tz": zone})
        after = datetime.now(UTC)
        assert body["interval"] == interval and body["tz"] == zone
        buckets = body["buckets"]
        slack = 2 if zone == "Pacific/Chatham" else 1  # a DST change may add a partial hour
        assert n <= len(buckets) <= n + slack, (interval, len(buckets))
        first = unit_at(zone, interval, datetime.fromisoformat(buckets[0]["start"]))
        last = unit_at(zone, interval, datetime.fromisoformat(buckets[-1]["start"]))
        assert last in (unit_at(zone, interval, before), unit_at(zone, interval, after))
        units = units_between(zone, interval, first.start, last.end)
        assert [b["start"] for b in buckets[1:]] == [local_iso(u.start, zone) for u in units[1:]]
        for bucket, unit in zip(buckets[1:], units[1:], strict=True):
            whole = counts(db, unit.start, unit.end)
            assert {t: bucket[t] for t in EVENT_TYPES} == whole, (interval, bucket)
        whole = counts(db, first.start, first.end)
        assert all(buckets[0][t] <= whole[t] for t in EVENT_TYPES), (interval, buckets[0])
        total = sum(b[t] for b in buckets for t in EVENT_TYPES)
        assert total >= 3 * (2 if interval == "hour" else 4)  # now-1min and now-2h; now-20d


# --- 5. rebuild and reconcile repair every rollup -----------------------------------------

TOKEN = "zone-admin-token"


@pytest.fixture
async def admin_client(make_client) -> TestClient:
    return await make_client(admin_token=TOKEN)


@pytest.fixture
def admin_db(admin_client: TestClient, config: Config) -> Iterator[Database]:
    conn = connect(config.db)
    yield conn
    conn.close()


def rollup_tables(db: Database) -> list[str]:
    """Every rollup table: the daily one and whatever finer ones the migrations added
    (named like ``daily_event_counts``: with "count" in the name)."""
    return [name for name in db.table_names() if "count" in name]


def damage(db: Database) -> dict[str, int]:
    """In every rollup table: delete a few rows and change the count of a few others.
    Returns the rows touched per table."""
    touched = {}
    for table in rollup_tables(db):
        columns = db.column_names(table)
        count_column = next(
            (c for c in columns if c in {"count", "total", "n", "events"} or "count" in c), None
        )
        total = db.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
        victims = db.execute(
            f'SELECT * FROM "{table}" ORDER BY {", ".join(f"{i + 1}" for i in range(len(columns)))}'
            f" LIMIT 8 OFFSET {total // 3}"
        ).fetchall()
        where = " AND ".join(f'"{c}" = ?' for c in columns)  # every column is NOT NULL
        for i, victim in enumerate(victims):
            if i % 2 or count_column is None:
                db.execute(f'DELETE FROM "{table}" WHERE {where}', victim)
            else:
                db.execute(
                    f'UPDATE "{table}" SET "{count_column}" = "{count_column}" + 5 WHERE {where}',
                    victim,
                )
        touched[table] = len(victims)
    return touched


async def wrong_answers(client: TestClient, db: Database, *, count: bool) -> int:
    """How many of a fixed set of answers (by-day over the year in every zone, weeks and
    months in a few, hours around the DST changes) differ from the reference; with
    ``count=False`` the first difference fails the test (with its message)."""
    wrong = 0
    checks = [(check_by_day, (date_range(z, FIRST_DAY, LAST_DAY), None)) for z in ZONES]
    for zone in ("Asia/Kathmandu", "Pacific/Chatham", "Europe/Berlin"):
        checks += [
            (check_series, (date_range(zone, FIRST_DAY, LAST_DAY), i, None))
            for i in ("week", "month")
        ]
    for zone in DST_ZONES:
        for change in transitions(zone, YEAR_LO, YEAR_HI):
            day = change.astimezone(ZoneInfo(zone)).date()
            r = date_range(zone, day - timedelta(days=1), day + timedelta(days=1))
            checks.append((check_series, (r, "hour", None)))
    for check, args in checks:
        try:
            await check(client, db, *args)
        except AssertionError:
            if not count:
                raise
            wrong += 1
    return wrong


@pytest.mark.slow
@pytest.mark.parametrize("repair", ["reconcile", "rebuild"])
async def test_reconcile_and_rebuild_repair_every_rollup_table(
    admin_client: TestClient, admin_db: Database, repair: str
) -> None:
    await seed(admin_client, year_rows())
    await wrong_answers(admin_client, admin_db, count=False)
    touched = damage(admin_db)
    assert "daily_event_counts" in touched and len(touched) >= 2, touched  # the 15-minute one too
    assert all(touched.values()), touched
    assert await wrong_answers(admin_client, admin_db, count=True) > 0  # the damage shows
    response = await admin_client.post(
        f"/admin/rollups/{repair}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["days_changed"], "the repair reported no change"
    await wrong_answers(admin_client, admin_db, count=False)
