"""Erasure: POST /admin/erasures and ``python -m app erase`` delete exactly one user's events
from the log and from both rollups, in bounded transactions that are each consistent; the
append-only trigger still refuses every other UPDATE and DELETE."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from app.config import Config
from app.keys import RUNNER
from rollup.erasure import MOST_STEP
from rollup.steps import TARGET_MS, StepSize
from tests.databases import Database, connect
from tests.helpers import append, assert_problem, view
from tests.lifecycle_support import (
    AUTH,
    TOKEN,
    assert_exact,
    by_type,
    daily_rollup,
    event,
    minus,
    quarter_rollup,
    spread,
    user_counts,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def admin(make_client) -> TestClient:
    return await make_client(admin_token=TOKEN)


@pytest.fixture
def db(admin: TestClient, config: Config) -> Iterator[Database]:
    conn = connect(config.db)
    yield conn
    conn.close()


async def erase(client: TestClient, user_id: str) -> dict:
    resp = await client.post("/admin/erasures", json={"user_id": user_id}, headers=AUTH)
    assert resp.status == 200, await resp.text()
    return await resp.json()


def events_of(db: Database, user_id: str) -> int:
    return db.execute("SELECT COUNT(*) FROM events WHERE user_id = ?", (user_id,)).fetchone()[0]


async def test_counts_drop_by_exactly_the_users_events(admin, db):
    rows = spread(["alice", "bob", "carol"], range(1, 8))
    rows += [event("bob", "view", "2025-05-03T12:00:00.000000Z")]  # bob: one more
    await append(admin, rows)
    assert_exact(db)
    daily, quarters = daily_rollup(db), quarter_rollup(db)
    types_before = await by_type(admin)
    day_before = await by_type(admin, start_date="2025-05-03", end_date="2025-05-03")

    body = await erase(admin, "bob")

    gone = user_counts(rows, "bob")
    assert body["user_id"] == "bob"
    assert body["events_deleted"] == sum(gone.values()) == 43
    assert body["erased_at"].endswith("Z") and len(body["erased_at"]) == 27
    assert events_of(db, "bob") == 0
    assert daily_rollup(db) == minus(daily, gone)
    assert sum(quarter_rollup(db).values()) == sum(quarters.values()) - 43
    assert_exact(db)  # per day and per 15-minute bucket, rollups == log
    types_after = await by_type(admin)
    for event_type, n in types_before.items():
        bobs = sum(v for (_, t), v in gone.items() if t == event_type)
        assert types_after.get(event_type, 0) == n - bobs
    day_after = await by_type(admin, start_date="2025-05-03", end_date="2025-05-03")
    assert day_after == {"view": day_before["view"] - 4, "click": day_before["click"] - 2,
                         "location": day_before["location"] - 1}  # fmt: skip
    # a cut bucket (answered from the log) agrees too
    cut = await admin.get(
        "/analytics/event-counts", params={"start_date": "2025-05-03T09:07:00Z",
                                           "end_date": "2025-05-03T09:14:00Z"})  # fmt: skip
    assert (await cut.json()) == {"total_events": 2}  # alice's and carol's 09:07:30 views


async def test_repeating_an_erasure_deletes_nothing_and_later_events_are_kept(admin, db):
    await append(admin, spread(["dave", "erin"], range(1, 3)))
    assert (await erase(admin, "dave"))["events_deleted"] == 12
    assert (await erase(admin, "dave"))["events_deleted"] == 0
    resp = await admin.post("/events", json=view("dave"))
    assert resp.status == 202
    assert events_of(db, "dave") == 1  # stored as usual
    assert (await by_type(admin))["view"] == 3 * 2 + 1
    assert_exact(db)


async def test_the_audit_keeps_a_digest_never_the_id(admin, db, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "frank@example.com"
    await append(admin, spread([secret], [1]))
    await erase(admin, secret)
    await erase(admin, secret)
    rows = db.execute(
        "SELECT operation, started_at, finished_at, events_deleted, user_id_sha256, before "
        "FROM lifecycle_audit ORDER BY id"
    ).fetchall()
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert [(r[0], r[3], r[4], r[5]) for r in rows] == [
        ("erasure", 6, digest, None),
        ("erasure", 0, digest, None),
    ]
    assert all(r[1] <= r[2] for r in rows)  # finished
    assert secret not in str(rows)
    assert all(secret not in record.getMessage() for record in caplog.records)
    status = await (await admin.get("/admin/rollups/status", headers=AUTH)).json()
    assert status["last_report"]["kind"] == "erasure" and secret not in str(status)


async def test_a_user_with_50000_events_is_erased_in_bounded_transactions(admin, db):
    big = [
        event("heavy", ("view", "click", "location")[i % 3],
              f"2025-05-{1 + i % 20:02d}T{(i // 20) % 24:02d}:{(i // 480) % 60:02d}:00.{i:06d}Z")
        for i in range(50_000)
    ]  # fmt: skip
    others = spread(["light-1", "light-2"], range(1, 21))
    await append(admin, big[:25_000] + others + big[25_000:])
    before = daily_rollup(db)

    body = await erase(admin, "heavy")

    assert body["events_deleted"] == 50_000
    assert events_of(db, "heavy") == 0
    assert daily_rollup(db) == minus(before, user_counts(big, "heavy"))
    assert_exact(db)
    report = admin.server.app[RUNNER].last_report
    assert report is not None and report["transactions"] >= 50_000 // MOST_STEP  # bounded
    assert db.execute("SELECT events_deleted FROM lifecycle_audit").fetchall() == [(50_000,)]


async def test_erasure_racing_ingest_of_the_same_user(admin, db, config):
    """Ingest of the erased user goes on during the erasure: every event acknowledged before
    it began is gone, every event sent after its answer is kept, nothing is lost or counted
    twice, and every snapshot taken meanwhile satisfies the exactness invariant."""
    stored = [
        event("racer", ("view", "click")[i % 2], f"2025-05-{1 + i % 9:02d}T10:{i % 60:02d}:00Z")
        for i in range(20_000)
    ]
    stored = [(e, u, t, ts[:19] + ".000000Z", p) for e, u, t, ts, p in stored]
    await append(admin, stored + spread(["bystander"], range(1, 10)))

    acked: list[tuple[str, str]] = []  # (event_id, phase) of racer's acknowledged events
    phase = "before"
    stop, warmed_up = asyncio.Event(), asyncio.Event()

    async def ingest(user: str) -> None:
        while not stop.is_set():
            resp = await admin.post("/events", json=view(user))
            assert resp.status == 202, await resp.text()
            if user == "racer":
                acked.append(((await resp.json())["event_id"], phase))
                if len(acked) >= 20:
                    warmed_up.set()

    snapshots = 0

    def check_snapshots() -> None:
        nonlocal snapshots
        checker_conn = connect(config.db)
        try:
            while not stop.is_set():
                assert_exact(checker_conn)  # one read snapshot per check
                snapshots += 1
        finally:
            checker_conn.close()

    tasks = [asyncio.create_task(ingest(u)) for u in ("racer", "racer", "bystander")]
    checker = asyncio.create_task(asyncio.to_thread(check_snapshots))
    await warmed_up.wait()
    acked_before = {e for e, _ in acked}
    phase = "during"
    body = await erase(admin, "racer")
    phase = "after"
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*tasks, checker)
    after = [e for e, p in acked if p == "after"]

    present = {r[0] for r in db.execute("SELECT event_id FROM events WHERE user_id = 'racer'")}
    assert not acked_before & present  # acknowledged before the erasure: erased
    assert set(after) <= present  # sent after its answer: stored as usual
    total = len(stored) + len(acked)
    assert body["events_deleted"] + len(present) == total  # nothing lost, nothing twice
    assert any(p == "during" for _, p in acked)  # ingest really interleaved with it
    assert snapshots > 0
    assert_exact(db)


def no_permit_left(db: Database) -> bool:
    """SQLite: no permit row was committed. PostgreSQL: the sanctioned-delete setting
    (SET LOCAL) is not set outside the lifecycle's own transactions."""
    if db.backend == "sqlite":
        return db.execute("SELECT COUNT(*) FROM lifecycle_permit").fetchone() == (0,)
    sql = "SELECT coalesce(current_setting('analytics.sanctioned_delete', true), '')"
    return db.execute(sql).fetchone() == ("",)


