"""Concurrency never changes an answer: many simultaneous requests of every kind, mixed
with ingest, each get exactly what they would get alone (contract, "Operations")."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from app.keys import CONFIG, STORE
from schema.events import EVENT_TYPES
from schema.timestamps import format_ts
from scripts.crash_test import Service
from tests.databases import Database, connect
from tests.helpers import append, log_by_day, log_count, rollup_by_day, row, stored, view

# Timestamps piled on and around day boundaries of 2024-03-09 … 2024-03-13, so every
# query below mixes whole days (rollup) with cut days (log).
EDGES = ["00:00:00.000000", "00:00:00.000001", "05:59:59.999999", "06:00:00.000000"]
EDGES += ["12:00:00.000000", "17:59:59.999999", "18:00:00.000000", "23:59:59.999999"]


@pytest.fixture
async def seeded(client: TestClient) -> TestClient:
    rng = random.Random(7)
    rows = []
    for day in range(9, 14):
        for clock in EDGES:
            for _ in range(rng.randrange(1, 4)):
                ts = f"2024-03-{day:02d}T{clock}Z"
                rows.append(row(rng.choice(EVENT_TYPES), ts, user=f"u{rng.randrange(50)}"))
    await append(client, rows)
    return client


# (path, params, expected body built from the log by ``reference``)
QUERIES = [
    (
        "/analytics/event-counts",
        {"start_date": "2024-03-10T06:00:00Z", "end_date": "2024-03-12T18:00:00Z"},
    ),
    ("/analytics/event-counts", {"start_date": "2024-03-10", "end_date": "2024-03-12"}),
    (
        "/analytics/event-counts",
        {
            "event_type": "click",
            "start_date": "2024-03-09T23:59:59.999999Z",
            "end_date": "2024-03-13",
        },
    ),
    (
        "/analytics/event-counts",
        {"start_date": "2024-03-11T05:59:59.999999+00:00", "end_date": "2024-03-11T06:00:00Z"},
    ),
    (
        "/analytics/event-counts-by-type",
        {"start_date": "2024-03-09T12:00:00Z", "end_date": "2024-03-13T00:00:00.000001Z"},
    ),
    ("/analytics/event-counts-by-type", {"start_date": "2024-03-11", "end_date": "2024-03-11"}),
    ("/analytics/event-counts-by-day", {"start_date": "2024-03-09", "end_date": "2024-03-13"}),
    (
        "/analytics/event-counts-by-day",
        {
            "start_date": "2024-03-10T06:00:00Z",
            "end_date": "2024-03-12T18:00:00Z",
            "event_type": "view",
        },
    ),
]


def _bounds(params: dict[str, str]) -> tuple[datetime, datetime]:
    """The half-open UTC range ``[lo, hi)`` a query's bounds mean, computed here
    independently of the service's parser."""
    start, end = params["start_date"], params["end_date"]
    lo = datetime.fromisoformat(start if "T" in start else start + "T00:00:00+00:00")
    if "T" in end:
        hi = datetime.fromisoformat(end) + timedelta(microseconds=1)
    else:
        hi = datetime.fromisoformat(end + "T00:00:00+00:00") + timedelta(days=1)
    return lo.astimezone(UTC), hi.astimezone(UTC)


def reference(db: Database, path: str, params: dict[str, str]) -> object:
    """The answer computed independently, with COUNT(*) on the log."""
    lo, hi = _bounds(params)
    event_type = params.get("event_type")
    if path == "/analytics/event-counts":
        return {"total_events": log_count(db, event_type, format_ts(lo), format_ts(hi))}
    if path == "/analytics/event-counts-by-type":
        counts = {t: log_count(db, t, format_ts(lo), format_ts(hi)) for t in EVENT_TYPES}
        return {t: n for t, n in counts.items() if n}
    days = []
    day = lo.replace(hour=0, minute=0, second=0, microsecond=0)
    while day < hi:
        day_lo, day_hi = format_ts(max(lo, day)), format_ts(min(hi, day + timedelta(days=1)))
        entry: dict[str, object] = {"date": day.date().isoformat()}
        for t in EVENT_TYPES:
            entry[t] = log_count(db, t, day_lo, day_hi) if event_type in (None, t) else 0
        days.append(entry)
        day += timedelta(days=1)
    return {"days": days}


async def test_hundreds_of_simultaneous_queries_mixed_with_ingest_are_all_exact(
    seeded: TestClient, db: Database
) -> None:
    """The fault outside testing found: two simultaneous cut-day counts got a 500 in one
    round in four (a shared connection's BEGIN inside another request's transaction)."""
    expected = {i: reference(db, path, params) for i, (path, params) in enumerate(QUERIES)}
    rng = random.Random(11)
    picks = [rng.randrange(len(QUERIES)) for _ in range(400)]

    async def query(i: int) -> tuple[int, int, object]:
        path, params = QUERIES[i]
        async with seeded.get(path, params=params) as response:
            return i, response.status, await response.json()

    async def ingest(n: int) -> int:  # today's events: outside every queried range
        async with seeded.post("/events", json=view(f"live-{n}")) as response:
            return response.status

    results = await asyncio.gather(*(query(i) for i in picks), *(ingest(n) for n in range(200)))
    answers = [r for r in results if isinstance(r, tuple)]
    statuses = [r for r in results if isinstance(r, int)]
    assert statuses == [202] * 200
    wrong = [
        (QUERIES[i], status, body)
        for i, status, body in answers
        if (status, body) != (200, expected[i])
    ]
    assert not wrong, wrong[:3]
    assert log_count(db, "view", "2025", "~") == 200  # every ingested event, once


