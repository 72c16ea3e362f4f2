"""Shared by the data lifecycle tests (erasure, export, retention): reference answers
computed directly on the database (either backend), and the admin token."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import uuid_utils
from aiohttp.test_utils import TestClient

from schema.storage import EventRow
from tests.databases import Database

TOKEN = "lifecycle-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

PAYLOADS = {
    "view": '{"url":"https://example.com/"}',
    "click": '{"element_id":"buy"}',
    "location": '{"latitude":1.0,"longitude":2.0}',
}
TYPES = ("view", "click", "location")


def event(user: str, event_type: str, timestamp: str, payload: str | None = None) -> EventRow:
    return (
        str(uuid_utils.uuid7()),
        user,
        event_type,
        timestamp,
        payload or PAYLOADS[event_type],
    )


def spread(users: Iterable[str], days: Iterable[int], month: str = "2025-05") -> list[EventRow]:
    """For each user and day of ``month``: events of every type at several times of day,
    some on 15-minute boundaries, some within a bucket, one at the day's last microsecond."""
    rows = []
    for user in users:
        for day in days:
            stamp = f"{month}-{day:02d}T"
            rows += [
                event(user, "view", stamp + "00:00:00.000000Z"),
                event(user, "view", stamp + "09:07:30.250000Z"),
                event(user, "click", stamp + "09:14:59.999999Z"),
                event(user, "click", stamp + "09:15:00.000000Z"),
                event(user, "location", stamp + "17:52:00.000000Z"),
                event(user, "view", stamp + "23:59:59.999999Z"),
            ]
    return rows


# --- reference answers: COUNT(*) on the log, grouped as each rollup is --------------
# In each backend's own SQL, written independently of the service's expressions.

LOG_BY_DAY = {
    "sqlite": "SELECT substr(timestamp, 1, 10), event_type, COUNT(*) FROM events GROUP BY 1, 2",
    "postgres": """
SELECT to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD'), event_type, COUNT(*)
FROM events GROUP BY 1, 2
""",
}
LOG_BY_QUARTER = {
    "sqlite": """
SELECT unixepoch(substr(timestamp, 1, 19)) / 900 * 900, event_type, COUNT(*)
FROM events GROUP BY 1, 2
""",
    "postgres": """
SELECT (floor(extract(epoch FROM timestamp) / 900) * 900)::bigint, event_type, COUNT(*)
FROM events GROUP BY 1, 2
""",
}


def log_by_day(db: Database) -> dict[tuple[str, str], int]:
    return {(d, t): n for d, t, n in db.execute(LOG_BY_DAY[db.backend])}


def log_by_quarter(db: Database) -> dict[tuple[int, str], int]:
    return {(b, t): n for b, t, n in db.execute(LOG_BY_QUARTER[db.backend])}


def daily_rollup(db: Database) -> dict[tuple[str, str], int]:
    """The daily rollup as the service reads it (PostgreSQL spreads a count over slots)."""
    sql = "SELECT day, event_type, SUM(count) FROM daily_event_counts GROUP BY day, event_type"
    return {(d, t): n for d, t, n in db.execute(sql)}


def quarter_rollup(db: Database) -> dict[tuple[int, str], int]:
    sql = (
        "SELECT bucket, event_type, SUM(count) FROM quarter_hour_event_counts"
        " GROUP BY bucket, event_type"
    )
    return {(b, t): n for b, t, n in db.execute(sql)}


def assert_exact(db: Database) -> None:
    """The exactness invariant, read in one snapshot: both rollups equal the log."""
    with db.snapshot():
        assert daily_rollup(db) == log_by_day(db)
        assert quarter_rollup(db) == log_by_quarter(db)


def user_counts(rows: Iterable[EventRow], user: str) -> Counter[tuple[str, str]]:
    """Per (UTC day, type): how many of ``rows`` belong to ``user``."""
    return Counter((r[3][:10], r[2]) for r in rows if r[1] == user)


def minus(
    before: dict[tuple[str, str], int], gone: Counter[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    after = {key: n - gone.get(key, 0) for key, n in before.items()}
    return {key: n for key, n in after.items() if n}


async def by_type(client: TestClient, **query: str) -> dict[str, int]:
    resp = await client.get("/analytics/event-counts-by-type", params=query)
    assert resp.status == 200, await resp.text()
    return await resp.json()