async def test_the_log_stays_append_only_outside_the_lifecycle(admin, db):
    await append(admin, spread(["gina", "keep"], [1]))
    await erase(admin, "nobody")
    for sql in ("DELETE FROM events", "UPDATE events SET user_id = 'x'"):
        with pytest.raises(Exception, match="append-only"):
            db.execute(sql)
    assert no_permit_left(db)
    await erase(admin, "gina")
    with pytest.raises(Exception, match="append-only"):
        db.execute("UPDATE events SET user_id = 'x'")  # erasure never UPDATEs: none allowed
    assert no_permit_left(db)
    assert events_of(db, "keep") == 6


async def test_a_position_is_never_given_twice_after_the_newest_events_go(admin, db):
    await append(admin, spread(["old"], [1]) + spread(["newest"], [2]))
    (top,) = db.execute("SELECT MAX(seq) FROM events").fetchone()
    await erase(admin, "newest")  # the rows with the highest seqs
    assert db.execute("SELECT MAX(seq) FROM events").fetchone()[0] < top
    await append(admin, [event("later", "view", "2025-05-03T00:00:00.000000Z")])
    (later,) = db.execute("SELECT seq FROM events WHERE user_id = 'later'").fetchone()
    assert later > top
    if db.backend == "sqlite":  # the next number (PostgreSQL: the next transaction's)
        assert later == top + 1
    assert_exact(db)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "user_id"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": "   "}, "user_id"),
        ({"user_id": 42}, "user_id"),
        ({"user_id": "x" * 257}, "user_id"),
        ({"user_id": "x", "dry_run": True}, "dry_run"),
        ([], "body"),
    ],
    ids=["missing", "empty", "blank", "number", "too-long", "unknown-field", "not-an-object"],
)
async def test_a_bad_erasure_request_is_400_and_erases_nothing(admin, db, body, field):
    await append(admin, spread(["x"], [1]))
    resp = await admin.post("/admin/erasures", json=body, headers=AUTH)
    await assert_problem(resp, 400, field)
    assert events_of(db, "x") == 6


