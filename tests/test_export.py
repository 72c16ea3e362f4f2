"""Export: GET /admin/export and ``python -m app export`` stream every matching event in log
order as NDJSON or CSV; the cursor resumes without overlap or gap; pages never hold a
reader that analytics needs."""

from __future__ import annotations

import asyncio
import csv
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient

from app.config import Config
from tests.databases import Database, connect
from tests.helpers import append, assert_problem, view
from tests.lifecycle_support import AUTH, TOKEN, event, spread

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def admin(make_client) -> TestClient:
    return await make_client(admin_token=TOKEN)


@pytest.fixture
def db(admin: TestClient, config: Config) -> Iterator[Database]:
    conn = connect(config.db)
    yield conn
    conn.close()


async def export(client: TestClient, **params: str) -> tuple[str, list, str]:
    """(cursor header, records, raw text): NDJSON records without the cursor line (checked
    here), CSV records without the header row (checked here)."""
    resp = await client.get("/admin/export", params=params, headers=AUTH)
    assert resp.status == 200, await resp.text()
    cursor = resp.headers["X-Export-Cursor"]
    text = (await resp.read()).decode()
    if params.get("format") == "csv":
        assert resp.content_type == "text/csv"
        rows = list(csv.reader(io.StringIO(text, newline="")))
        assert rows[0] == ["event_id", "user_id", "event_type", "timestamp", "payload"]
        return cursor, rows[1:], text
    assert resp.content_type == "application/x-ndjson"
    lines = [orjson.loads(line) for line in text.splitlines()]
    assert lines[-1] == {"cursor": cursor, "events": len(lines) - 1}
    return cursor, lines[:-1], text


def ids(records: list) -> list[str]:
    return [r["event_id"] if isinstance(r, dict) else r[0] for r in records]


FILTERS = [
    {},
    {"event_type": "click"},
    {"start_date": "2025-05-02", "end_date": "2025-05-04"},
    {
        "start_date": "2025-05-02T09:07:00Z",
        "end_date": "2025-05-05T09:15:00Z",
        "event_type": "view",
    },
    {"start_date": "2025-05-03", "end_date": "2025-05-05", "tz": "Asia/Kathmandu"},
    {"end_date": "2025-05-01T09:14:59.999999+00:00"},
    {"start_date": "2025-06-01"},
]


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f) or "all")
async def test_line_count_equals_the_api_count(admin, db, fmt, filters):
    await append(admin, spread(["a", "b", "c"], range(1, 7)))
    resp = await admin.get("/analytics/event-counts", params=filters)
    expected = (await resp.json())["total_events"]

    cursor, records, _ = await export(admin, format=fmt, **filters)

    assert len(records) == expected
    (top,) = db.execute("SELECT MAX(seq) FROM events").fetchone()
    # SQLite: the newest position; PostgreSQL: a bound of transaction ids at or above it
    assert int(cursor) == top if db.backend == "sqlite" else int(cursor) >= top
    seqs = [
        db.execute("SELECT seq FROM events WHERE event_id = ?", (i,)).fetchone()[0]
        for i in ids(records)
    ]
    assert seqs == sorted(seqs)  # log order


HOSTILE = {
    "url": 'https://example.com/a,b?q="x"',
    "title": 'Comma, "quote", new\nline, CR\r\nLF, NUL \u0000 end, emoji 😀🏳️‍🌈, tab\t',
    "nested": {"list": [1, 2.5, None, True, "a,b"], "empty": ""},
}


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
async def test_a_hostile_payload_round_trips(admin, fmt):
    user = 'user, "quoted"\nwith\r\nbreaks and 😀'  # NUL only in payloads: not in a user_id
    resp = await admin.post("/events", json=view(user, **HOSTILE))
    assert resp.status == 202, await resp.text()
    sent = {"url": HOSTILE["url"], "title": HOSTILE["title"], "nested": HOSTILE["nested"]}

    _, records, text = await export(admin, format=fmt)

    assert len(records) == 1
    if fmt == "ndjson":
        assert text.count("\n") == 2  # one line per event, and the cursor line
        assert records[0]["user_id"] == user
        assert records[0]["payload"] == sent
        assert records[0]["event_type"] == "view"
    else:
        event_id, user_id, event_type, timestamp, payload = records[0]
        assert (user_id, event_type) == (user, "view")
        assert orjson.loads(payload) == sent
        assert timestamp.endswith("Z") and len(event_id) == 36
        assert text.endswith("\r\n")  # RFC 4180 line ends


