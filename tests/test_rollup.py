"""Rollup lifecycle: the recount primitive, reconcile, rebuild (also while ingesting),
dry runs, the scheduled job and the command line."""

from __future__ import annotations

import asyncio
import sys
from datetime import date
from pathlib import Path

import orjson
import pytest
import uuid_utils
from aiohttp.test_utils import TestClient

from app.config import Config
from app.keys import RUNNER, STORE
from rollup import recount
from schema.storage import EventRow
from schema.timestamps import parse_day
from tests.databases import Database, connect
from tests.helpers import append, log_by_day
from tests.helpers import rollup_by_day as rollup

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PAYLOADS = {
    "view": '{"url": "https://example.com/"}',
    "click": "{}",
    "location": '{"latitude": 1.0, "longitude": 2.0}',
}


def row(event_type: str, timestamp: str) -> EventRow:
    return (str(uuid_utils.uuid7()), "u1", event_type, timestamp, PAYLOADS[event_type])


def may(day: int, hour: int = 12, second: int = 0) -> str:
    return f"2025-05-{day:02d}T{hour:02d}:00:{second:02d}.000000Z"


@pytest.fixture
def seed_rows() -> list[EventRow]:
    """May 1–5: view ×3, click ×2, location ×1 per day, with edge-of-day timestamps."""
    rows = []
    for day in range(1, 6):
        rows += [row("view", may(day, 0)), row("view", may(day, 12)), row("view", may(day, 23))]
        rows += [row("click", may(day, 6)), row("click", f"2025-05-{day:02d}T23:59:59.999999Z")]
        rows.append(row("location", f"2025-05-{day:02d}T00:00:00.000000Z"))
    return rows


def tamper(db: Database) -> None:
    """A wrong count, a missing row, a row for a day with no events, a stray type."""
    db.execute(
        "UPDATE daily_event_counts SET count = 7 WHERE day = '2025-05-01' AND event_type = 'view'"
    )
    db.execute("DELETE FROM daily_event_counts WHERE day = '2025-05-02' AND event_type = 'click'")
    db.execute(f"{INSERT_DAILY} VALUES ('2025-04-20', 'view', 4)")
    db.execute(f"{INSERT_DAILY} VALUES ('2025-05-04', 'scroll', 2)")


TAMPERED = {
    "2025-04-20": ({"view": 4}, {}),
    "2025-05-01": ({"view": 7, "click": 2, "location": 1}, {"view": 3, "click": 2, "location": 1}),
    "2025-05-02": ({"view": 3, "location": 1}, {"view": 3, "click": 2, "location": 1}),
    "2025-05-04": (
        {"view": 3, "click": 2, "location": 1, "scroll": 2},
        {"view": 3, "click": 2, "location": 1},
    ),
}


INSERT_DAILY = "INSERT INTO daily_event_counts (day, event_type, count)"


def changes(report: dict) -> dict[str, tuple[dict[str, int], dict[str, int]]]:
    return {c["date"]: (c["before"], c["after"]) for c in report["days_changed"]}


async def admin(client: TestClient, path: str, body: dict | None = None) -> dict:
    resp = await client.post(f"/admin/rollups/{path}", json=body, headers=AUTH)
    assert resp.status == 200, await resp.text()
    return await resp.json()


@pytest.fixture
async def admin_client(make_client) -> TestClient:
    return await make_client(admin_token=TOKEN)


@pytest.fixture
def conn(admin_client: TestClient, config: Config):
    """A direct connection to the served database (opened after the app migrated it)."""
    db = connect(config.db)
    yield db
    db.close()


# --- the primitive -----------------------------------------------------------------


async def test_recount_day_repairs_one_day_in_one_transaction(admin_client, conn, seed_rows):
    await append(admin_client, seed_rows)
    tamper(conn)
    store = admin_client.server.app[STORE]
    result = await store.recount_day("2025-05-04", repair=True)
    assert result.counted == {"view": 3, "click": 2, "location": 1}
    assert result.repaired and result.stored["scroll"] == 2
    assert result.held_ms >= 0
    assert not (await store.recount_day("2025-05-04", repair=True)).differs
    # Other days were not touched.
    assert rollup(conn)[("2025-05-01", "view")] == 7


