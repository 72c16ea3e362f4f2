"""The exactness invariant: every count the API returns equals COUNT(*) on the log."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from aiohttp.test_utils import TestClient

from schema.events import EVENT_TYPES
from schema.timestamps import format_ts
from tests.databases import Database
from tests.helpers import append, log_by_day, log_count, rollup_by_day, row

START = datetime(2025, 4, 28, tzinfo=UTC)
SPAN = timedelta(days=35)


def random_instant(rng: random.Random) -> datetime:
    moment = START + timedelta(microseconds=rng.randrange(int(SPAN.total_seconds() * 1e6)))
    if rng.random() < 0.2:  # pile events onto the day boundaries
        moment = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        moment -= timedelta(microseconds=rng.choice([0, 1]))
    return moment


def random_bound(rng: random.Random, end: bool) -> tuple[str, str, datetime]:
    """A query bound (as sent), the inclusive/exclusive log bound, and its instant."""
    moment = random_instant(rng)
    if rng.random() < 0.5:
        day = moment.date()
        first = datetime(day.year, day.month, day.day, tzinfo=UTC)
        if end:
            return day.isoformat(), format_ts(first + timedelta(days=1)), first + timedelta(days=1)
        return day.isoformat(), format_ts(first), first
    offset = timezone(timedelta(minutes=rng.choice([0, 60, -300, 330, 840, -720])))
    text = moment.astimezone(offset).isoformat(timespec="microseconds")
    if end:
        return (
            text,
            format_ts(moment + timedelta(microseconds=1)),
            moment + timedelta(microseconds=1),
        )
    return text, format_ts(moment), moment


@pytest.fixture
async def random_log(client: TestClient) -> TestClient:
    rng = random.Random(20250528)
    rows = [row(rng.choice(EVENT_TYPES), format_ts(random_instant(rng))) for _ in range(3000)]
    rows.sort(key=lambda r: r[3])
    for i in range(0, len(rows), 500):  # several transactions, like real ingest
        await append(client, rows[i : i + 500])
    return client


async def test_api_counts_equal_count_star_for_random_filters(
    random_log: TestClient, db: Database
) -> None:
    rng = random.Random(7)
    for _ in range(150):
        params: dict[str, str] = {}
        lo, hi = "", "~"
        if rng.random() < 0.8:
            params["start_date"], lo, _ = random_bound(rng, end=False)
        if rng.random() < 0.8:
            params["end_date"], hi, _ = random_bound(rng, end=True)
        if lo and hi != "~" and lo >= hi:  # start after end
            response = await random_log.get("/analytics/event-counts", params=params)
            assert response.status == 400, params
            continue
        event_type = rng.choice([None, *EVENT_TYPES])
        if event_type:
            params["event_type"] = event_type
        response = await random_log.get("/analytics/event-counts", params=params)
        assert response.status == 200, (params, await response.text())
        expected = log_count(db, event_type, lo, hi)
        assert (await response.json())["total_events"] == expected, params

        params.pop("event_type", None)
        response = await random_log.get("/analytics/event-counts-by-type", params=params)
        by_type = await response.json()
        for t in EVENT_TYPES:
            assert by_type.get(t, 0) == log_count(db, t, lo, hi), (params, t)
        assert all(by_type.values())  # types without events are left out


async def test_counts_by_day_equal_group_by_on_the_log(
    random_log: TestClient, db: Database
) -> None:
    response = await random_log.get(
        "/analytics/event-counts-by-day",
        params={"start_date": "2025-04-27T22:00:00-03:00", "end_date": "2025-06-02T09:15:00+02:00"},
    )
    days = (await response.json())["days"]
    lo, hi = "2025-04-28T01:00:00.000000Z", "2025-06-02T07:15:00.000001Z"
    expected = log_by_day(db, lo, hi)
    assert days[0]["date"] == "2025-04-28" and days[-1]["date"] == "2025-06-02"
    for entry in days:
        for t in EVENT_TYPES:
            assert entry[t] == expected.get((entry["date"], t), 0), entry
    assert sum(entry[t] for entry in days for t in EVENT_TYPES) == sum(expected.values())


async def test_rollup_equals_group_by_after_api_ingest(client: TestClient, db: Database) -> None:
    import asyncio

    import orjson

    from tests.helpers import click, view

    bodies = [view(user=f"u{i}") if i % 3 else click(user=f"u{i}") for i in range(300)]
    responses = await asyncio.gather(
        *(
            client.post(
                "/events", data=orjson.dumps(b), headers={"Content-Type": "application/json"}
            )
            for b in bodies
        )
    )
    assert {r.status for r in responses} == {202}
    assert rollup_by_day(db) == log_by_day(db)
