"""The admin HTTP API: bearer-token auth and strict validation of the JSON options."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

# Auth and option parsing, above the storage (passes themselves: test_rollup.py).
pytestmark = pytest.mark.backend_independent

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROUTES = [
    ("POST", "/admin/rollups/rebuild"),
    ("POST", "/admin/rollups/reconcile"),
    ("GET", "/admin/rollups/status"),
]


async def assert_problem(resp, status: int) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["status"] == status and {"type", "title", "detail", "errors"} <= body.keys()
    return body


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_without_a_configured_token_the_admin_api_is_off(client, method, path):
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
        resp = await client.request(method, path, headers=headers)
        await assert_problem(resp, 403)


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong",
        f"Basic {TOKEN}",
        f"Bearer {TOKEN}x",
        TOKEN,
        f"Bearer \t{TOKEN}",
        f"Bearer\t{TOKEN}",
    ],
    ids=[
        "missing",
        "empty",
        "no-token",
        "wrong",
        "basic",
        "longer",
        "no-scheme",
        "tab",
        "tab-only",
    ],
)
async def test_a_missing_or_wrong_token_is_401_with_a_challenge(
    make_client, method, path, authorization
):
    client = await make_client(admin_token=TOKEN)
    headers = {} if authorization is None else {"Authorization": authorization}
    resp = await client.request(method, path, headers=headers)
    body = await assert_problem(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in str(body)


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_the_right_token_is_200(make_client, method, path):
    client = await make_client(admin_token=TOKEN)
    resp = await client.request(method, path, headers=AUTH)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert ("days_checked" in body) or ("last_report" in body)


async def test_the_token_is_never_logged(make_client, caplog):
    caplog.set_level("DEBUG")
    client = await make_client(admin_token=TOKEN, access_log=True)
    await client.post("/admin/rollups/reconcile", headers=AUTH)
    await client.post("/admin/rollups/reconcile", headers={"Authorization": "Bearer guess"})
    assert all(
        TOKEN not in r.getMessage() and "guess" not in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"start": "2025-05-01"}, ["start"]),
        ({"start_date": "2025-02-30"}, ["start_date"]),
        ({"start_date": "2025-05-01T00:00:00Z"}, ["start_date"]),
        ({"end_date": 20250501}, ["end_date"]),
        ({"dry_run": "yes"}, ["dry_run"]),
        ({"dry_run": 1}, ["dry_run"]),
        ({"start_date": "2025-05-02", "end_date": "2025-05-01"}, ["start_date"]),
        (
            {"start_date": "bad", "end_date": "worse", "dry_run": 0, "x": 1},
            ["x", "start_date", "end_date", "dry_run"],
        ),
        ([], ["body"]),
        ("2025-05-01", ["body"]),
        ({"start_date": "2025-05-01\n"}, ["start_date"]),
        ({"end_date": " 2025-05-01"}, ["end_date"]),
        ({"start_date": "２０２５-05-01"}, ["start_date"]),
    ],
    ids=[
        "unknown-field",
        "impossible-date",
        "date-time",
        "number-date",
        "string-bool",
        "number-bool",
        "start-after-end",
        "every-error",
        "array",
        "string",
        "date-newline",
        "date-leading-space",
        "date-fullwidth-digits",
    ],
)
async def test_bad_options_are_400_listing_every_problem(make_client, config, body, fields):
    client = await make_client(admin_token=TOKEN)
    for path in ("rebuild", "reconcile"):
        resp = await client.post(f"/admin/rollups/{path}", json=body, headers=AUTH)
        problem = await assert_problem(resp, 400)
        assert sorted(e["field"] for e in problem["errors"]) == sorted(fields)


async def test_body_format_errors(make_client):
    client = await make_client(admin_token=TOKEN)
    url = "/admin/rollups/rebuild"
    resp = await client.post(
        url, data="{nope", headers={**AUTH, "Content-Type": "application/json"}
    )
    await assert_problem(resp, 400)
    resp = await client.post(url, data="dry_run=1", headers={**AUTH, "Content-Type": "text/plain"})
    await assert_problem(resp, 415)
    resp = await client.post(url, json={"dry_run": True, "pad": "x" * 5000}, headers=AUTH)
    await assert_problem(resp, 413)
    resp = await client.post(url, data="\n", headers={**AUTH, "Content-Type": "application/json"})
    await assert_problem(resp, 400)
    resp = await client.post(url + "?dry_run=true", headers=AUTH)
    problem = await assert_problem(resp, 400)
    assert problem["errors"][0]["field"] == "dry_run"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"dry_run": false, "dry_run": true}', "dry_run"),
        (
            b'{"start_date": "2025-05-01", "end_date": null, "start_date": "2025-05-02"}',
            "start_date",
        ),
    ],
    ids=["dry_run", "start_date"],
)
async def test_a_repeated_key_is_400(make_client, raw, field):
    """Parsers disagree on which of two equal keys wins (orjson keeps the last): refuse."""
    client = await make_client(admin_token=TOKEN)
    headers = {**AUTH, "Content-Type": "application/json"}
    resp = await client.post("/admin/rollups/rebuild", data=raw, headers=headers)
    problem = await assert_problem(resp, 400)
    assert problem["errors"] == [{"field": field, "message": "is repeated"}]


async def test_null_options_mean_the_defaults(make_client):
    client = await make_client(admin_token=TOKEN)
    body = {"start_date": None, "end_date": None, "dry_run": None}
    resp = await client.post("/admin/rollups/rebuild", json=body, headers=AUTH)
    assert resp.status == 200
    report = await resp.json()
    assert report["dry_run"] is False and report["start_date"] is None


async def test_wrong_method_is_405(make_client):
    client = await make_client(admin_token=TOKEN)
    resp = await client.get("/admin/rollups/rebuild", headers=AUTH)
    await assert_problem(resp, 405)
    assert resp.headers["Allow"] == "POST"


async def _send_in_two_parts(client, body: bytes, *, pause: float, send_rest: bool) -> bytes:
    """POST /admin/rollups/rebuild with its body split in two TCP writes ``pause`` s apart
    (or the second never sent); returns the raw response (head and body)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    head = (
        "POST /admin/rollups/rebuild HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    try:
        writer.write(head + body[:5])
        await writer.drain()
        await asyncio.sleep(pause)
        if send_rest:
            writer.write(body[5:])
            await writer.drain()
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().partition(b"content-length:")[2].split(b"\r\n")[0])
            return head + await reader.readexactly(length)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await writer.wait_closed()


async def test_an_options_body_sent_in_two_parts_is_read_to_its_end(make_client):
    client = await make_client(admin_token=TOKEN)
    body = json.dumps({"dry_run": True, "start_date": "2025-05-01"}).encode()
    response = await _send_in_two_parts(client, body, pause=0.2, send_rest=True)
    assert response.startswith(b"HTTP/1.1 200"), response[:300]
    report = json.loads(response.partition(b"\r\n\r\n")[2])
    assert report["dry_run"] is True and report["start_date"] == "2025-05-01"


async def test_an_options_body_that_stops_arriving_is_408_after_the_body_timeout(make_client):
    client = await make_client(admin_token=TOKEN, body_timeout_s=0.3)
    body = json.dumps({"dry_run": True}).encode()
    response = await _send_in_two_parts(client, body, pause=0, send_rest=False)
    assert response.startswith(b"HTTP/1.1 408"), response[:300]
    assert b"application/problem+json" in response
