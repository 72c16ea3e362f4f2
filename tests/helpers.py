"""Small helpers shared by the tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson
import uuid_utils
from aiohttp.test_utils import TestClient

from app.keys import STORE
from schema.storage import EventRow, WriteGroup
from schema.timestamps import day_of
from tests.databases import Database

PROBLEM_KEYS = {"type", "title", "status", "detail", "errors"}


def view(user: str = "u1", url: str = "https://example.com/", **payload: Any) -> dict[str, Any]:
    return {"user_id": user, "event_type": "view", "payload": {"url": url, **payload}}


def click(user: str = "u1", **payload: Any) -> dict[str, Any]:
    return {"user_id": user, "event_type": "click", "payload": payload}


def location(user: str = "u1", lat: Any = 48.85, lon: Any = 2.35, **extra: Any) -> dict[str, Any]:
    return {
        "user_id": user,
        "event_type": "location",
        "payload": {"latitude": lat, "longitude": lon, **extra},
    }


def row(event_type: str, timestamp: str, user: str = "u1") -> EventRow:
    """A log row with a given timestamp (the API always stamps "now")."""
    payload = {"url": "https://example.com/"} if event_type == "view" else {}
    if event_type == "location":
        payload = {"latitude": 1.0, "longitude": 2.0}
    return (str(uuid_utils.uuid7()), user, event_type, timestamp, orjson.dumps(payload).decode())


async def append(client: TestClient, rows: Sequence[EventRow]) -> None:
    """Append through the service's own storage path (log and rollup in one transaction)."""
    await client.server.app[STORE].append([WriteGroup(rows)])


def log_count(db: Database, event_type: str | None = None, lo: str = "", hi: str = "~") -> int:
    """The reference answer: COUNT(*) on the log, ``lo <= timestamp < hi`` (timestamp
    strings; the defaults, or anything not a timestamp, leave that side open)."""
    sql = "SELECT COUNT(*) FROM events WHERE true"
    args: list[Any] = []
    if lo[:1].isdigit():
        sql += " AND timestamp >= ?"
        args.append(_bound(lo))
    if hi[:1].isdigit():
        sql += " AND timestamp < ?"
        args.append(_bound(hi))
    if event_type:
        sql += " AND event_type = ?"
        args.append(event_type)
    return db.execute(sql, args).fetchone()[0]


def _bound(text: str) -> str:
    """A prefix such as ``"2025"`` as the first instant it names (both backends compare
    timestamps, not strings, on PostgreSQL)."""
    full = "0000-01-01T00:00:00.000000Z"
    return text + full[len(text) :] if len(text) < len(full) else text


def stored(db: Database) -> int:
    return db.execute("SELECT COUNT(*) FROM events").fetchone()[0]


def log_by_day(db: Database, lo: str = "", hi: str = "~") -> dict[tuple[str, str], int]:
    """The reference rollup: events per (UTC day, type) counted from the log."""
    counts: Counter[tuple[str, str]] = Counter()
    for timestamp, event_type in db.execute("SELECT timestamp, event_type FROM events"):
        if lo <= timestamp < hi:
            counts[(day_of(timestamp), event_type)] += 1
    return dict(counts)


def rollup_by_day(db: Database) -> dict[tuple[str, str], int]:
    """The daily rollup as the service reads it (PostgreSQL spreads a count over slots)."""
    sql = "SELECT day, event_type, SUM(count) FROM daily_event_counts GROUP BY day, event_type"
    return {(day, event_type): n for day, event_type, n in db.execute(sql)}


async def assert_problem(response: Any, status: int, *fields: str) -> dict[str, Any]:
    """The response is a problem+json of ``status`` naming exactly ``fields`` (if given)."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body = await response.json(content_type=None)
    assert body.keys() >= PROBLEM_KEYS
    assert body["status"] == status
    assert isinstance(body["detail"], str) and body["detail"]
    assert body.keys() <= PROBLEM_KEYS | {"errors_omitted"}
    assert len(body["errors"]) <= 100  # the contract's cap; the rest are counted
    if "errors_omitted" in body:
        assert isinstance(body["errors_omitted"], int) and body["errors_omitted"] >= 1
        assert len(body["errors"]) == 100
    for error in body["errors"]:
        assert set(error) == {"field", "message"}
    if fields:
        assert sorted({e["field"] for e in body["errors"]}) == sorted(fields), body
    return body
