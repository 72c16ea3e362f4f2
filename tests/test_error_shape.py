"""Every error, whatever raised it, has the one problem+json shape."""

from __future__ import annotations

import sqlite3

import pytest
from aiohttp.test_utils import TestClient

from schema.sqlite.migrate import SchemaTooNewError, latest_version, migrate
from tests.helpers import assert_problem

# Problem+json shapes and CORS, above the storage.
pytestmark = pytest.mark.backend_independent


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", "/nope", 404, None),
        ("GET", "/analytics/nope", 404, None),
        ("GET", "/events", 405, "POST"),
        ("DELETE", "/events/batch", 405, "POST"),
        ("POST", "/analytics/event-counts", 405, "GET"),
    ],
)
async def test_routing_errors_are_problems(
    client: TestClient, method: str, path: str, status: int, allow: str | None
) -> None:
    response = await client.request(method, path)
    await assert_problem(response, status)
    if allow:
        assert allow in response.headers["Allow"]


@pytest.mark.server_fault
async def test_unexpected_error_is_a_generic_500(client: TestClient, monkeypatch) -> None:
    from app.keys import STORE

    async def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("/secret/path.db: SELECT * FROM events")

    monkeypatch.setattr(client.server.app[STORE], "count", broken)
    response = await client.get("/analytics/event-counts")
    body = await assert_problem(response, 500)
    assert "secret" not in str(body) and "SELECT" not in str(body)


async def test_cors_preflight_and_headers(make_client) -> None:
    client = await make_client(cors_origins=("https://shop.example",))
    preflight = await client.options(
        "/events",
        headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Idempotency-Key" in preflight.headers["Access-Control-Allow-Headers"]
    get = await client.get("/analytics/event-counts", headers={"Origin": "https://shop.example"})
    assert get.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "Retry-After" in get.headers["Access-Control-Expose-Headers"]
    other = await client.get("/analytics/event-counts", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_cors_default_allows_no_other_origin(client: TestClient) -> None:
    response = await client.options(
        "/events", headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST"}
    )
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_cors_wildcard(make_client) -> None:
    client = await make_client(cors_origins=("*",))
    response = await client.get(
        "/analytics/event-counts", headers={"Origin": "https://any.example"}
    )
    assert response.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.sqlite_only("the file's journal mode and PRAGMA user_version (both: test_storage.py)")
def test_migrations_are_idempotent_and_refuse_a_newer_schema(tmp_path) -> None:
    path = tmp_path / "m.db"
    assert migrate(path) == latest_version()
    assert migrate(path) == latest_version()
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute(
            "INSERT INTO events (event_id, user_id, event_type, timestamp, payload)"
            " VALUES ('a', 'u', 'view', '2025-05-01T00:00:00.000000Z', '{}')"
        )
        conn.execute("UPDATE events SET user_id = 'x'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM events")
    conn.execute(f"PRAGMA user_version = {latest_version() + 1}")
    conn.close()
    with pytest.raises(SchemaTooNewError):
        migrate(path)
