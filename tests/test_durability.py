"""202 means committed: concurrency, injected storage failures, overload and shutdown."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp.test_utils import TestClient

from app.keys import WRITER
from tests.databases import Database, connect
from tests.helpers import assert_problem, stored, view

JSON = {"Content-Type": "application/json"}


def body(i: int) -> bytes:
    return orjson.dumps(view(user=f"user-{i}"))


async def test_hundreds_of_concurrent_posts_are_all_committed(
    client: TestClient, db: Database
) -> None:
    responses = await asyncio.gather(
        *(client.post("/events", data=body(i), headers=JSON) for i in range(600))
    )
    assert [r.status for r in responses] == [202] * 600
    ids = {(await r.json())["event_id"] for r in responses}
    in_log = {i for (i,) in db.execute("SELECT event_id FROM events")}
    assert ids == in_log
    assert db.execute("SELECT SUM(count) FROM daily_event_counts").fetchone() == (600,)
    writer = client.server.app[WRITER]
    assert writer.commits < 600  # group commit: many requests share a transaction


@pytest.mark.server_fault
async def test_injected_storage_failure_answers_500_and_leaves_log_and_rollup_consistent(
    client: TestClient, db: Database
) -> None:
    # The rollup update fails after the event insert of the same transaction.
    with db.failing_inserts("daily_event_counts", "disk I/O error (injected)"):
        first = await client.post("/events", data=body(1), headers=JSON)
        problem = await assert_problem(first, 500)
        assert "disk" not in problem["detail"] and db.backend not in problem["detail"].lower()
        assert stored(db) == 0  # the event insert was rolled back with the rollup update
        assert db.execute("SELECT COUNT(*) FROM daily_event_counts").fetchone() == (0,)

    after = await client.post("/events", data=body(2), headers=JSON)  # the writer lives on
    assert after.status == 202
    assert stored(db) == 1
    assert db.execute("SELECT SUM(count) FROM daily_event_counts").fetchone() == (1,)


@pytest.mark.server_fault
async def test_locked_database_gives_503_with_retry_after_then_recovers(
    make_client, config
) -> None:
    client = await make_client(busy_timeout_ms=200)
    check = connect(config.db)
    try:
        with check.holding_writes():  # another process holds the write lock
            response = await client.post("/events", data=body(1), headers=JSON)
            await assert_problem(response, 503)
            assert response.headers["Retry-After"] == "1"
        response = await client.post("/events", data=body(2), headers=JSON)
        assert response.status == 202
        assert check.execute("SELECT COUNT(*) FROM events").fetchone() == (1,)
    finally:
        check.close()


async def test_full_queue_gives_503_and_log_equals_acknowledged(make_client, config) -> None:
    client = await make_client(queue_max_events=20, busy_timeout_ms=2000)
    check = connect(config.db)
    try:
        with check.holding_writes():  # hold the writer so the queue fills up
            posts = [
                asyncio.ensure_future(client.post("/events", data=body(i), headers=JSON))
                for i in range(60)
            ]
            await asyncio.sleep(0.5)
        responses = await asyncio.gather(*posts)
        statuses = [r.status for r in responses]
        assert set(statuses) == {202, 503}
        for r in responses:
            if r.status == 503:
                assert r.headers["Retry-After"] == "1"
                await assert_problem(r, 503)
        acknowledged = {(await r.json())["event_id"] for r in responses if r.status == 202}
        assert {i for (i,) in check.execute("SELECT event_id FROM events")} == acknowledged
    finally:
        check.close()


async def test_shutdown_drains_queued_writes(make_client, config) -> None:
    client = await make_client()
    writer = client.server.app[WRITER]
    check = connect(config.db)
    try:
        with check.holding_writes():
            posts = [
                asyncio.ensure_future(client.post("/events", data=body(i), headers=JSON))
                for i in range(50)
            ]
            for _ in range(200):  # every request handed to the writer (not a fixed sleep)
                if writer._queued_events == 50:
                    break
                await asyncio.sleep(0.05)
            closing = asyncio.ensure_future(writer.close())  # what app cleanup does on SIGTERM
            await asyncio.sleep(0.1)
            late = await client.post("/events", data=body(99), headers=JSON)
            await assert_problem(late, 503)  # no new writes once draining started
        await closing
        responses = await asyncio.gather(*posts)
        assert [r.status for r in responses] == [202] * 50
        assert check.execute("SELECT COUNT(*) FROM events").fetchone() == (50,)
    finally:
        check.close()


async def test_readiness(client: TestClient) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    await client.server.app[WRITER].close()
    response = await client.get("/readyz")
    assert response.status == 503
    assert "writer" in (await response.json())["problems"][0]


async def test_expired_idempotency_keys_are_forgotten(make_client, config) -> None:
    client = await make_client(idempotency_hours=0.0)
    writer = client.server.app[WRITER]
    headers = {**JSON, "Idempotency-Key": "old-key"}
    assert (await client.post("/events", data=body(1), headers=headers)).status == 202
    writer._last_prune = float("-inf")  # due now
    assert (await client.post("/events", data=body(2), headers=JSON)).status == 202
    check = connect(config.db)
    assert check.execute("SELECT COUNT(*) FROM idempotency_keys").fetchone() == (0,)
    check.close()
    # Forgotten: the same key is a new request now.
    assert (await client.post("/events", data=body(3), headers=headers)).status == 202