async def test_days_to_check_covers_log_span_and_rollup_days(admin_client, conn, seed_rows):
    await append(admin_client, [*seed_rows, row("view", may(9))])
    conn.execute(f"{INSERT_DAILY} VALUES ('2024-12-31', 'view', 1)")
    store = admin_client.server.app[STORE]
    days = await store.days_to_check(None, None)
    assert days == ["2024-12-31"] + [f"2025-05-{d:02d}" for d in range(1, 10)]
    assert await store.days_to_check(date(2025, 5, 3), date(2025, 5, 4)) == [
        "2025-05-03",
        "2025-05-04",
    ]
    assert await store.days_to_check(date(2026, 1, 1), None) == []


def test_parse_day_is_strict():
    assert parse_day("2025-05-01") == date(2025, 5, 1)
    for bad in (
        "2025-02-30",
        "20250501",
        "2025-5-1",
        "2025-05-01T00:00:00Z",
        " 2025-05-01",
        "2025-05-01\n",
        "2025-05-01 ",
        "２０２５-05-01",
        "",
    ):
        assert parse_day(bad) is None


async def test_a_stop_request_ends_a_pass_between_days(admin_client, conn, seed_rows):
    await append(admin_client, seed_rows)
    stop = asyncio.Event()
    stop.set()
    report = await recount.run(admin_client.server.app[STORE], "rebuild", stop=stop)
    assert report.completed is False and report.days_checked == 0


# --- reconcile and rebuild ---------------------------------------------------------


async def test_reconcile_reports_exactly_the_tampered_days_and_repairs_them(
    admin_client, conn, seed_rows
):
    await append(admin_client, seed_rows)
    tamper(conn)
    report = await admin(admin_client, "reconcile")
    assert changes(report) == TAMPERED
    assert report["dry_run"] is False and report["kind"] == "reconcile"
    assert report["days_checked"] == 6  # May 1–5 and April 20
    assert report["events_counted"] == len(seed_rows)
    assert rollup(conn) == log_by_day(conn)
    again = await admin(admin_client, "reconcile")
    assert again["days_changed"] == [] and again["days_checked"] == 5


async def test_rebuild_restores_a_deleted_rollup_exactly(admin_client, conn, seed_rows):
    await append(admin_client, seed_rows)
    expected = log_by_day(conn)
    conn.execute("DELETE FROM daily_event_counts")
    report = await admin(admin_client, "rebuild")
    assert len(report["days_changed"]) == 5
    assert rollup(conn) == expected == log_by_day(conn)
    # The analytics API answers from the rebuilt rollup again.
    resp = await admin_client.get(
        "/analytics/event-counts", params={"start_date": "2025-05-01", "end_date": "2025-05-05"}
    )
    assert (await resp.json())["total_events"] == len(seed_rows)


async def test_rebuild_of_a_range_touches_only_that_range(admin_client, conn, seed_rows):
    await append(admin_client, seed_rows)
    conn.execute("DELETE FROM daily_event_counts")
    report = await admin(
        admin_client, "rebuild", {"start_date": "2025-05-02", "end_date": "2025-05-03"}
    )
    assert [c["date"] for c in report["days_changed"]] == ["2025-05-02", "2025-05-03"]
    assert report["start_date"] == "2025-05-02" and report["end_date"] == "2025-05-03"
    assert {d for d, _ in rollup(conn)} == {"2025-05-02", "2025-05-03"}


async def test_dry_run_changes_nothing(admin_client, conn, seed_rows):
    await append(admin_client, seed_rows)
    tamper(conn)
    before = rollup(conn)
    for path in ("reconcile", "rebuild"):
        report = await admin(admin_client, path, {"dry_run": True})
        assert report["dry_run"] is True
        assert changes(report) == TAMPERED
    assert rollup(conn) == before


