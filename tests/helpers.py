"""Small helpers shared by the tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson
import uuid_utils
from aiohttp.test_utils import TestClient

from app.keys import STORE
from schema.storage import EventRow, WriteGroup

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


def log_count(
    db: sqlite3.Connection, event_type: str | None = None, lo: str = "", hi: str = "~"
) -> int:
    """The reference answer: COUNT(*) on the log, ``lo <= timestamp < hi``."""
    sql = "SELECT COUNT(*) FROM events WHERE timestamp >= ? AND timestamp < ?"
    args: list[Any] = [lo, hi]
    if event_type:
        sql += " AND event_type = ?"
        args.append(event_type)
    return db.execute(sql, args).fetchone()[0]


def stored(db: sqlite3.Connection) -> int:
    return db.execute("SELECT COUNT(*) FROM events").fetchone()[0]


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
