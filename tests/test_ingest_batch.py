"""POST /events/batch: 1–1000 events, all or nothing, errors named by index."""

from __future__ import annotations

import io

import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.databases import Database
from tests.helpers import assert_problem, click, location, stored, view

JSON = {"Content-Type": "application/json"}


async def post_batch(client: TestClient, body: object, headers: dict[str, str] | None = None):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    # A BytesIO body: aiohttp warns (and our filterwarnings makes it an error) on big bytes.
    return await client.post("/events/batch", data=io.BytesIO(data), headers=headers or JSON)


async def test_batch_is_acknowledged_in_request_order(client: TestClient, db: Database) -> None:
    events = [view(user="a"), click(user="b"), location(user="c")]
    response = await post_batch(client, {"events": events})
    assert response.status == 202
    body = await response.json()
    assert body["accepted"] == 3 and len(body["events"]) == 3
    for sent, ack in zip(events, body["events"], strict=True):
        assert db.execute(
            "SELECT user_id, event_type FROM events WHERE event_id = ?", (ack["event_id"],)
        ).fetchone() == (sent["user_id"], sent["event_type"])
    assert db.execute("SELECT SUM(count) FROM daily_event_counts").fetchone() == (3,)


async def test_batch_of_1000_is_accepted(client: TestClient, db: Database) -> None:
    response = await post_batch(client, {"events": [view(user=f"u{i}") for i in range(1000)]})
    assert response.status == 202
    assert (await response.json())["accepted"] == 1000
    assert stored(db) == 1000


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        pytest.param({"events": []}, ["events"], id="empty"),
        pytest.param({"events": [view()] * 1001}, ["events"], id="too-many"),
        pytest.param({}, ["events"], id="missing"),
        pytest.param({"events": {}}, ["events"], id="not-array"),
        pytest.param({"events": [view()], "extra": 1}, ["extra"], id="unknown-field"),
        pytest.param([view()], ["body"], id="array-body"),
        pytest.param(
            {"events": [view(), location(lat=91), view(), {**click(), "event_id": "x"}]},
            ["events[1].payload.latitude", "events[3].event_id"],
            id="names-each-bad-index",
        ),
        pytest.param({"events": [view(), 5]}, ["events[1]"], id="non-object-event"),
        pytest.param(
            {"events": [view(), view(url=" ")]}, ["events[1].payload.url"], id="blank-url"
        ),
        pytest.param(
            b'{"events": [{"user_id": "u", "event_type": "view", "payload": {"url": "x"}}],'
            b' "events": []}',
            ["events"],
            id="repeated-events",
        ),
        pytest.param(
            b'{"events": [{"user_id": "u", "event_type": "view", "payload": {"url": "x"}},'
            b' {"user_id": "u", "event_type": "view", "payload": {"url": "x", "url": "y"}},'
            b' {"user_id": "u", "event_type": "click", "event_type": "view", "payload": {}}]}',
            ["events[1].payload.url", "events[2].event_type"],
            id="repeated-inside-events",
        ),
    ],
)
async def test_invalid_batch_stores_nothing(
    client: TestClient, db: Database, body: object, fields: list[str]
) -> None:
    await assert_problem(await post_batch(client, body), 400, *fields)
    assert stored(db) == 0
    assert db.execute("SELECT COUNT(*) FROM daily_event_counts").fetchone() == (0,)


async def test_batch_over_1_mib_is_413(client: TestClient, db: Database) -> None:
    events = [view(pad="x" * 15_000) for _ in range(80)]
    raw = orjson.dumps({"events": events})
    assert len(raw) > 1024 * 1024
    await assert_problem(await post_batch(client, raw), 413)
    assert stored(db) == 0


async def test_batch_idempotency_key_covers_the_whole_batch(
    client: TestClient, db: Database
) -> None:
    headers = {**JSON, "Idempotency-Key": "batch-1"}
    body = {"events": [view(), click()]}
    first = await post_batch(client, body, headers)
    again = await post_batch(client, body, headers)
    assert first.status == again.status == 202
    assert await first.json() == await again.json()
    assert stored(db) == 2
    changed = {"events": [view()]}
    await assert_problem(await post_batch(client, changed, headers), 422)


async def test_key_used_on_single_endpoint_conflicts_on_batch(client: TestClient) -> None:
    headers = {**JSON, "Idempotency-Key": "shared"}
    assert (await client.post("/events", data=orjson.dumps(view()), headers=headers)).status == 202
    await assert_problem(await post_batch(client, {"events": [view()]}, headers), 422)