async def test_simultaneous_identical_cut_day_queries_on_an_empty_database(
    client: TestClient,
) -> None:
    """The exact reproduction from the report: pairs of the same query, many rounds."""
    params = {"start_date": "2024-03-10T06:00:00Z", "end_date": "2024-03-12T18:00:00Z"}
    for _ in range(50):
        responses = await asyncio.gather(
            *(client.get("/analytics/event-counts", params=params) for _ in range(2))
        )
        assert [r.status for r in responses] == [200, 200]
        assert [await r.json() for r in responses] == [{"total_events": 0}] * 2


async def test_a_read_that_stays_open_sees_one_snapshot_while_writes_commit(
    seeded: TestClient, backend: str
) -> None:
    """A reader's transaction held open across 20 group commits keeps its snapshot, and
    the other readers serve meanwhile (the held one is not shared)."""
    store = seeded.server.app[STORE]
    count = "SELECT COUNT(*) FROM events"

    async def commits_while_held() -> None:
        for n in range(20):  # each its own group commit, while the read stays open
            assert (await seeded.post("/events", json=view(f"w{n}"))).status == 202
            assert (await seeded.get("/analytics/event-counts")).status == 200

    if backend == "sqlite":
        async with store._readers.connection() as held:
            await held.execute("BEGIN")
            (before,) = (await held.execute_fetchall(count))[0]
            await commits_while_held()
            (after,) = (await held.execute_fetchall(count))[0]
            await held.execute("COMMIT")
    else:
        async with (
            store._readers().acquire() as held,
            held.transaction(isolation="repeatable_read", readonly=True),
        ):
            before = await held.fetchval(count)
            await commits_while_held()
            after = await held.fetchval(count)
    assert before == after  # one snapshot
    assert stored_now(seeded) == before + 20


def stored_now(client: TestClient) -> int:
    conn = connect(client.server.app[CONFIG].db)
    try:
        return stored(conn)
    finally:
        conn.close()


@pytest.mark.slow
async def test_one_idempotency_key_sent_to_two_processes_at_once_stores_one_event(
    database: str, tmp_path: Path
) -> None:
    """Two service processes on one database, 10 requests each with the same key at the
    same moment: every answer is the same 202 (never a 500 from a key-uniqueness race)."""
    services = [Service(database, log_path=tmp_path / f"s{i}.log") for i in range(2)]
    for service in services:
        service.start()
    try:
        for round_no in range(5):
            key = f"same-key-{round_no}"
            body = view(f"user-{round_no}")
            async with aiohttp.ClientSession() as session:

                async def send(url: str, body: dict, key: str) -> tuple[int, str]:
                    async with session.post(
                        url + "/events", json=body, headers={"Idempotency-Key": key}
                    ) as response:
                        return response.status, await response.text()

                answers = await asyncio.gather(
                    *(send(s.url, body, key) for s in services for _ in range(10))
                )
            assert {status for status, _ in answers} == {202}, answers
            assert len({text for _, text in answers}) == 1  # one event_id for all
    finally:
        for service in services:
            service.terminate()
    conn = connect(database)
    try:
        assert stored(conn) == 5
        assert rollup_by_day(conn) == log_by_day(conn)
        assert conn.execute("SELECT SUM(count) FROM daily_event_counts").fetchone()[0] == 5
    finally:
        conn.close()


@pytest.mark.sqlite_only("the answer cache of the SQLite store")
async def test_an_answer_is_never_served_after_any_connection_changed_the_database(
    client: TestClient, db: Database
) -> None:
    """Repeated questions are answered from memory until the database changes: a commit
    by the service's writer, or by any other connection or process (here a plain
    ``sqlite3`` connection, as a CLI ``rebuild`` in another process would be), is seen by
    the very next answer."""
    await append(client, [row("view", "2025-05-01T10:00:00.000000Z")])
    params = {"start_date": "2025-05-01", "end_date": "2025-05-01"}

    async def total() -> int:
        response = await client.get("/analytics/event-counts", params=params)
        assert response.status == 200
        return (await response.json())["total_events"]

    assert [await total() for _ in range(3)] == [1, 1, 1]
    db.execute("UPDATE daily_event_counts SET count = 41 WHERE day = '2025-05-01'")
    assert await total() == 41  # another connection's commit
    db.execute("UPDATE daily_event_counts SET count = 1 WHERE day = '2025-05-01'")
    assert await total() == 1
    await append(client, [row("click", "2025-05-01T11:00:00.000000Z")])
    assert await total() == 2  # the writer's commit
    answers = await asyncio.gather(*(total() for _ in range(50)))
    assert set(answers) == {2}