async def test_rebuild_while_ingesting_is_exact_and_no_request_fails(admin_client, conn, seed_rows):
    # Some bulk, so the rebuild and the POSTs overlap; "today" gets events during it.
    bulk = [
        row(("view", "click", "location")[i % 3], may(1 + i % 28, i % 24, i % 60))
        for i in range(30_000)
    ]
    await append(admin_client, [*seed_rows, *bulk])
    conn.execute("DELETE FROM daily_event_counts")

    base = len(seed_rows) + len(bulk)
    posted = asyncio.Event()

    async def post(i: int) -> int:
        body = {"user_id": f"u{i}", "event_type": "click", "payload": {"element_id": "b"}}
        resp = await admin_client.post("/events", json=body)
        await resp.read()
        return resp.status

    async def posts() -> list[int]:
        try:
            return await asyncio.gather(*(post(i) for i in range(300)))
        finally:
            posted.set()

    async def rebuilds() -> list[dict]:
        reports = [await admin(admin_client, "rebuild")]
        while not posted.is_set():  # keep rebuilding for as long as POSTs are acknowledged
            reports.append(await admin(admin_client, "rebuild"))
        return reports

    statuses, reports = await asyncio.gather(posts(), rebuilds())
    assert statuses == [202] * 300
    assert len(reports[0]["days_changed"]) >= 28  # the first one rebuilt every May day
    # Rebuilds ran while today's day was receiving events (observed: counts of today such
    # as 0, 198, 300 across the passes); whatever the interleaving, the end result is exact.
    assert reports[0]["events_counted"] >= base
    assert rollup(conn) == log_by_day(conn)
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == base + 300
    for report in reports:
        assert report["longest_transaction_ms"] < 1000


async def test_a_day_whose_events_are_gone_from_the_rollup_side_is_removed(admin_client, conn):
    """A rollup row for a day without events is deleted, not left at a stale count."""
    conn.execute(f"{INSERT_DAILY} VALUES ('2025-01-01', 'click', 9)")
    report = await admin(admin_client, "reconcile")
    assert changes(report) == {"2025-01-01": ({"click": 9}, {})}
    assert rollup(conn) == {}


@pytest.mark.sqlite_only("a PostgreSQL date column cannot hold a key that is not a date")
async def test_a_rollup_key_that_is_not_a_day_is_removed(admin_client, conn):
    conn.execute(f"{INSERT_DAILY} VALUES ('2025-01-01', 'click', 9)")
    conn.execute(f"{INSERT_DAILY} VALUES ('not-a-day', 'view', 1)")
    report = await admin(admin_client, "reconcile")
    assert changes(report) == {"2025-01-01": ({"click": 9}, {}), "not-a-day": ({"view": 1}, {})}
    assert rollup(conn) == {}


async def test_reconcile_logs_a_summary_and_a_warning_per_repaired_day(
    admin_client, conn, seed_rows, caplog
):
    await append(admin_client, seed_rows)
    tamper(conn)
    caplog.set_level("INFO", logger="rollup")
    await admin(admin_client, "reconcile")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 4
    assert any("2025-05-01 repaired: view 7 -> 3" in w for w in warnings)
    summaries = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert any("6 days checked, 4 repaired, 30 events counted" in s for s in summaries)
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


# --- the scheduler -----------------------------------------------------------------


async def test_scheduler_reconciles_on_its_interval_and_stops_on_shutdown(make_client, config):
    client = await make_client(admin_token=TOKEN, reconcile_minutes=0.005)  # every 0.3 s
    runner = client.server.app[RUNNER]
    await append(client, [row("view", may(3))])
    db = connect(config.db)
    try:
        db.execute("UPDATE daily_event_counts SET count = 5")
        status = {}
        for _ in range(100):
            resp = await client.get("/admin/rollups/status", headers=AUTH)
            status = await resp.json()
            if status["last_report"] and status["last_report"]["trigger"] == "schedule":
                break
            await asyncio.sleep(0.05)
        assert status["reconcile_minutes"] == 0.005
        assert status["next_run_at"] is not None
        assert changes(status["last_report"]) == {"2025-05-03": ({"view": 5}, {"view": 1})}
        assert rollup(db) == {("2025-05-03", "view"): 1}
        await asyncio.sleep(0.7)
        assert runner.scheduled_runs >= 2

        await client.close()
        assert runner.next_run_at() is None and not runner.running
        runs = runner.scheduled_runs
        await asyncio.sleep(0.7)
        assert runner.scheduled_runs == runs
    finally:
        db.close()


