"""Retention: raw events before a UTC day are deleted in short transactions, every rollup is
kept, and the horizon makes every answer either exact or a 409 — never a smaller number."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from app.config import Config
from app.keys import RUNNER, STORE
from schema.timestamps import now
from tests.databases import Database, connect
from tests.helpers import append, assert_problem, view
from tests.lifecycle_support import (
    AUTH,
    TOKEN,
    daily_rollup,
    event,
    log_by_day,
    quarter_rollup,
    spread,
)
from tests.test_metrics import scrape, value

ROOT = Path(__file__).resolve().parent.parent
HORIZON = "2025-05-06T00:00:00.000000Z"


@pytest.fixture
async def admin(make_client) -> TestClient:
    return await make_client(admin_token=TOKEN)


@pytest.fixture
def db(admin: TestClient, config: Config) -> Iterator[Database]:
    conn = connect(config.db)
    yield conn
    conn.close()


async def expire(client: TestClient, before: str, **kwargs: object) -> dict:
    report = await client.server.app[RUNNER].expire(date.fromisoformat(before), **kwargs)
    return report.to_dict()


async def get(client: TestClient, path: str, params: dict[str, str]) -> tuple[int, object]:
    resp = await client.get(path, params=params)
    return resp.status, await resp.json(content_type=None)


def before_horizon(db: Database) -> int:
    return db.execute("SELECT COUNT(*) FROM events WHERE timestamp < ?", (HORIZON,)).fetchone()[0]


# Questions the rollups answer whole: days, 15-minute-aligned instants, local days of zones
# whose offsets are whole quarters, hours, weeks, months.
WHOLE = [
    ("/analytics/event-counts-by-type", {}),
    ("/analytics/event-counts-by-type", {"start_date": "2025-05-02", "end_date": "2025-05-09"}),
    ("/analytics/event-counts", {"event_type": "click", "start_date": "2025-05-02T09:15:00Z"}),
    ("/analytics/event-counts", {"end_date": "2025-05-03T09:14:59.999999Z"}),
    ("/analytics/event-counts-by-day", {"start_date": "2025-05-01", "end_date": "2025-05-10"}),
    ("/analytics/event-counts-by-day", {"start_date": "2025-05-01", "tz": "Asia/Kathmandu"}),
    ("/analytics/event-counts-by-day", {"start_date": "2025-05-01", "tz": "America/St_Johns"}),
    ("/analytics/event-counts-by-day", {"end_date": "2025-05-08"}),
    (
        "/analytics/timeseries",
        {"interval": "hour", "start_date": "2025-05-03", "end_date": "2025-05-03"},
    ),
    (
        "/analytics/timeseries",
        {
            "interval": "day",
            "start_date": "2025-05-01",
            "end_date": "2025-05-10",
            "tz": "Asia/Kolkata",
        },
    ),
    (
        "/analytics/timeseries",
        {"interval": "week", "start_date": "2025-05-01", "end_date": "2025-05-31"},
    ),
    (
        "/analytics/timeseries",
        {
            "interval": "month",
            "start_date": "2025-01-01",
            "end_date": "2025-12-31",
            "event_type": "view",
        },
    ),
]


async def test_whole_answers_are_identical_before_and_after(admin, db):
    await append(admin, spread(["a", "b", "c"], range(1, 11)))
    daily, quarters = daily_rollup(db), quarter_rollup(db)
    before = [await get(admin, path, params) for path, params in WHOLE]
    assert all(status == 200 for status, _ in before)

    report = await expire(admin, "2025-05-06")

    assert report["events_deleted"] == 3 * 5 * 6 and report["horizon"] == HORIZON
    assert before_horizon(db) == 0
    assert db.execute("SELECT COUNT(*) FROM events").fetchone() == (3 * 5 * 6,)
    assert daily_rollup(db) == daily and quarter_rollup(db) == quarters  # every rollup kept
    after = [await get(admin, path, params) for path, params in WHOLE]
    assert after == before


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start_date": "2025-05-02T09:07:00Z"}, "start_date"),
        ({"end_date": "2025-05-03T09:10:00+00:00"}, "end_date"),
        ({"start_date": "2025-05-01T00:00:00Z", "end_date": "2025-05-05T23:59:59Z"}, "end_date"),
        ({"start_date": "2025-05-05T23:59:59.999999Z"}, "start_date"),
    ],
)
async def test_a_date_time_bound_inside_the_frozen_part_is_409(admin, db, params, field):
    await append(admin, spread(["a", "b"], range(1, 11)))
    status, _ = await get(admin, "/analytics/event-counts", params)
    assert status == 200
    await expire(admin, "2025-05-06")

    resp = await admin.get("/analytics/event-counts", params=params)
    body = await assert_problem(resp, 409, field)
    assert HORIZON in body["detail"]
    resp = await admin.get("/analytics/event-counts-by-day", params=params)
    await assert_problem(resp, 409, field)


async def test_bounds_at_or_after_the_horizon_still_count_from_the_log(admin, db):
    await append(admin, spread(["a", "b"], range(1, 11)))
    await expire(admin, "2025-05-06")
    for start in (HORIZON, "2025-05-06T09:07:00Z", "2025-05-06T09:14:59.999999Z"):
        status, body = await get(
            admin, "/analytics/event-counts", {"start_date": start, "end_date": "2025-05-08T09:10:00Z"}
        )  # fmt: skip
        assert status == 200
        lo = start if start.endswith("000Z") else start.replace("Z", "").ljust(26, "0") + "Z"
        (n,) = db.execute(
            "SELECT COUNT(*) FROM events WHERE timestamp >= ? AND timestamp <= ?",
            (lo, "2025-05-08T09:10:00.000000Z"),
        ).fetchone()
        assert body == {"total_events": n}


async def test_rebuild_and_reconcile_leave_the_frozen_part_alone(admin, db):
    await append(admin, spread(["a", "b"], range(1, 11)))
    await expire(admin, "2025-05-06")
    frozen = {k: v for k, v in daily_rollup(db).items() if k[0] < "2025-05-06"}
    frozen_quarters = {k: v for k, v in quarter_rollup(db).items() if k[0] < 1746489600}
    db.execute("UPDATE daily_event_counts SET count = 99 WHERE day = '2025-05-07'")  # live drift

    for kind in ("rebuild", "reconcile"):
        resp = await admin.post(f"/admin/rollups/{kind}", headers=AUTH)
        report = await resp.json()
        assert resp.status == 200, report
        assert report["days_checked"] == 5  # May 6-10 only
        assert all(c["date"] >= "2025-05-06" for c in report["days_changed"])
    assert {k: v for k, v in daily_rollup(db).items() if k[0] < "2025-05-06"} == frozen
    assert {k: v for k, v in quarter_rollup(db).items() if k[0] < 1746489600} == frozen_quarters
    live = {k: v for k, v in daily_rollup(db).items() if k[0] >= "2025-05-06"}
    assert live == log_by_day(db)  # the live part was repaired

    # the primitive itself refuses a frozen day, even when asked directly
    result = await admin.server.app[STORE].recount_day("2025-05-03", repair=True)
    assert result.frozen and not result.repaired
    assert {k: v for k, v in daily_rollup(db).items() if k[0] < "2025-05-06"} == frozen


async def test_an_export_of_the_frozen_period_is_409(admin, db):
    await append(admin, spread(["a"], range(1, 11)))
    resp = await admin.get("/admin/export", headers=AUTH)
    cursor_before = resp.headers["X-Export-Cursor"]
    await resp.read()
    await expire(admin, "2025-05-06")
    for params in ({}, {"start_date": "2025-05-05"}, {"after": "29"}, {"event_type": "click"}):
        resp = await admin.get("/admin/export", params=params, headers=AUTH)
        body = await assert_problem(resp, 409, "start_date")
        assert HORIZON in body["detail"]
    # a cursor past every expired event: nothing after it is missing
    resp = await admin.get("/admin/export", params={"after": cursor_before}, headers=AUTH)
    assert resp.status == 200
    last = orjson.loads(await resp.read())
    assert last["events"] == 0
    # SQLite: the same newest position; PostgreSQL: transactions (retention's) went by
    assert last["cursor"] == cursor_before or db.backend == "postgres"
    resp = await admin.get("/admin/export", params={"start_date": "2025-05-06"}, headers=AUTH)
    assert resp.status == 200
    lines = (await resp.read()).decode().splitlines()
    assert len(lines) - 1 == 5 * 6
    cursor = resp.headers["X-Export-Cursor"]
    # an incremental export from a cursor given after the deletion needs no start_date
    await append(admin, [event("new", "view", "2025-05-11T00:00:00.000000Z")])
    resp = await admin.get("/admin/export", params={"after": cursor}, headers=AUTH)
    assert resp.status == 200
    assert orjson.loads((await resp.read()).splitlines()[0])["user_id"] == "new"


async def test_an_export_running_when_retention_takes_its_rows_is_cut_off(admin, db):
    """Never completed silently short: the body ends without its last chunk."""
    big = '{"url":"' + "z" * 3000 + '"}'
    rows = [event("bulk", "view", f"2025-05-0{1 + i // 10_000}T10:00:00.000000Z", big) for i in range(30_000)]  # fmt: skip
    await append(admin, rows)
    resp = await admin.get("/admin/export", headers=AUTH)
    assert resp.status == 200
    await resp.content.readany()
    await expire(admin, "2025-05-03")  # the export still needs rows of May 1-2
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()


async def test_retention_runs_in_short_transactions_while_ingest_goes_on(admin, db):
    rows = [event(f"u{i % 50}", "click", f"2025-05-01T{i % 24:02d}:00:00.000000Z") for i in range(12_000)]  # fmt: skip
    await append(admin, rows + spread(["kept"], [8]))
    posted = []

    async def ingest() -> None:
        for _ in range(50):
            resp = await admin.post("/events", json=view("live"))
            posted.append(resp.status)

    runner = admin.server.app[RUNNER]
    report, _ = await asyncio.gather(
        runner.expire(date(2025, 5, 2), trigger="http"), asyncio.gather(*(ingest() for _ in range(3)))
    )  # fmt: skip
    assert posted == [202] * 150
    assert report.events_deleted == 12_000 and report.transactions >= 3  # 5,000 rows at most each
    assert report.completed
    audit = db.execute("SELECT operation, events_deleted, before, finished_at FROM lifecycle_audit").fetchall()  # fmt: skip
    assert [(a[0], a[1], a[2]) for a in audit] == [("retention", 12_000, "2025-05-02T00:00:00.000000Z")]  # fmt: skip
    assert audit[0][3] is not None
    assert db.execute("SELECT COUNT(*) FROM events").fetchone() == (6 + 150,)


async def test_a_cutoff_at_or_before_the_horizon_deletes_nothing_more(admin, db):
    await append(admin, spread(["a"], range(1, 11)))
    await expire(admin, "2025-05-06")
    report = await expire(admin, "2025-05-04")
    assert report["events_deleted"] == 0 and report["horizon"] == HORIZON
    assert report["transactions"] == 0
    assert db.execute("SELECT COUNT(*) FROM lifecycle_audit").fetchone() == (1,)  # no empty pass
    with pytest.raises(ValueError, match="after today"):
        await expire(admin, (now().date() + timedelta(days=1)).isoformat())


async def test_status_shows_the_horizon_and_the_schedule(make_client, config):
    client = await make_client(admin_token=TOKEN, retention_days=30)
    status = await (await client.get("/admin/rollups/status", headers=AUTH)).json()
    assert status["horizon"] is None and status["retention_days"] == 30
    assert status["next_retention_at"] is not None

    today = now().date()
    old, recent = today - timedelta(days=32), today - timedelta(days=1)
    await append(client, spread(["a"], [old.day], old.isoformat()[:7]))
    await append(client, spread(["a"], [recent.day], recent.isoformat()[:7]))
    await client.server.app[RUNNER].retention_job()  # what the schedule runs

    status = await (await client.get("/admin/rollups/status", headers=AUTH)).json()
    cut = (today - timedelta(days=30)).isoformat() + "T00:00:00.000000Z"
    assert status["horizon"] == cut
    assert status["last_report"]["kind"] == "retention"
    assert status["last_report"]["trigger"] == "schedule"
    assert status["last_report"]["events_deleted"] == 6
    conn = connect(config.db)
    try:
        assert conn.execute("SELECT MIN(timestamp) >= ? FROM events", (cut,)).fetchone() == (1,)
    finally:
        conn.close()


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_retention(admin, db, config, tmp_path):
    await append(admin, spread(["a", "b"], range(1, 11)))
    code, out, err = await cli("retention", "--db", config.db, "--before", "2025-05-06", "--json")
    assert code == 0, err
    report = orjson.loads(out)
    assert report["events_deleted"] == 60 and report["horizon"] == HORIZON
    assert before_horizon(db) == 0
    status = await (await admin.get("/admin/rollups/status", headers=AUTH)).json()
    assert status["horizon"] == HORIZON  # the server sees what the CLI did

    code, out, err = await cli("retention", "--db", config.db, "--before", "2025-05-07")
    assert code == 0 and out.startswith("retention: 12 events before 2025-05-07")
    tomorrow = (now().date() + timedelta(days=1)).isoformat()
    for bad in ("2025-02-30", "yesterday", tomorrow):
        code, _, err = await cli("retention", "--db", config.db, "--before", bad)
        assert code == 2 and "--before" in err
    code, _, err = await cli("retention", "--db", str(tmp_path / "no.db"), "--before", "2025-01-01")
    assert code == 2 and "no database" in err


async def test_metrics_count_erased_and_expired_events(admin, db):
    await append(admin, spread(["a", "b"], range(1, 11)))
    await admin.post("/admin/erasures", json={"user_id": "a"}, headers=AUTH)
    await expire(admin, "2025-05-06")
    samples = await scrape(admin, AUTH)
    assert value(samples, "analytics_erased_events_total") == 60
    assert value(samples, "analytics_retention_deleted_events_total") == 30
