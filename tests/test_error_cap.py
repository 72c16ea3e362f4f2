"""An error answer stays small and cheap whatever the input (issue 10, fault 4): at most
100 ``errors`` entries plus ``errors_omitted``, short strings, and checking stops once
more problems have been found than can be listed."""

from __future__ import annotations

import asyncio
import io

import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.databases import Database
from tests.helpers import assert_problem, stored, view

JSON = {"Content-Type": "application/json"}
MAX_ERRORS = 100
SMALL = 32 * 1024  # bytes: generous for 100 entries of short strings

# The size of error answers is the HTTP layer's business, not the storage's: runs once.
pytestmark = pytest.mark.backend_independent


def every_event_invalid(events: int = 1000, extra_fields: int = 88) -> bytes:
    """The issue's input: a ~750 KB batch in which each event has ~90 problems."""
    event = {"user_id": 1, "event_type": "view", "payload": {"url": 2}}
    event.update({f"x{k}": 0 for k in range(extra_fields)})
    return orjson.dumps({"events": [event] * events})


async def test_a_huge_invalid_batch_gets_a_small_answer(client: TestClient, db: Database) -> None:
    raw = every_event_invalid()
    assert len(raw) > 700_000
    response = await client.post("/events/batch", data=io.BytesIO(raw), headers=JSON)
    text = await response.read()
    body = await assert_problem(response, 400)
    assert len(text) < SMALL, len(text)
    assert len(body["errors"]) == MAX_ERRORS
    assert body["errors"][0]["field"].startswith("events[0].")
    # Checking stopped once more problems were found than can be listed: n is a lower bound.
    assert isinstance(body["errors_omitted"], int) and body["errors_omitted"] >= 1
    assert len(body["detail"]) <= 1024
    assert stored(db) == 0


async def test_healthz_is_answered_while_huge_invalid_batches_are_refused(
    client: TestClient,
) -> None:
    """No timing assertion (see bench/ for speed): both kinds are simply answered."""
    raw = every_event_invalid()

    async def bad_batch() -> int:
        response = await client.post("/events/batch", data=io.BytesIO(raw), headers=JSON)
        await response.read()
        return response.status

    async def health() -> int:
        return (await client.get("/healthz")).status

    statuses = await asyncio.gather(
        *[bad_batch() for _ in range(4)], *[health() for _ in range(20)]
    )
    assert statuses == [400] * 4 + [200] * 20


async def test_an_event_with_thousands_of_problems_lists_100_and_counts_the_rest(
    client: TestClient,
) -> None:
    event = {**view(), **{f"k{i}": 0 for i in range(6000)}}
    response = await client.post("/events", data=orjson.dumps(event), headers=JSON)
    body = await assert_problem(response, 400)
    assert len(body["errors"]) == MAX_ERRORS
    assert body["errors_omitted"] == 6000 - MAX_ERRORS  # one event: every problem counted
    assert body["detail"].endswith("(and 5997 more)")


async def test_fewer_problems_than_the_cap_are_all_listed_without_errors_omitted(
    client: TestClient,
) -> None:
    events = [view(url=""), view(), view(user="")] * 33  # 66 problems
    response = await client.post(
        "/events/batch", data=orjson.dumps({"events": events}), headers=JSON
    )
    body = await assert_problem(response, 400)
    assert len(body["errors"]) == 66 and "errors_omitted" not in body


async def test_the_cap_applies_when_the_problems_are_one_per_event(client: TestClient) -> None:
    events = [view(url="")] * 150
    response = await client.post(
        "/events/batch", data=orjson.dumps({"events": events}), headers=JSON
    )
    body = await assert_problem(response, 400)
    assert [e["field"] for e in body["errors"]] == [f"events[{i}].payload.url" for i in range(100)]
    assert body["errors_omitted"] >= 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/events", {**view(), "k" * 20_000: 1}, id="unknown-field-name"),
        pytest.param(
            "/events/batch",
            {"events": [{**view(), f"{i}" + "k" * 9_000: 1} for i in range(100)]},
            id="100-long-field-names",
        ),
    ],
)
async def test_long_field_names_are_shortened_in_the_answer(
    client: TestClient, path: str, body: dict
) -> None:
    response = await client.post(path, data=io.BytesIO(orjson.dumps(body)), headers=JSON)
    text = await response.read()
    problem = await assert_problem(response, 400)
    assert len(text) < SMALL, len(text)
    assert all(len(e["field"]) <= 256 for e in problem["errors"])
    assert all(e["field"].endswith("…") for e in problem["errors"])


async def test_every_endpoint_gets_the_cap(client: TestClient) -> None:
    """Not only bodies: 1000 unknown query parameters are 1000 problems too."""
    query = "&".join(f"p{i}" for i in range(1000))
    body = await assert_problem(await client.get("/analytics/event-counts?" + query), 400)
    assert len(body["errors"]) == MAX_ERRORS and body["errors_omitted"] == 900
    long_path = "/" + "a" * 7000
    body = await assert_problem(await client.get(long_path), 404)
    assert len(body["detail"]) <= 1024


async def test_a_body_full_of_repeated_keys_gets_a_small_answer(
    client: TestClient, db: Database
) -> None:
    """Repeated keys are found by a second parse; it too stops once more are found than
    listed, and the answer is as small as any other."""
    pairs = b",".join(b'{"k": 1, "k": 2}' for _ in range(50_000))
    raw = (
        b'{"events": [{"user_id": "u", "event_type": "view", "payload": {"url": "x", "a": ['
        + pairs
        + b"]}}]}"
    )
    response = await client.post("/events/batch", data=io.BytesIO(raw), headers=JSON)
    text = await response.read()
    body = await assert_problem(response, 400)
    assert len(text) < SMALL
    assert body["errors"][0] == {"field": "events[0].payload.a[0].k", "message": "is repeated"}
    assert len(body["errors"]) == MAX_ERRORS and body["errors_omitted"] >= 1
    assert "at least" in body["detail"]
    assert stored(db) == 0