async def test_erasure_needs_json_and_the_admin_token(admin, client):
    resp = await admin.post("/admin/erasures", data=b"user_id=x", headers=AUTH)
    await assert_problem(resp, 415)
    resp = await admin.post(
        "/admin/erasures", data=b"{", headers=AUTH | {"Content-Type": "application/json"}
    )
    await assert_problem(resp, 400, "body")
    resp = await admin.post("/admin/erasures", json={"user_id": "x"})
    await assert_problem(resp, 401)
    resp = await admin.post("/admin/erasures?user_id=x", json={"user_id": "x"}, headers=AUTH)
    await assert_problem(resp, 400, "user_id")
    resp = await client.post("/admin/erasures", json={"user_id": "x"}, headers=AUTH)
    await assert_problem(resp, 403)  # no token configured: the admin API is off


async def test_cli_erase_while_the_server_runs(admin, db, config):
    await append(admin, spread(["hank", "ivy"], range(1, 4)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "erase", "--user-id", "hank", "--db", config.db,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode().startswith('{"user_id":"hank","events_deleted":18,"erased_at":"')
    assert "hank" not in err.decode()  # the log line names a digest, not the id
    assert events_of(db, "hank") == 0 and events_of(db, "ivy") == 18
    assert_exact(db)


@pytest.mark.parametrize("user_id", ["", " \t", "x" * 257])
async def test_cli_erase_refuses_a_user_id_no_event_can_have(client, db, config, user_id):
    """The CLI checks ``--user-id`` as ``POST /admin/erasures`` does (found by an outside
    probe: it erased ``" "`` and wrote an audit row for it): exit 2, nothing audited."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "erase", "--user-id", user_id, "--db", config.db,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 2, (out, err)
    assert "--user-id" in err.decode() and out == b""
    assert db.execute("SELECT COUNT(*) FROM lifecycle_audit").fetchone() == (0,)


@pytest.mark.sqlite_only("SQLite's permit row (PostgreSQL's setting is SET LOCAL: never committed)")
async def test_a_stray_committed_permit_is_revoked_at_startup(make_client, config):
    """Someone committed a permit row by hand: the next start makes the log append-only
    again (and says so)."""
    first = await make_client()
    await first.close()
    conn = connect(config.db)
    conn.execute("INSERT INTO lifecycle_permit (id) VALUES (1)")
    client = await make_client(admin_token=TOKEN)
    await append(client, spread(["x"], [1]))
    with pytest.raises(Exception, match="append-only"):
        conn.execute("DELETE FROM events")
    conn.close()


def test_step_sizes_follow_the_time_budget():
    size = StepSize(500, 50, 5_000)
    size.after(TARGET_MS * 4)  # too slow: halve at most
    assert size.rows == 250
    size.after(TARGET_MS / 10)  # fast: double at most
    assert size.rows == 500
    size.after(TARGET_MS)  # on budget: keep
    assert size.rows == 500
    for _ in range(20):
        size.after(0.0)
    assert size.rows == 5_000  # never beyond the bound
    for _ in range(20):
        size.after(10_000.0)
    assert size.rows == 50
