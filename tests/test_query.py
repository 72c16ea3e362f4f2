"""GET /analytics/*: filters, inclusive bounds, day edges, and every 400 case."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import TestClient

from tests.helpers import append, assert_problem, row, view

# Events at the edges of 2025-05-01 .. 2025-05-03 (UTC).
ROWS = [
    row("view", "2025-04-30T23:59:59.999999Z"),
    row("view", "2025-05-01T00:00:00.000000Z"),
    row("click", "2025-05-01T12:00:00.000000Z"),
    row("location", "2025-05-01T23:59:59.999999Z"),
    row("view", "2025-05-02T00:00:00.000000Z"),
    row("view", "2025-05-02T09:30:00.000000Z"),
    row("click", "2025-05-03T23:59:59.999999Z"),
    row("view", "2025-05-04T00:00:00.000000Z"),
]


@pytest.fixture
async def seeded(client: TestClient) -> TestClient:
    await append(client, ROWS)
    return client


async def total(client: TestClient, **params: str) -> int:
    response = await client.get("/analytics/event-counts", params=params)
    assert response.status == 200, await response.text()
    return (await response.json())["total_events"]


async def by_type(client: TestClient, **params: str) -> dict[str, int]:
    response = await client.get("/analytics/event-counts-by-type", params=params)
    assert response.status == 200, await response.text()
    return await response.json()


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param({}, 8, id="no-filter"),
        pytest.param({"event_type": "view"}, 5, id="type-view"),
        pytest.param({"event_type": "click"}, 2, id="type-click"),
        pytest.param({"event_type": "location"}, 1, id="type-location"),
        pytest.param({"start_date": "2025-05-02"}, 4, id="start-only"),
        pytest.param({"end_date": "2025-05-01"}, 4, id="end-only-inclusive-day"),
        pytest.param({"start_date": "2025-05-01", "end_date": "2025-05-01"}, 3, id="one-day"),
        pytest.param({"start_date": "2025-05-01", "end_date": "2025-05-03"}, 6, id="three-days"),
        pytest.param(
            {"start_date": "2025-05-01", "end_date": "2025-05-03", "event_type": "view"},
            3,
            id="days-and-type",
        ),
        pytest.param({"start_date": "2025-06-01"}, 0, id="empty-range"),
        pytest.param(
            {"start_date": "2025-05-01T00:00:00Z", "end_date": "2025-05-01T00:00:00Z"},
            1,
            id="first-microsecond",
        ),
        pytest.param(
            {
                "start_date": "2025-05-01T23:59:59.999999Z",
                "end_date": "2025-05-01T23:59:59.999999Z",
            },
            1,
            id="last-microsecond",
        ),
        pytest.param(
            {"start_date": "2025-05-01T23:59:59.999999Z", "end_date": "2025-05-02T00:00:00Z"},
            2,
            id="across-midnight",
        ),
        pytest.param({"start_date": "2025-05-01T12:00:00.000001Z"}, 5, id="start-cuts-day"),
        pytest.param({"end_date": "2025-05-02T09:29:59.999999Z"}, 5, id="end-cuts-day"),
        pytest.param(
            {"start_date": "2025-05-01T14:00:00+02:00", "end_date": "2025-05-02T11:30:00+02:00"},
            4,
            id="offsets",
        ),
        pytest.param(
            {"start_date": "2025-05-01T07:00:00-05:00", "end_date": "2025-05-01T07:00:00-05:00"},
            1,
            id="negative-offset-instant",
        ),
        pytest.param(
            {
                "start_date": "2025-05-01T12:00:00.0000001Z",
                "end_date": "2025-05-01T12:00:00.0000009Z",
            },
            0,
            id="sub-microsecond-empty",
        ),
        pytest.param(
            {
                "start_date": "2025-05-01T12:00:00.0000000Z",
                "end_date": "2025-05-01T12:00:00.0000009Z",
            },
            1,
            id="sub-microsecond",
        ),
        pytest.param(
            {"start_date": "2025-05-01", "end_date": "2025-05-02T09:30:00Z"},
            5,
            id="date-then-datetime",
        ),
        pytest.param({"start_date": "2025-05-01T03:00:00 02:00"}, 6, id="unencoded-plus"),
        pytest.param(
            {"start_date": "0001-01-01", "end_date": "9999-12-31"}, 8, id="calendar-extremes"
        ),
        pytest.param({"start_date": "0001-01-01T00:00:00+10:00"}, 8, id="start-before-calendar"),
        pytest.param({"end_date": "9999-12-31T23:00:00-10:00"}, 8, id="end-after-calendar"),
    ],
)
async def test_event_counts(seeded: TestClient, params: dict[str, str], expected: int) -> None:
    assert await total(seeded, **params) == expected


async def test_counts_by_type(seeded: TestClient) -> None:
    assert await by_type(seeded) == {"view": 5, "click": 2, "location": 1}
    assert await by_type(seeded, start_date="2025-05-02", end_date="2025-05-02") == {"view": 2}
    assert await by_type(seeded, start_date="2025-05-01T12:00:00Z", end_date="2025-05-03") == {
        "click": 2,
        "location": 1,
        "view": 2,
    }
    assert await by_type(seeded, start_date="2026-01-01") == {}


async def test_empty_database(client: TestClient) -> None:
    assert await total(client) == 0
    assert await by_type(client) == {}
    response = await client.get("/analytics/event-counts-by-day")
    days = (await response.json())["days"]  # the last 30 days up to today, all zero
    today = datetime.now(UTC).date()
    assert [d["date"] for d in days] == [
        (today - timedelta(days=29 - n)).isoformat() for n in range(30)
    ]
    assert all(d["view"] == d["click"] == d["location"] == 0 for d in days)


async def test_counts_by_day_zero_filled(seeded: TestClient) -> None:
    response = await seeded.get(
        "/analytics/event-counts-by-day",
        params={"start_date": "2025-04-30", "end_date": "2025-05-05"},
    )
    assert response.status == 200
    assert (await response.json())["days"] == [
        {"date": "2025-04-30", "view": 1, "click": 0, "location": 0},
        {"date": "2025-05-01", "view": 1, "click": 1, "location": 1},
        {"date": "2025-05-02", "view": 2, "click": 0, "location": 0},
        {"date": "2025-05-03", "view": 0, "click": 1, "location": 0},
        {"date": "2025-05-04", "view": 1, "click": 0, "location": 0},
        {"date": "2025-05-05", "view": 0, "click": 0, "location": 0},
    ]


async def test_counts_by_day_default_is_the_30_days_up_to_the_newest_day_when_recent_days_are_empty(
    seeded: TestClient,
) -> None:
    """The seeded events are all in 2025: the last 30 days hold none (contract)."""
    days = (await (await seeded.get("/analytics/event-counts-by-day")).json())["days"]
    assert len(days) == 30
    assert days[0]["date"] == "2025-04-05" and days[-1]["date"] == "2025-05-04"
    assert sum(d["view"] + d["click"] + d["location"] for d in days) == 8


async def test_counts_by_day_default_is_the_last_30_days_when_they_hold_an_event(
    seeded: TestClient,
) -> None:
    """Outside testing's case: old sample data plus an event today must not give a
    578-day chart; the last 30 days up to today are listed."""
    assert (await seeded.post("/events", json=view())).status == 202
    days = (await (await seeded.get("/analytics/event-counts-by-day")).json())["days"]
    today = datetime.now(UTC).date()
    assert days[0]["date"] == (today - timedelta(days=29)).isoformat()
    assert days[-1]["date"] == today.isoformat() and len(days) == 30
    assert days[-1]["view"] == 1


async def test_counts_by_day_with_only_one_bound(client: TestClient) -> None:
    await append(client, [row("view", f"2025-03-{d:02d}T10:00:00.000000Z") for d in range(1, 32)])
    until = (
        await (
            await client.get("/analytics/event-counts-by-day", params={"end_date": "2025-03-31"})
        ).json()
    )["days"]
    assert until[0]["date"] == "2025-03-02" and until[-1]["date"] == "2025-03-31"
    since = (
        await (
            await client.get("/analytics/event-counts-by-day", params={"start_date": "2025-03-30"})
        ).json()
    )["days"]
    assert since[0]["date"] == "2025-03-30"
    assert since[-1]["date"] == datetime.now(UTC).date().isoformat()  # through today


@pytest.mark.parametrize(
    "params",
    [
        {"start_date": "9999-12-31"},
        {"start_date": "9999-12-01", "end_date": "9999-12-31"},
        {"end_date": "9999-12-31T23:59:59Z", "start_date": "9999-12-30"},
    ],
)
async def test_counts_by_day_at_the_end_of_the_calendar(client: TestClient, params: dict) -> None:
    response = await client.get("/analytics/event-counts-by-day", params=params)
    assert response.status == 200
    days = (await response.json())["days"]
    assert days[-1] == {"date": "9999-12-31", "view": 0, "click": 0, "location": 0}


async def test_counts_by_day_with_cut_days_and_type(seeded: TestClient) -> None:
    response = await seeded.get(
        "/analytics/event-counts-by-day",
        params={
            "start_date": "2025-05-01T12:00:00Z",
            "end_date": "2025-05-02T09:00:00Z",
            "event_type": "view",
        },
    )
    assert (await response.json())["days"] == [
        {"date": "2025-05-01", "view": 0, "click": 0, "location": 0},
        {"date": "2025-05-02", "view": 1, "click": 0, "location": 0},
    ]


BAD = [
    pytest.param(
        "/analytics/event-counts", {"event_type": "scroll"}, ["event_type"], id="unknown-type"
    ),
    pytest.param(
        "/analytics/event-counts",
        {"start_date": "2025-02-30"},
        ["start_date"],
        id="impossible-date",
    ),
    pytest.param(
        "/analytics/event-counts", {"start_date": "2025-5-1"}, ["start_date"], id="malformed-date"
    ),
    pytest.param("/analytics/event-counts", {"end_date": "yesterday"}, ["end_date"], id="word"),
    pytest.param("/analytics/event-counts", {"start_date": ""}, ["start_date"], id="empty-value"),
    pytest.param(
        "/analytics/event-counts",
        {"start_date": "2025-05-01T10:00:00"},
        ["start_date"],
        id="no-offset",
    ),
    pytest.param(
        "/analytics/event-counts",
        {"start_date": "2025-05-01T25:00:00Z"},
        ["start_date"],
        id="hour-25",
    ),
    pytest.param(
        "/analytics/event-counts",
        {"start_date": "2025-05-01T10:00:60Z"},
        ["start_date"],
        id="second-60",
    ),
    pytest.param(
        "/analytics/event-counts",
        {"start_date": "2025-05-01T10:00:00+24:00"},
        ["start_date"],
        id="offset-24h",
    ),
    pytest.param(
        "/analytics/event-counts",
        {"start_date": "2025-05-02", "end_date": "2025-05-01"},
        ["start_date"],
        id="start-after-end",
    ),
    pytest.param(
        "/analytics/event-counts",
        {"start_date": "2025-05-01T10:00:00Z", "end_date": "2025-05-01T09:59:59.999999Z"},
        ["start_date"],
        id="start-after-end-instant",
    ),
    pytest.param(
        "/analytics/event-counts", {"start-date": "2025-05-01"}, ["start-date"], id="typo"
    ),
    pytest.param(
        "/analytics/event-counts", {"foo": "1", "bar": "2"}, ["foo", "bar"], id="two-unknown"
    ),
    pytest.param(
        "/analytics/event-counts-by-type",
        {"event_type": "view"},
        ["event_type"],
        id="by-type-rejects-type",
    ),
    pytest.param(
        "/analytics/event-counts-by-day",
        {"start_date": "2000-01-01", "end_date": "2025-01-01"},
        ["start_date"],
        id="by-day-too-long",
    ),
    pytest.param(
        "/analytics/event-counts-by-day", {"day": "2025-01-01"}, ["day"], id="by-day-unknown"
    ),
]


@pytest.mark.parametrize(("path", "params", "fields"), BAD)
async def test_bad_parameters_are_400(
    client: TestClient, path: str, params: dict, fields: list[str]
) -> None:
    await assert_problem(await client.get(path, params=params), 400, *fields)


@pytest.mark.parametrize(
    "path",
    [
        "/analytics/event-counts",
        "/analytics/event-counts-by-type",
        "/analytics/event-counts-by-day",
    ],
)
async def test_repeated_parameter_is_400(client: TestClient, path: str) -> None:
    response = await client.get(path + "?start_date=2025-05-01&start_date=2025-05-02")
    await assert_problem(response, 400, "start_date")


async def test_thousands_of_parameters_are_400(client: TestClient) -> None:
    query = "&".join(["x=1"] * 2000)
    await assert_problem(await client.get("/analytics/event-counts?" + query), 400, "x")


ANALYTICS = [
    "/analytics/event-counts",
    "/analytics/event-counts-by-type",
    "/analytics/event-counts-by-day",
    "/analytics/timeseries?interval=day&",
]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("2024-03-10%0A", id="date-newline"),
        pytest.param("2024-03-10%0D%0A", id="date-crlf"),
        pytest.param("2024-03-10%20", id="date-trailing-space"),
        pytest.param("%202024-03-10", id="date-leading-space"),
        pytest.param("+2024-03-10", id="date-leading-plus-as-space"),
        pytest.param("2024-03-10%09", id="date-tab"),
        pytest.param("2024-03-10T06:00:00Z%0A", id="datetime-newline"),
        pytest.param("2024-03-10T06:00:00%2B02:00%0A", id="datetime-offset-newline"),
        pytest.param("2024-03-10T06:00:00Z%20", id="datetime-trailing-space"),
    ],
)
@pytest.mark.parametrize("name", ["start_date", "end_date"])
@pytest.mark.parametrize("path", ANALYTICS)
async def test_a_date_is_taken_exactly_as_sent(
    client: TestClient, path: str, name: str, value: str
) -> None:
    """Surrounding whitespace or a trailing newline makes a value malformed (a regular
    expression's ``$`` also matches before a final newline)."""
    sep = "" if path.endswith("&") else "?"
    response = await client.get(f"{path}{sep}{name}={value}")
    body = await assert_problem(response, 400, name)
    assert "\n" not in body["detail"].replace("\\n", "")


@pytest.mark.parametrize("value", ["view%0A", "%20view", "view%20", "view%00"])
@pytest.mark.parametrize(
    "path",
    [
        "/analytics/event-counts?",
        "/analytics/event-counts-by-day?",
        "/analytics/timeseries?interval=day&",
    ],
)
async def test_an_event_type_is_taken_exactly_as_sent(
    client: TestClient, path: str, value: str
) -> None:
    await assert_problem(await client.get(f"{path}event_type={value}"), 400, "event_type")


@pytest.mark.parametrize("value", ["UTC%0A", "%20UTC", "Europe/Berlin%20", "Europe/Berlin%0D%0A"])
@pytest.mark.parametrize("path", [*(p + "?" for p in ANALYTICS[:3]), ANALYTICS[3]])
async def test_a_time_zone_is_taken_exactly_as_sent(
    client: TestClient, path: str, value: str
) -> None:
    await assert_problem(await client.get(f"{path}tz={value}"), 400, "tz")


@pytest.mark.parametrize("value", ["day%0A", "%20day", "hour%20", "HOUR"])
async def test_an_interval_is_taken_exactly_as_sent(client: TestClient, value: str) -> None:
    await assert_problem(
        await client.get(f"/analytics/timeseries?interval={value}"), 400, "interval"
    )