async def test_shutdown_during_a_pass_waits_for_the_current_day_only(make_client, config):
    client = await make_client(admin_token=TOKEN)
    runner = client.server.app[RUNNER]
    db = connect(config.db)
    try:  # 20,000 stray days: 20,000 transactions, so the pass is still running at shutdown
        db.execute("BEGIN")
        db.executemany(
            f"{INSERT_DAILY} VALUES (?, 'view', 1)",
            [(date.fromordinal(700_000 + i).isoformat(),) for i in range(20_000)],
        )
        db.execute("COMMIT")
        task = asyncio.create_task(runner.run("rebuild"))
        await asyncio.sleep(0.05)
        assert runner.running
        await client.close()
        report = await task
        assert not runner.running
        assert report.completed is False  # it stopped between two days
        assert report.days_checked == len(report.days_changed) < 20_000
        remaining = db.execute("SELECT COUNT(*) FROM daily_event_counts").fetchone()[0]
        assert remaining == 20_000 - report.days_checked  # every finished day is consistent
    finally:
        db.close()


async def test_scheduler_is_off_when_interval_is_zero(admin_client):
    resp = await admin_client.get("/admin/rollups/status", headers=AUTH)
    body = await resp.json()
    assert body == {
        "reconcile_minutes": 0.0,
        "next_run_at": None,
        "running": False,
        "last_report": None,
        "last_error": None,
        "retention_days": 0,
        "next_retention_at": None,
        "horizon": None,
    }


@pytest.mark.server_fault
async def test_a_failing_scheduled_pass_does_not_crash_the_app(admin_client, conn, seed_rows):
    runner = admin_client.server.app[RUNNER]
    await append(admin_client, seed_rows)
    conn.execute("ALTER TABLE daily_event_counts RENAME TO broken")  # every recount fails
    await runner.reconcile_job()  # logged, not raised
    resp = await admin_client.get("/admin/rollups/status", headers=AUTH)
    body = await resp.json()
    assert body["last_error"]["kind"] == "reconcile"
    assert "daily_event_counts" not in body["last_error"]["detail"]
    assert (await admin_client.get("/healthz")).status == 200


# --- the command line --------------------------------------------------------------


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_reconcile_and_rebuild_while_the_server_runs(
    admin_client, conn, config, seed_rows
):
    await append(admin_client, seed_rows)
    tamper(conn)
    before = rollup(conn)

    code, out, err = await cli("reconcile", "--db", config.db, "--dry-run")
    assert code == 0, err
    assert out.startswith("rollup reconcile: 6 days checked, 4 differ (dry run, not repaired)")
    assert "  2025-05-01: view 7 -> 3" in out
    assert "  2025-05-04: scroll 2 -> -" in out
    assert rollup(conn) == before

    code, out, err = await cli("reconcile", "--db", config.db, "--json")
    assert code == 0, err
    assert changes(orjson.loads(out)) == TAMPERED
    assert rollup(conn) == log_by_day(conn)

    conn.execute("DELETE FROM daily_event_counts")
    code, out, err = await cli(
        "rebuild", "--db", config.db, "--start", "2025-05-01", "--end", "2025-05-05"
    )
    assert code == 0, err
    assert "5 days checked, 5 repaired, 30 events counted" in out
    assert "rollup rebuild: 2025-05-03 repaired" in err  # the warning, on stderr
    assert rollup(conn) == log_by_day(conn)


async def test_cli_rejects_bad_arguments(tmp_path):
    code, _, err = await cli("rebuild", "--db", str(tmp_path / "x.db"), "--start", "2025-02-30")
    assert code == 2 and "not a date" in err
    code, _, err = await cli("reconcile", "--db", str(tmp_path / "missing.db"))
    assert code == 2 and "no database" in err
    assert not (tmp_path / "missing.db").exists()