async def test_resuming_from_the_cursor_gives_no_overlap_and_no_gap(admin, db):
    first = [event(f"u{i % 97}", "view", f"2025-05-01T10:{i % 60:02d}:00.000000Z") for i in range(12_000)]  # fmt: skip
    await append(admin, first)  # more than two pages
    cursor, part1, _ = await export(admin)
    assert len(part1) == 12_000

    await append(admin, spread(["late"], [2]))
    for _ in range(3):
        assert (await admin.post("/events", json=view("late"))).status == 202
    await admin.post("/admin/erasures", json={"user_id": "u5"}, headers=AUTH)  # old rows go

    cursor2, part2, _ = await export(admin, after=cursor)
    assert int(cursor2) > int(cursor)
    assert len(part2) == 6 + 3 and {r["user_id"] for r in part2} == {"late"}
    everything = {r[0] for r in db.execute("SELECT event_id FROM events WHERE user_id != 'u5'")}
    assert not set(ids(part1)) & set(ids(part2))
    assert (set(ids(part1)) - {r["event_id"] for r in part1 if r["user_id"] == "u5"}) | set(
        ids(part2)
    ) == everything
    _, part3, _ = await export(admin, after=cursor2, format="csv")
    assert part3 == []  # nothing new: an empty export with its header row


async def test_events_committed_during_an_export_belong_to_the_next(admin, db):
    await append(admin, [event("bulk", "view", "2025-05-01T00:00:00.000000Z", '{"url":"' + "x" * 2000 + '"}') for _ in range(20_000)])  # fmt: skip
    resp = await admin.get("/admin/export", headers=AUTH)
    assert resp.status == 200
    cursor = resp.headers["X-Export-Cursor"]
    await resp.content.readany()  # the export has begun
    for _ in range(5):
        assert (await admin.post("/events", json=view("during"))).status == 202
    text = (await resp.read()).decode()
    assert '"during"' not in text
    assert orjson.loads(text.splitlines()[-1]) == {"cursor": cursor, "events": 20_000}
    _, after, _ = await export(admin, after=cursor)
    assert [r["user_id"] for r in after] == ["during"] * 5


async def test_an_export_does_not_hold_the_only_reader(make_client, config):
    """With one reader connection, analytics still answer while an export is streaming to
    a client that stopped reading: each page is its own short snapshot."""
    client = await make_client(admin_token=TOKEN, read_connections=1)
    big = '{"url":"' + "y" * 4000 + '"}'
    rows = [event("bulk", "view", "2025-05-01T00:00:00.000000Z", big) for _ in range(20_000)]
    await append(client, rows)
    resp = await client.get("/admin/export", headers=AUTH)
    await resp.content.readany()  # then stop reading: the server blocks on its writes
    async with asyncio.timeout(10):
        answers = await asyncio.gather(
            *(client.get("/analytics/event-counts", params={"event_type": "view"}) for _ in range(20))
        )  # fmt: skip
    assert [a.status for a in answers] == [200] * 20
    assert {(await a.json())["total_events"] for a in answers} == {20_000}
    resp.close()


async def test_erased_events_are_not_exported(admin):
    await append(admin, spread(["keep", "forget"], [1, 2]))
    await admin.post("/admin/erasures", json={"user_id": "forget"}, headers=AUTH)
    _, records, _ = await export(admin)
    assert {r["user_id"] for r in records} == {"keep"} and len(records) == 12


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ("format=xml", ["format"]),
        ("format=", ["format"]),
        ("format=CSV", ["format"]),
        ("format=csv&format=ndjson", ["format"]),
        ("after=abc", ["after"]),
        ("after=-1", ["after"]),
        ("after=99999999999999999999", ["after"]),
        ("after=%201", ["after"]),
        ("cursor=5", ["cursor"]),
        ("format=xml&tz=Mars/Base&start_date=2025-02-30", ["format", "start_date", "tz"]),
        ("event_type=scroll", ["event_type"]),
    ],
)
async def test_bad_parameters_are_400_listing_every_problem(admin, query, fields):
    resp = await admin.get(f"/admin/export?{query}", headers=AUTH)
    await assert_problem(resp, 400, *fields)


async def test_a_cursor_ahead_of_the_log_is_400(admin):
    await append(admin, spread(["a"], [1]))
    cursor, _, _ = await export(admin)
    ahead = str(int(cursor) + 10**15)
    resp = await admin.get("/admin/export", params={"after": ahead}, headers=AUTH)
    await assert_problem(resp, 400, "after")


async def test_export_needs_the_admin_token(admin, client):
    await assert_problem(await admin.get("/admin/export"), 401)
    await assert_problem(await client.get("/admin/export", headers=AUTH), 403)


async def test_cli_export_writes_the_same_lines(admin, config):
    await append(admin, spread(["a", "b"], range(1, 4)))
    _, records, text = await export(admin, event_type="click", start_date="2025-05-02")
    assert len(records) == 2 * 2 * 2  # two users, two days, two clicks a day
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "export", "--db", config.db, "--event-type", "click",
        "--start-date", "2025-05-02", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode() == text
    cursor = orjson.loads(text.splitlines()[-1])["cursor"]
    assert f"cursor {cursor}" in err.decode()

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "export", "--db", config.db, "--format", "xml",
        "--after", "x", cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 2 and out == b""
    assert "--format must be ndjson or csv" in err.decode() and "--after" in err.decode()
