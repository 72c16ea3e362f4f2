"""The data lifecycle where only PostgreSQL differs: positions of transactions that commit
out of the order they took them in, whole month partitions dropped by retention, and a
partition too busy to drop emptied row by row. The behaviour both backends share is
tested in test_erasure.py, test_export.py and test_retention.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import date

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from app.config import Config
from app.keys import RUNNER, STORE
from schema.postgres.store import APPEND_SQL
from tests.databases import Database, connect
from tests.helpers import append, assert_problem
from tests.lifecycle_support import (
    AUTH,
    TOKEN,
    assert_exact,
    daily_rollup,
    event,
    quarter_rollup,
    spread,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def config(pg_database: str) -> Config:
    """The app of these tests runs on PostgreSQL only (overrides conftest's config)."""
    return Config(db=pg_database, reconcile_minutes=0, access_log=False, admin_token=TOKEN)


@pytest.fixture
def db(client: TestClient, config: Config) -> Iterator[Database]:
    conn = connect(config.db)
    yield conn
    conn.close()


@pytest.fixture
async def early_writer(config: Config) -> AsyncIterator[asyncpg.Connection]:
    """Another instance's writer connection (its own rollup slot, 15)."""
    conn = await asyncpg.connect(config.db)
    try:
        yield conn
    finally:
        await conn.close()


async def open_append(conn: asyncpg.Connection, rows: list) -> asyncpg.transaction.Transaction:  # type: ignore[type-arg]
    """Begin another writer's group commit and leave it open: its events have their
    positions (its transaction id is taken) but are not committed."""
    transaction = conn.transaction()
    await transaction.start()
    columns = [list(column) for column in zip(*rows, strict=True)]
    await conn.execute(APPEND_SQL, *columns, 15)
    return transaction


async def export_lines(client: TestClient, **params: str) -> tuple[int, str, list[dict]]:
    resp = await client.get("/admin/export", params=params, headers=AUTH)
    if resp.status != 200:
        return resp.status, "", []
    lines = [orjson.loads(line) for line in (await resp.read()).splitlines()]
    return resp.status, resp.headers["X-Export-Cursor"], lines


# --- positions across writers ---------------------------------------------------------


async def test_a_commit_that_took_its_position_first_and_commits_last_is_never_skipped(
    client: TestClient, db: Database, early_writer: asyncpg.Connection
) -> None:
    """Writer A takes its transaction id, writer B commits after it, A commits last. An
    export waits for A rather than give a cursor past A's events before they are
    visible, so resuming from any cursor given never skips A's events."""
    await append(client, [event("before", "view", "2025-05-01T00:00:00.000000Z")])
    _, first_cursor, _ = await export_lines(client)

    early = event("early", "view", "2025-05-01T01:00:00.000000Z")
    late = event("late", "view", "2025-05-01T02:00:00.000000Z")
    transaction = await open_append(early_writer, [early])
    await append(client, [late])  # B commits while A is still open
    (b_seq,) = db.execute("SELECT seq FROM events WHERE user_id = 'late'").fetchone()

    exporting = asyncio.ensure_future(export_lines(client, after=first_cursor))
    await asyncio.sleep(0.3)
    assert not exporting.done()  # waits for A: its position is below B's
    await transaction.commit()
    status, cursor, lines = await asyncio.wait_for(exporting, 10)
    assert status == 200
    assert [line.get("user_id") for line in lines[:-1]] == ["early", "late"]  # log order
    (a_seq,) = db.execute("SELECT seq FROM events WHERE user_id = 'early'").fetchone()
    assert int(first_cursor) < a_seq < b_seq <= int(cursor)

    _, _, again = await export_lines(client, after=cursor)
    assert again == [{"cursor": again[-1]["cursor"], "events": 0}]  # no overlap


@pytest.mark.server_fault  # a busy database's 503 is logged with its cause
async def test_a_transaction_left_open_makes_exports_503_never_short(
    make_client, config: Config, early_writer: asyncpg.Connection
) -> None:
    client = await make_client(busy_timeout_ms=200)
    await append(client, spread(["a"], [1]))
    transaction = await open_append(
        early_writer, [event("slow", "view", "2025-05-02T00:00:00.000000Z")]
    )
    await append(client, [event("b", "view", "2025-05-02T01:00:00.000000Z")])  # commits after
    try:
        resp = await client.get("/admin/export", headers=AUTH)
        await assert_problem(resp, 503)
        assert "Retry-After" in resp.headers
        resp = await client.post("/admin/erasures", json={"user_id": "a"}, headers=AUTH)
        await assert_problem(resp, 503)
    finally:
        await transaction.commit()
    status, _, lines = await export_lines(client)
    assert status == 200 and len(lines) - 1 == 6 + 2


# --- retention: partitions ------------------------------------------------------------


def partitions(db: Database) -> set[str]:
    sql = (
        "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'events'::regclass"
    )
    return {name for (name,) in db.execute(sql)}


def month_tables(db: Database) -> set[str]:
    """Every table named after a month of the log, attached or not."""
    sql = "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname ~ 'events_[0-9]{4}_'"
    return {name for (name,) in db.execute(sql)}


async def test_retention_drops_whole_months_and_deletes_rows_of_the_rest(
    client: TestClient, db: Database
) -> None:
    rows = spread(["a", "b"], range(1, 31), "2025-03") + spread(["a", "b"], range(1, 31), "2025-04")
    rows += spread(["a", "b"], range(1, 6), "2025-05")
    await append(client, rows)
    assert {"events_2025_03", "events_2025_04", "events_2025_05"} <= partitions(db)
    (top_april,) = db.execute(
        "SELECT MAX(seq) FROM events WHERE timestamp < '2025-05-01T00:00:00Z'"
    ).fetchone()
    daily, quarters = daily_rollup(db), quarter_rollup(db)

    report = await client.server.app[RUNNER].expire(date(2025, 5, 3))

    assert report.events_deleted == 2 * 6 * (30 + 30 + 2)
    assert report.transactions == 3  # March, April (dropped), then May 1-2 (rows)
    assert report.horizon == "2025-05-03T00:00:00.000000Z"
    names = partitions(db)
    assert "events_2025_03" not in names and "events_2025_04" not in names
    # detached, then dropped after each step's commit: no table keeps the expired rows
    assert not {"events_2025_03", "events_2025_04"} & month_tables(db)
    assert not {n for n in month_tables(db) if n.startswith("expired_")}
    assert "events_2025_05" in names and "events_default" in names
    assert db.execute("SELECT MIN(timestamp) FROM events").fetchone() == (
        "2025-05-03T00:00:00.000000Z",
    )
    assert daily_rollup(db) == daily and quarter_rollup(db) == quarters  # kept
    (expired_seq,) = db.execute("SELECT expired_seq FROM log_state").fetchone()
    assert expired_seq >= top_april
    audit = db.execute("SELECT events_deleted, finished_at IS NOT NULL FROM lifecycle_audit")
    assert audit.fetchall() == [(report.events_deleted, True)]
    # whole days are still answered from the rollups; the raw months are gone for exports
    resp = await client.get(
        "/analytics/event-counts", params={"start_date": "2025-03-01", "end_date": "2025-05-05"}
    )
    assert await resp.json() == {"total_events": len(rows)}
    resp = await client.get("/admin/export", params={"start_date": "2025-04-01"}, headers=AUTH)
    await assert_problem(resp, 409, "start_date")

    # a later append to a dropped month recreates its partition
    await append(client, [event("late", "view", "2025-04-15T00:00:00.000000Z")])
    assert "events_2025_04" in partitions(db)


async def test_a_detached_month_a_stopped_pass_left_is_dropped_by_the_next_step(
    client: TestClient, db: Database
) -> None:
    """A pass stopped between a step's commit and the drop of the month it detached
    leaves an ``expired_…`` table: the next step drops it."""
    await append(client, spread(["a"], range(1, 31), "2025-03") + spread(["a"], [1, 2], "2025-04"))
    db.execute("ALTER TABLE events DETACH PARTITION events_2025_03")
    db.execute("ALTER TABLE events_2025_03 RENAME TO expired_events_2025_03")
    assert "expired_events_2025_03" in month_tables(db)

    report = await client.server.app[RUNNER].expire(date(2025, 4, 2))

    assert report.events_deleted == 6  # April 1 (March had left the log already)
    assert "expired_events_2025_03" not in month_tables(db)


async def test_a_month_whose_expired_name_is_still_taken_is_emptied_row_by_row(
    make_client, config: Config
) -> None:
    """An ``expired_events_2025_03`` a backup still holds cannot be dropped, and an old
    event has recreated ``events_2025_03`` meanwhile (found by review: the detach's rename
    failed with a duplicate name and every retention pass with it): the step deletes
    the month's rows instead, and the pass completes."""
    client = await make_client(busy_timeout_ms=200)
    db = connect(config.db)
    try:
        await append(client, spread(["a"], range(1, 31), "2025-03") + spread(["a"], [1], "2025-04"))
        db.execute("ALTER TABLE events DETACH PARTITION events_2025_03")
        db.execute("ALTER TABLE events_2025_03 RENAME TO expired_events_2025_03")
        db.execute(
            "CREATE TABLE events_2025_03 PARTITION OF events FOR VALUES "
            "FROM ('2025-03-01T00:00:00Z') TO ('2025-04-01T00:00:00Z')"
        )
        await append(client, [event("late", "view", "2025-03-15T00:00:00.000000Z")])
        backup = await asyncpg.connect(config.db)
        try:
            async with backup.transaction():  # pg_dump's lock on the table it copies
                await backup.execute("LOCK TABLE expired_events_2025_03 IN ACCESS SHARE MODE")
                report = await client.server.app[RUNNER].expire(date(2025, 4, 1))
        finally:
            await backup.close()
        assert report.completed and report.events_deleted == 1
        assert (
            db.execute("SELECT user_id FROM events WHERE timestamp < '2025-04-01'").fetchall() == []
        )
    finally:
        db.close()


async def test_a_month_too_busy_to_drop_is_emptied_row_by_row(
    client: TestClient, db: Database, config: Config
) -> None:
    await append(client, spread(["a"], range(1, 31), "2025-04") + spread(["a"], [1], "2025-05"))
    reader = await asyncpg.connect(config.db)
    try:
        async with reader.transaction():  # a long read holds the log: DROP cannot have it
            await reader.fetchval("SELECT COUNT(*) FROM events")
            runner = client.server.app[RUNNER]
            report = await runner.expire(date(2025, 5, 1))
    finally:
        await reader.close()
    assert report.events_deleted == 6 * 30 and report.completed
    assert "events_2025_04" in partitions(db)  # still there, empty
    assert db.execute("SELECT COUNT(*) FROM events").fetchone() == (6,)
    assert_exact_live(db)


def assert_exact_live(db: Database) -> None:
    """Rollups of the days still in the log equal the log (retention kept the others)."""
    live = {k: v for k, v in daily_rollup(db).items() if k[0] >= "2025-05-01"}
    assert live == {("2025-05-01", t): n for t, n in (("view", 3), ("click", 2), ("location", 1))}


async def test_erasure_and_retention_keep_both_rollups_exact_across_slots(
    client: TestClient, db: Database, early_writer: asyncpg.Connection
) -> None:
    """Counts spread over two writers' slots: erasure rewrites each touched key into one
    slot and leaves untouched keys alone."""
    await append(client, spread(["a", "b"], [1, 2]))
    transaction = await open_append(early_writer, spread(["a", "c"], [2, 3]))
    await transaction.commit()
    slots = db.execute("SELECT DISTINCT slot FROM daily_event_counts ORDER BY 1").fetchall()
    assert len(slots) == 2
    resp = await client.post("/admin/erasures", json={"user_id": "a"}, headers=AUTH)
    assert (await resp.json())["events_deleted"] == 6 * 2 + 6 * 2
    assert_exact(db)
    # May 2 was in both slots: now one row per key
    rows = db.execute(
        "SELECT event_type, COUNT(*) FROM daily_event_counts WHERE day = '2025-05-02' GROUP BY 1"
    ).fetchall()
    assert {n for _, n in rows} == {1}
    store = client.server.app[STORE]
    assert not (await store.recount_day("2025-05-02", repair=False)).differs


# --- review: lock order of erasure against a writer of another instance ----------------


async def test_erasure_and_a_writer_of_the_same_keys_never_deadlock(
    client: TestClient, db: Database, early_writer: asyncpg.Connection, config: Config
) -> None:
    """The writer's APPEND_SQL upserts the 15-minute rollup (the main statement) before
    the daily one (a CTE the main statement does not read: PostgreSQL runs it to
    completion after the main statement). An erasure step that locks the daily rows
    first, then the 15-minute rows, can therefore hold a daily row a writer waits for
    while waiting for a 15-minute row that writer holds."""
    gone_1 = event("gone", "view", "2025-05-01T10:00:00.000000Z")  # bucket B1
    gone_2 = event("gone", "view", "2025-05-01T10:15:00.000000Z")  # bucket B2
    await append(client, [gone_1, gone_2])  # this instance's slot
    # the other instance's slot rows of (May 1, view) and (B2, view) exist
    first = await open_append(early_writer, [event("x", "view", "2025-05-01T10:16:00.000000Z")])
    await first.commit()
    blocker = await asyncpg.connect(config.db)
    try:
        # Hold every slot row of (B1, view) so the erasure stops between its two tables.
        await blocker.execute("BEGIN")
        await blocker.execute(
            "SELECT 1 FROM quarter_hour_event_counts WHERE bucket = "
            "extract(epoch FROM timestamptz '2025-05-01 10:00Z')::bigint FOR UPDATE"
        )
        erasing = asyncio.ensure_future(
            client.post("/admin/erasures", json={"user_id": "gone"}, headers=AUTH)
        )
        await asyncio.sleep(0.5)  # the erasure holds the daily rows, waits for B1
        writing = asyncio.ensure_future(
            open_append(early_writer, [event("y", "view", "2025-05-01T10:20:00.000000Z")])
        )
        await asyncio.sleep(0.5)  # the writer holds (B2, view, 15), waits for the daily row
        await blocker.execute("ROLLBACK")
        try:
            transaction = await asyncio.wait_for(writing, 10)
        except asyncpg.DeadlockDetectedError:
            pytest.fail("a writer's group commit was aborted as a deadlock victim")
        await transaction.commit()
        resp = await asyncio.wait_for(erasing, 10)
        assert (await resp.json())["events_deleted"] == 2
    finally:
        await blocker.close()
    assert_exact(db)


# --- a database moved to another server ---------------------------------------------------


async def test_positions_continue_above_rows_restored_from_a_server_with_more_transactions(
    make_client, config: Config
) -> None:
    """pg_dump/pg_restore (or logical replication) into a new server keeps each row's
    position but not the transaction-id counter it came from (found by review: an erasure
    then answered ``events_deleted: 0`` and left the events, an export left them out).
    Simulated: rows as a restore's COPY writes them, with positions of ids a million ahead;
    the next start raises the offset, and erasure and export see every event."""
    first = await make_client()
    await first.close()
    conn = await asyncpg.connect(config.db)
    try:
        await conn.execute(
            """
            INSERT INTO events (seq, event_id, user_id, event_type, timestamp, payload)
            VALUES ((pg_current_xact_id()::text::bigint + 1000000) * 65536 + 1,
                    gen_random_uuid(), 'restored', 'view', '2025-05-01T10:00:00Z', '{"url": "/"}'),
                   ((pg_current_xact_id()::text::bigint + 1000000) * 65536 + 2,
                    gen_random_uuid(), 'kept', 'view', '2025-05-01T10:00:00Z', '{"url": "/"}');
            INSERT INTO daily_event_counts VALUES ('2025-05-01', 'view', 0, 2);
            INSERT INTO quarter_hour_event_counts
            VALUES (extract(epoch FROM timestamptz '2025-05-01T10:00:00Z')::bigint, 'view', 0, 2);
            """
        )
    finally:
        await conn.close()
    client = await make_client()  # the start after the restore
    await append(
        client,
        [
            event("restored", "view", "2025-05-01T11:00:00.000000Z"),
            event("new", "view", "2025-05-01T11:00:00.000000Z"),
        ],
    )
    db = connect(config.db)
    try:
        order = db.execute("SELECT user_id FROM events ORDER BY seq").fetchall()
        assert [u for (u,) in order[:2]] == ["restored", "kept"]  # new events numbered above
        response = await client.get("/admin/export", headers=AUTH)
        lines = [orjson.loads(line) for line in (await response.read()).splitlines()]
        exported = [line["user_id"] for line in lines if "user_id" in line]
        assert exported == [u for (u,) in order]  # every event, in log order
        erased = await client.post("/admin/erasures", json={"user_id": "restored"}, headers=AUTH)
        assert erased.status == 200 and (await erased.json())["events_deleted"] == 2
        left = db.execute("SELECT user_id FROM events ORDER BY seq").fetchall()
        assert left == [("kept",), ("new",)]
        assert_exact(db)
    finally:
        db.close()
