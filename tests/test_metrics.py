"""``GET /metrics``: every counter equals the traffic that was sent; auth; one registry per app."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.databases import connect
from tests.helpers import click, location, view

JSON = {"Content-Type": "application/json"}
TOKEN = "metrics-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: TestClient, headers: dict[str, str] | None = None) -> Samples:
    response = await client.get("/metrics", headers=headers)
    assert response.status == 200, await response.text()
    assert response.content_type == "text/plain"
    samples: Samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def post(client: TestClient, body: object, **headers: str):
    return await client.post("/events", data=orjson.dumps(body), headers={**JSON, **headers})


async def test_a_fresh_service_exports_every_metric_at_zero(client: TestClient) -> None:
    samples = await scrape(client)
    names = {name for name, _ in samples}
    for name in (
        "analytics_events_accepted_total",
        "analytics_events_rejected_total",
        "analytics_idempotent_replays_total",
        "analytics_writer_queue_events",
        "analytics_commit_events_count",
        "analytics_commit_duration_seconds_count",
        "analytics_rollup_repairs_total",
        "analytics_erased_events_total",
        "analytics_retention_deleted_events_total",
    ):
        assert name in names, name
    for event_type in ("view", "click", "location"):
        assert value(samples, "analytics_events_accepted_total", event_type=event_type) == 0
    for reason in ("invalid", "too_large", "unsupported_media_type", "overloaded"):
        assert ("analytics_events_rejected_total", frozenset({("reason", reason)})) in samples
    assert not any(name.endswith("_created") for name in names)


@pytest.mark.server_fault  # a locked database (the 503 "overloaded") is logged with its cause
async def test_counters_equal_the_traffic_sent(make_client, config, aiohttp_client) -> None:
    client = await make_client(admin_token=TOKEN, busy_timeout_ms=100)

    # Accepted: 4 views, 3 clicks, 1 location (one batch among them).
    for body in (view(), view(), view(), click(), click(), location()):
        assert (await post(client, body)).status == 202
    batch = {"events": [view(), click()]}
    assert (await client.post("/events/batch", json=batch)).status == 202

    # Rejected, one of each reason (the batch counts once, whatever its size).
    assert (await post(client, {"user_id": "u"})).status == 400
    bad_batch = {"events": [view(), {"event_type": "nope"}]}
    assert (await client.post("/events/batch", json=bad_batch)).status == 400
    huge = b'{"user_id": "' + b"x" * 70_000 + b'"}'
    assert (await client.post("/events", data=huge, headers=JSON)).status == 413
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert (await client.post("/events", data=b"a=1", headers=form)).status == 415
    assert (await post(client, view(), **{"Idempotency-Key": "k1"})).status == 202  # accepted
    assert (await post(client, view(), **{"Idempotency-Key": "k1"})).status == 202  # replay
    assert (await post(client, click(), **{"Idempotency-Key": "k1"})).status == 422
    blocker = connect(config.db)
    try:
        with blocker.holding_writes():  # the writer cannot commit: 503
            assert (await post(client, view())).status == 503
    finally:
        blocker.close()

    # Two identical keyed requests at once: one commit and one replay, whichever path
    # (before the writer, or inside the same group commit) answers the second.
    both = await asyncio.gather(
        post(client, location(), **{"Idempotency-Key": "k2"}),
        post(client, location(), **{"Idempotency-Key": "k2"}),
    )
    assert [r.status for r in both] == [202, 202]

    assert (await client.get("/nowhere")).status == 404
    assert (await client.get("/analytics/event-counts")).status == 200
    assert (await client.get("/analytics/event-counts")).status == 200

    samples = await scrape(client, AUTH)
    accepted = {"view": 5, "click": 3, "location": 2}
    for event_type, n in accepted.items():
        assert value(samples, "analytics_events_accepted_total", event_type=event_type) == n
    rejected = {
        "invalid": 2,
        "too_large": 1,
        "unsupported_media_type": 1,
        "idempotency_conflict": 1,
        "overloaded": 1,
    }
    for reason, n in rejected.items():
        assert value(samples, "analytics_events_rejected_total", reason=reason) == n, reason
    assert value(samples, "analytics_idempotent_replays_total") == 2

    requests = {
        ("POST", "/events", "202"): 10,
        ("POST", "/events/batch", "202"): 1,
        ("POST", "/events", "400"): 1,
        ("POST", "/events/batch", "400"): 1,
        ("POST", "/events", "413"): 1,
        ("POST", "/events", "415"): 1,
        ("POST", "/events", "422"): 1,
        ("POST", "/events", "503"): 1,
        ("GET", "unmatched", "404"): 1,
        ("GET", "/analytics/event-counts", "200"): 2,
    }
    for (method, route, status), n in requests.items():
        got = value(
            samples, "analytics_http_requests_total", method=method, route=route, status=status
        )
        assert got == n, (method, route, status)
    routes = {"/events": 15, "/events/batch": 2, "unmatched": 1, "/analytics/event-counts": 2}
    for route, n in routes.items():
        assert value(samples, "analytics_http_request_duration_seconds_count", route=route) == n
    assert not any(
        dict(labels).get("route") == "/nowhere" for _, labels in samples
    )  # the pattern, never the raw path

    committed = sum(accepted.values())
    assert value(samples, "analytics_commit_events_sum") == committed
    commits = value(samples, "analytics_commit_events_count")
    assert 1 <= commits <= committed
    assert value(samples, "analytics_commit_duration_seconds_count") == commits
    assert value(samples, "analytics_writer_queue_events") == 0
    assert value(samples, "analytics_rollup_repairs_total") == 0

    # A reconcile that repairs one day counts one repair.
    db = connect(config.db)
    db.execute("UPDATE daily_event_counts SET count = count + 5 WHERE event_type = 'view'")
    db.close()
    report = await (await client.post("/admin/rollups/reconcile", headers=AUTH)).json()
    assert len(report["days_changed"]) == 1
    samples = await scrape(client, AUTH)
    assert value(samples, "analytics_rollup_repairs_total") == 1
    assert (
        value(
            samples, "analytics_http_requests_total", method="GET", route="/metrics", status="200"
        )
        == 1
    )


async def test_each_app_has_its_own_registry(make_client) -> None:
    first = await make_client()
    second = await make_client()
    assert (await post(first, view())).status == 202
    assert value(await scrape(first), "analytics_events_accepted_total", event_type="view") == 1
    assert value(await scrape(second), "analytics_events_accepted_total", event_type="view") == 0


async def test_the_queue_gauge_counts_events_waiting_for_the_writer(make_client, config) -> None:
    client = await make_client(busy_timeout_ms=3000)
    blocker = connect(config.db)
    try:
        with blocker.holding_writes():  # the first commit waits for the lock
            posts = [asyncio.ensure_future(post(client, view(user=f"u{i}"))) for i in range(5)]
            batch = asyncio.ensure_future(
                client.post("/events/batch", json={"events": [click()] * 3})
            )
            for _ in range(200):  # until all eight events reached the writer
                if value(await scrape(client), "analytics_writer_queue_events") == 8:
                    break
                await asyncio.sleep(0.01)
            assert value(await scrape(client), "analytics_writer_queue_events") == 8
    finally:
        blocker.close()
    assert {r.status for r in await asyncio.gather(*posts, batch)} == {202}
    assert value(await scrape(client), "analytics_writer_queue_events") == 0


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN],
    ids=["missing", "wrong", "basic", "no-scheme"],
)
async def test_with_an_admin_token_metrics_need_it(make_client, authorization) -> None:
    client = await make_client(admin_token=TOKEN)
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await client.get("/metrics", headers=headers)
    assert response.status == 401
    assert response.content_type == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in await response.text()
    await scrape(client, AUTH)


async def test_without_an_admin_token_metrics_are_open(client: TestClient) -> None:
    await scrape(client)


async def test_metrics_can_be_switched_off(make_client) -> None:
    client = await make_client(metrics=False)
    assert (await client.get("/metrics")).status == 404
    assert (await post(client, view())).status == 202
