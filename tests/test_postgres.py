"""What only the PostgreSQL backend has: migrations raced by instances starting at once,
monthly partitions, rollup slots, idempotency keys raced by two stores, the job lock of
rollup passes, the sanctioned-delete hook, lost connections, an unreachable server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import psycopg
import pytest
from aiohttp.test_utils import TestClient

from app.config import Config
from app.keys import STORE
from rollup import passes, recount
from schema.postgres.migrate import latest_version
from schema.postgres.store import PostgresStore
from schema.storage import CountPlan, StorageUnavailableError, WriteGroup
from tests.databases import Database, connect
from tests.helpers import log_by_day, rollup_by_day, row, stored, view
from tests.postgres_cluster import PostgresCluster, free_port

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def config(pg_database: str) -> Config:
    """The app of these tests runs on PostgreSQL only (overrides conftest's config)."""
    return Config(db=pg_database, reconcile_minutes=0, access_log=False)


@pytest.fixture
async def stores(pg_database: str) -> AsyncIterator[list[PostgresStore]]:
    """Two open stores on one database: two instances of the service, as storage sees it."""
    opened = [PostgresStore(pg_database), PostgresStore(pg_database)]
    for store in opened:
        await store.open()
    try:
        yield opened
    finally:
        for store in opened:
            await store.close()


def key_row(key: str, answer: str) -> tuple[str, bytes, str, str]:
    return (key, b"same-request", answer, "2025-05-01T00:00:00.000000Z")


# --- migrations ------------------------------------------------------------------------


async def test_instances_starting_at_once_migrate_a_new_database_once(
    pg_cluster: PostgresCluster,
) -> None:
    url = pg_cluster.create_database(f"fresh_{uuid.uuid4().hex[:12]}")
    stores = [PostgresStore(url) for _ in range(4)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
        assert sorted(store.slot for store in stores) == [0, 1, 2, 3]  # one slot each
    finally:
        await asyncio.gather(*(store.close() for store in stores))
    db = connect(url)
    try:
        versions = db.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
        assert versions == [(n,) for n in range(1, latest_version() + 1)]
    finally:
        db.close()


# --- partitions ------------------------------------------------------------------------


def partition_rows(db: Database) -> dict[str, int]:
    sql = "SELECT tableoid::regclass::text, COUNT(*) FROM events GROUP BY 1"
    return dict(db.execute(sql).fetchall())


async def test_a_month_without_a_partition_gets_one_on_first_append(
    client: TestClient, db: Database
) -> None:
    store = client.server.app[STORE]
    await store.append([WriteGroup([row("view", "2031-07-31T23:59:59.999999Z")])])
    await store.append([WriteGroup([row("click", "1999-01-01T00:00:00.000000Z")])])
    assert partition_rows(db) == {"events_2031_07": 1, "events_1999_01": 1}
    response = await client.get("/analytics/event-counts-by-type")
    assert await response.json() == {"view": 1, "click": 1}


async def test_rows_that_landed_in_the_default_partition_move_to_their_month_on_startup(
    config: Config, db: Database
) -> None:
    first = PostgresStore(config.db)
    await first.open()
    try:
        # As if creating the partition kept timing out: the rows go to DEFAULT meanwhile.
        first._month_retry_at[date(2033, 3, 1)] = float("inf")
        rows = [row("view", f"2033-03-{d:02d}T12:00:00.000000Z") for d in range(1, 11)]
        await first.append([WriteGroup(rows)])
        assert partition_rows(db) == {"events_default": 10}
    finally:
        await first.close()
    second = PostgresStore(config.db)
    await second.open()  # any instance's startup moves them
    try:
        assert partition_rows(db) == {"events_2033_03": 10}
        plan = CountPlan(1, days=((0, "2033-03-01", "2033-04-01"),))
        assert await second.count(plan, ["view"]) == {(0, "view"): 10}
        assert (await second.recount_day("2033-03-05", repair=False)).differs is False
    finally:
        await second.close()


# --- slots and keys across instances -----------------------------------------------------


async def test_each_instance_adds_to_its_own_rollup_slot_and_reads_sum_them(
    stores: list[PostgresStore], pg_database: str
) -> None:
    a, b = stores
    assert a.slot != b.slot
    day = [f"2025-05-01T{h:02d}:00:00.000000Z" for h in range(24)]
    await asyncio.gather(
        *(store.append([WriteGroup([row("view", ts)])]) for ts in day for store in stores)
    )
    db = connect(pg_database)
    try:
        slots = db.execute("SELECT DISTINCT slot FROM daily_event_counts ORDER BY 1").fetchall()
        assert slots == sorted([(a.slot,), (b.slot,)])
        assert rollup_by_day(db) == log_by_day(db) == {("2025-05-01", "view"): 48}
        plan = CountPlan(1, days=((0, "2025-05-01", "2025-05-02"),))
        assert await a.count(plan, ["view"]) == await b.count(plan, ["view"]) == {(0, "view"): 48}
        look = await a.recount_day("2025-05-01", repair=True)
        assert not look.differs and not look.repaired  # the sum over slots is right

        db.execute("DELETE FROM daily_event_counts WHERE slot = ?", (b.slot,))  # tamper
        repaired = await a.recount_day("2025-05-01", repair=True)
        assert repaired.repaired and repaired.stored == {"view": 24}
        # Rewritten as slot 0 alone; writers then add to their own slots again.
        assert db.execute("SELECT slot, count FROM daily_event_counts").fetchall() == [(0, 48)]
        await b.append([WriteGroup([row("view", day[0])])])
        assert rollup_by_day(db) == log_by_day(db) == {("2025-05-01", "view"): 49}
    finally:
        db.close()


async def test_one_idempotency_key_raced_by_two_instances_stores_one_event(
    stores: list[PostgresStore], pg_database: str
) -> None:
    a, b = stores
    for n in range(20):
        key = f"raced-{n}"
        results = await asyncio.gather(
            a.append([WriteGroup([row("view", "2025-05-01T00:00:00.000000Z")], key_row(key, "A"))]),
            b.append([WriteGroup([row("view", "2025-05-01T00:00:00.000000Z")], key_row(key, "B"))]),
        )
        # One stored its group; the other skipped it and got the stored original back.
        assert sorted(results, key=len) in (
            [{}, {key: (b"same-request", "A")}],
            [{}, {key: (b"same-request", "B")}],
        ), results
    db = connect(pg_database)
    try:
        assert stored(db) == 20
        assert rollup_by_day(db) == {("2025-05-01", "view"): 20}
    finally:
        db.close()


# --- rollup passes: one instance at a time -----------------------------------------------


async def test_a_rollup_pass_waits_while_another_instance_runs_one(
    stores: list[PostgresStore],
) -> None:
    a, b = stores
    await a.append([WriteGroup([row("view", "2025-05-01T10:00:00.000000Z")])])
    assert await a.try_lock_job(passes.JOB)  # instance A is running a pass
    with pytest.raises(passes.PassBusyError):  # a scheduled pass on B skips
        await recount.run(b, "reconcile", wait=False)
    waiting = asyncio.ensure_future(recount.run(b, "rebuild"))  # a requested one waits
    await asyncio.sleep(passes.LOCK_POLL_S * 2)
    assert not waiting.done()
    await a.unlock_job(passes.JOB)
    report = await asyncio.wait_for(waiting, 10)
    assert report.completed and report.days_checked == 1
    assert await a.try_lock_job(passes.JOB)  # B released it at the end of its pass
    await a.unlock_job(passes.JOB)


async def test_a_waiting_pass_stops_when_asked(stores: list[PostgresStore]) -> None:
    a, b = stores
    assert await a.try_lock_job(passes.JOB)
    stop = asyncio.Event()
    waiting = asyncio.ensure_future(recount.run(b, "reconcile", stop=stop))
    await asyncio.sleep(0.1)
    stop.set()
    report = await asyncio.wait_for(waiting, 5)
    assert report.completed is False and report.days_checked == 0
    await a.unlock_job(passes.JOB)


# --- the append-only log ---------------------------------------------------------------


async def test_deleting_from_the_log_needs_the_sanctioned_session_setting(
    client: TestClient, db: Database
) -> None:
    for user in ("erase-me", "keep-me"):
        assert (await client.post("/events", json=view(user))).status == 202
    with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="append-only"):
        db.execute("TRUNCATE events")
    db.execute("BEGIN")
    db.execute("SET LOCAL analytics.sanctioned_delete = 'erasure'")
    db.execute("DELETE FROM events WHERE user_id = 'erase-me'")
    db.execute("COMMIT")
    assert db.execute("SELECT user_id FROM events").fetchall() == [("keep-me",)]
    with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="append-only"):
        db.execute("DELETE FROM events")  # the setting ended with its transaction


# --- connections -------------------------------------------------------------------------


async def test_lost_connections_are_503s_then_the_service_reconnects(
    client: TestClient, config: Config, pg_cluster: PostgresCluster
) -> None:
    assert (await client.post("/events", json=view("before"))).status == 202
    name = config.db.rsplit("/", 1)[1]
    pg_cluster.psql(  # what a database restart does to every open connection
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )
    statuses = []
    for n in range(5):
        response = await client.post("/events", json=view(f"after-{n}"))
        statuses.append(response.status)
        if response.status == 202:
            break
    assert statuses[-1] == 202 and set(statuses) <= {202, 503}, statuses
    for _ in range(5):
        counts = await client.get("/analytics/event-counts")
        if counts.status == 200:
            break
        assert counts.status == 503
    assert (await counts.json())["total_events"] == 2
    assert (await client.get("/readyz")).status == 200


async def test_an_unreachable_server_is_a_clear_error_without_the_password() -> None:
    url = f"postgresql://app:s3cret@127.0.0.1:{free_port()}/analytics"
    with pytest.raises(StorageUnavailableError) as caught:
        await PostgresStore(url).open()
    assert "app:***@127.0.0.1" in str(caught.value) and "s3cret" not in str(caught.value)

    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app", "serve", "--db", url, "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "s3cret" not in result.stderr + result.stdout


async def test_durability_setting_maps_to_synchronous_commit(pg_database: str) -> None:
    for synchronous, expected in (("FULL", "on"), ("NORMAL", "off")):
        store = PostgresStore(pg_database, synchronous=synchronous)
        await store.open()
        try:
            writer = await store._writer_connection()
            assert await writer.fetchval("SHOW synchronous_commit") == expected
        finally:
            await store.close()
