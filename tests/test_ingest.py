"""POST /events: every validation rule of the contract, and nothing stored on a 4xx."""

from __future__ import annotations

import re
from unittest.mock import ANY

import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.databases import Database
from tests.helpers import assert_problem, click, location, stored, view

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
JSON = {"Content-Type": "application/json"}


async def post(client: TestClient, body: object, headers: dict[str, str] | None = None):
    data = body if isinstance(body, bytes | str) else orjson.dumps(body)
    return await client.post("/events", data=data, headers=headers or JSON)


VALID = [
    pytest.param(view(), id="view"),
    pytest.param(view(title="Home"), id="view-title"),
    pytest.param(view(title=None), id="view-null-title"),
    pytest.param(view(url="u" * 2048, title="t" * 1024), id="view-at-limits"),
    pytest.param(click(), id="click-empty-payload"),
    pytest.param(click(element_id="b", text="Buy", xpath="/html/body/button"), id="click-full"),
    pytest.param(click(element_id=None, text=None, xpath=None), id="click-nulls"),
    pytest.param(location(lat=-90, lon=180), id="location-int-bounds"),
    pytest.param(location(lat=90.0, lon=-180.0, accuracy=0), id="location-float-bounds"),
    pytest.param(location(accuracy=None), id="location-null-accuracy"),
    pytest.param(view(user="x" * 256), id="user-256"),
    pytest.param(view(extra={"nested": [1, 2, {"k": "v"}]}), id="extra-keys-kept"),
    pytest.param(view(user="ü ✓ 𝄞"), id="unicode-user"),
]


@pytest.mark.parametrize("event", VALID)
async def test_valid_event_is_acknowledged_and_stored(
    client: TestClient, db: Database, event: dict
) -> None:
    response = await post(client, event)
    assert response.status == 202, await response.text()
    body = await response.json()
    assert set(body) == {"event_id", "timestamp"}
    assert UUID7.match(body["event_id"])
    assert TIMESTAMP.match(body["timestamp"])
    user, event_type, timestamp, payload = db.execute(
        "SELECT user_id, event_type, timestamp, payload FROM events WHERE event_id = ?",
        (body["event_id"],),
    ).fetchone()
    assert (user, event_type, timestamp) == (
        event["user_id"],
        event["event_type"],
        body["timestamp"],
    )
    assert orjson.loads(payload) == event["payload"]  # kept as sent, extra keys included
    day = body["timestamp"][:10]
    assert db.execute(
        "SELECT SUM(count) FROM daily_event_counts WHERE day = ? AND event_type = ?",
        (day, event_type),
    ).fetchone() == (1,)


INVALID = [
    # user_id
    pytest.param({"event_type": "view", "payload": {"url": "x"}}, ["user_id"], id="user-missing"),
    pytest.param(view(user=""), ["user_id"], id="user-empty"),
    pytest.param(view(user="   \t"), ["user_id"], id="user-whitespace"),
    pytest.param(view(user="x" * 257), ["user_id"], id="user-too-long"),
    pytest.param({**view(), "user_id": 42}, ["user_id"], id="user-number"),
    pytest.param({**view(), "user_id": None}, ["user_id"], id="user-null"),
    # event_type
    pytest.param({**view(), "event_type": "scroll"}, ["event_type"], id="type-unknown"),
    pytest.param({**view(), "event_type": "View"}, ["event_type"], id="type-case"),
    pytest.param({"user_id": "u", "payload": {}}, ["event_type"], id="type-missing"),
    pytest.param({**view(), "event_type": 1}, ["event_type"], id="type-number"),
    pytest.param(
        {"user_id": 5, "event_type": "x", "payload": 1},
        ["event_type", "user_id", "payload"],
        id="all-three-bad",
    ),
    # payload
    pytest.param({"user_id": "u", "event_type": "view"}, ["payload"], id="payload-missing"),
    pytest.param({**view(), "payload": []}, ["payload"], id="payload-array"),
    pytest.param({**view(), "payload": "x"}, ["payload"], id="payload-string"),
    pytest.param(view(url=""), ["payload.url"], id="view-url-empty"),
    pytest.param(view(url="u" * 2049), ["payload.url"], id="view-url-too-long"),
    pytest.param(
        {"user_id": "u", "event_type": "view", "payload": {}},
        ["payload.url"],
        id="view-url-missing",
    ),
    pytest.param(view(url=5), ["payload.url"], id="view-url-number"),
    pytest.param(view(title="t" * 1025), ["payload.title"], id="view-title-too-long"),
    pytest.param(view(title=3), ["payload.title"], id="view-title-number"),
    pytest.param(click(element_id="e" * 1025), ["payload.element_id"], id="click-id-too-long"),
    pytest.param(click(text="t" * 2049), ["payload.text"], id="click-text-too-long"),
    pytest.param(click(xpath="x" * 2049), ["payload.xpath"], id="click-xpath-too-long"),
    pytest.param(click(element_id=7), ["payload.element_id"], id="click-id-number"),
    pytest.param(location(lat=90.0001), ["payload.latitude"], id="lat-above"),
    pytest.param(location(lat=-90.5), ["payload.latitude"], id="lat-below"),
    pytest.param(location(lon=180.5), ["payload.longitude"], id="lon-above"),
    pytest.param(location(lon=-181), ["payload.longitude"], id="lon-below"),
    pytest.param(location(lat="45.1"), ["payload.latitude"], id="lat-string"),
    pytest.param(location(lat=True), ["payload.latitude"], id="lat-bool"),
    pytest.param(location(lon=None), ["payload.longitude"], id="lon-null"),
    pytest.param(location(accuracy=-1), ["payload.accuracy"], id="accuracy-negative"),
    pytest.param(location(accuracy="5"), ["payload.accuracy"], id="accuracy-string"),
    pytest.param(
        {"user_id": "u", "event_type": "location", "payload": {}},
        ["payload.latitude", "payload.longitude"],
        id="location-both-missing",
    ),
    pytest.param(
        view(deep={"a": {"b": {"c": {"d": {"e": {"f": {"g": {}}}}}}}}),
        ["payload"],
        id="payload-too-deep",
    ),
    pytest.param(view(blob="x" * (16 * 1024)), ["payload"], id="payload-too-large"),
    # a required string must hold more than whitespace (issue 10)
    pytest.param(view(url="   "), ["payload.url"], id="url-only-spaces"),
    pytest.param(view(url="\t\n"), ["payload.url"], id="url-only-tab-newline"),
    pytest.param(view(user=" "), ["user_id"], id="user-only-space"),
    # server-owned and unknown fields
    pytest.param({**view(), "event_id": "x"}, ["event_id"], id="event-id-sent"),
    pytest.param(
        {**view(), "timestamp": "2025-05-01T00:00:00Z"}, ["timestamp"], id="timestamp-sent"
    ),
    pytest.param({**view(), "extra": 1}, ["extra"], id="unknown-field"),
]


@pytest.mark.parametrize(("event", "fields"), INVALID)
async def test_invalid_event_is_400_naming_every_field(
    client: TestClient, db: Database, event: dict, fields: list[str]
) -> None:
    body = await assert_problem(await post(client, event), 400, *fields)
    assert body["title"] == "Bad Request"
    assert stored(db) == 0


REPEATED = [
    pytest.param(
        b'{"user_id": "u", "event_type": "view", "event_type": "click", "payload": {"url": "x"}}',
        ["event_type"],
        id="event-type",
    ),
    pytest.param(
        b'{"user_id": "u", "event_type": "view", "payload": {"url": "x", "url": "x"}}',
        ["payload.url"],
        id="same-value-twice",
    ),
    pytest.param(
        b'{"user_id": "u", "event_type": "view", "payload": {"url": "x", "u\\u0072l": "y"}}',
        ["payload.url"],
        id="escaped-spelling",
    ),
    pytest.param(
        b'{"user_id": "u", "event_type": "view", "payload": {"url": "x", "a": [{"k": 1, "k": 2}]}}',
        ["payload.a[0].k"],
        id="nested-in-payload",
    ),
    pytest.param(
        b'{"user_id": "u", "user_id": "v", "event_type": "view", "payload": {"url": "x"},'
        b' "payload": {"url": "y", "title": "a:b", "title": "c"}}',
        ["user_id", "payload", "payload.title"],
        id="several",
    ),
]


@pytest.mark.parametrize(("raw", "fields"), REPEATED)
async def test_a_repeated_key_anywhere_is_400(
    client: TestClient, db: Database, raw: bytes, fields: list[str]
) -> None:
    """Parsers disagree on which of two equal keys wins (orjson keeps the last)."""
    body = await assert_problem(await post(client, raw), 400, *fields)
    assert {e["message"] for e in body["errors"]} == {"is repeated"}
    assert stored(db) == 0


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            b'{"user_id": "u", "event_type": "view", "payload": {"url": "x", "URL": "y"}}',
            id="keys-differ-in-case",
        ),
        pytest.param(
            b'{"user_id": "u", "event_type": "view", "payload": {"url": "x", "a": {"url": 1}}}',
            id="same-key-in-another-object",
        ),
        pytest.param(
            b'{"user_id": "u\\u003a", "event_type": "view", "payload": {"url": "a\\u003Ab"}}',
            id="escaped-colons",
        ),
        pytest.param(
            b'{"user_id": "u", "event_type": "view", "payload": {"url": "x", "k": ["a:", "b\\":"]}}',
            id="colons-and-quotes-in-strings",
        ),
    ],
)
async def test_keys_that_only_look_repeated_are_accepted(client: TestClient, raw: bytes) -> None:
    assert (await post(client, raw)).status == 202, raw


async def test_payload_depth_limit_is_inclusive(client: TestClient) -> None:
    """Depth 8 (payload itself counts as 1) is allowed; 9 is not (see INVALID)."""
    event = view(deep={"a": {"b": {"c": {"d": {"e": {"f": {}}}}}}})
    assert (await post(client, event)).status == 202


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"user_id": "u"', id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'"text"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b"\xff\xfe", id="invalid-utf8"),
        pytest.param(
            b'{"user_id": "\\ud800", "event_type": "view", "payload": {"url": "x"}}',
            id="lone-surrogate",
        ),
        pytest.param(
            b'{"user_id": "u", "event_type": "location", "payload": {"latitude": NaN, "longitude": 1}}',
            id="nan",
        ),
        pytest.param(
            b'{"user_id": "u", "event_type": "location", "payload": {"latitude": Infinity, "longitude": 1}}',
            id="infinity",
        ),
        pytest.param(
            b'{"user_id": "u", "event_type": "location", "payload": {"latitude": 1e400, "longitude": 1}}',
            id="huge-number",
        ),
    ],
)
async def test_non_json_or_non_object_body_is_400(
    client: TestClient, db: Database, raw: bytes
) -> None:
    await assert_problem(await post(client, raw), 400)
    assert stored(db) == 0


async def test_nul_characters_in_payload_strings_are_stored_verbatim(
    client: TestClient, db: Database
) -> None:
    event = view(title="t\x00", extra={"k\x00": ["\x00"]})
    response = await post(client, event)
    assert response.status == 202
    (payload,) = db.execute("SELECT payload FROM events").fetchone()
    assert orjson.loads(payload) == event["payload"]


@pytest.mark.parametrize("user", ["a\x00b", "\x00", " \x00 "])
async def test_nul_character_in_user_id_is_400(client: TestClient, db: Database, user: str) -> None:
    """Refused on every backend (PostgreSQL's text cannot hold it): never a 500."""
    body = await assert_problem(await post(client, view(user=user)), 400, "user_id")
    assert body["errors"][0]["message"] == "must not contain the NUL character"
    batch = orjson.dumps({"events": [view(), view(user=user)]})
    await assert_problem(
        await client.post("/events/batch", data=batch, headers=JSON), 400, "events[1].user_id"
    )
    assert stored(db) == 0


async def test_sql_looking_strings_are_data(client: TestClient, db: Database) -> None:
    sneaky = "x'); DROP TABLE events; --"
    assert (await post(client, view(user=sneaky, url=sneaky))).status == 202
    assert db.execute("SELECT user_id FROM events").fetchone() == (sneaky,)


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/json; charset=utf-8",
        "text/plain; charset=iso-8859-1",
    ],
)
async def test_json_and_beacon_content_types_are_accepted(
    client: TestClient, content_type: str
) -> None:
    response = await post(client, view(), {"Content-Type": content_type})
    assert response.status == 202


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
    ],
)
async def test_other_content_types_are_415(
    client: TestClient, db: Database, content_type: str
) -> None:
    await assert_problem(await post(client, view(), {"Content-Type": content_type}), 415)
    assert stored(db) == 0


async def test_missing_content_type_is_415(client: TestClient) -> None:
    response = await client.post(
        "/events", data=orjson.dumps(view()), skip_auto_headers={"Content-Type"}
    )
    await assert_problem(response, 415)


async def test_body_over_64_kib_is_413(client: TestClient, db: Database) -> None:
    raw = orjson.dumps(view(pad="x" * (64 * 1024)))
    await assert_problem(await post(client, raw), 413)
    assert stored(db) == 0


async def test_body_at_64_kib_is_read_then_judged_by_payload_rules(client: TestClient) -> None:
    event = view()
    base = len(orjson.dumps({**event, "pad": ""}))
    raw = orjson.dumps({**event, "pad": "x" * (64 * 1024 - base)})
    assert len(raw) == 64 * 1024
    await assert_problem(await post(client, raw), 400, "pad")  # not 413


async def test_chunked_oversize_body_is_413(client: TestClient) -> None:
    async def chunks():
        for _ in range(80):
            yield b" " * 1024

    response = await client.post("/events", data=chunks(), headers=JSON)
    await assert_problem(response, 413)


# --- Idempotency-Key ---------------------------------------------------------------


async def test_idempotency_key_replay_stores_one_event(client: TestClient, db: Database) -> None:
    headers = {**JSON, "Idempotency-Key": "retry-me-1"}
    first = await post(client, view(), headers)
    again = await post(client, view(), headers)
    assert first.status == again.status == 202
    assert await first.json() == await again.json()
    assert stored(db) == 1
    assert db.execute("SELECT SUM(count) FROM daily_event_counts").fetchone() == (1,)


async def test_idempotency_key_with_other_body_is_422(client: TestClient, db: Database) -> None:
    headers = {**JSON, "Idempotency-Key": "k-422"}
    assert (await post(client, view(url="https://a/"), headers)).status == 202
    await assert_problem(
        await post(client, view(url="https://b/"), headers), 422, "Idempotency-Key"
    )
    assert stored(db) == 1


async def test_concurrent_retries_with_one_key_store_one_event(
    client: TestClient, db: Database
) -> None:
    import asyncio

    headers = {**JSON, "Idempotency-Key": "same-key"}
    responses = await asyncio.gather(*(post(client, view(), headers) for _ in range(20)))
    bodies = [await r.json() for r in responses]
    assert {r.status for r in responses} == {202}
    assert len({b["event_id"] for b in bodies}) == 1
    assert stored(db) == 1


@pytest.mark.parametrize("key", ["", "has space", "é", "x" * 256, "tab\tkey"])
async def test_malformed_idempotency_key_is_400(client: TestClient, db: Database, key: str) -> None:
    response = await client.post(
        "/events", data=orjson.dumps(view()), headers={**JSON, "Idempotency-Key": key}
    )
    await assert_problem(response, 400, "Idempotency-Key")
    assert stored(db) == 0


@pytest.mark.parametrize("key", ["k\n", "k\r\n", "k "])
def test_idempotency_key_is_taken_exactly_as_sent(key: str) -> None:
    """HTTP cannot carry a newline in a header value, so this calls the parser itself:
    defence in depth for a regular expression whose ``$`` matches before a final newline."""
    from aiohttp.test_utils import make_mocked_request

    from ingest.handlers import _idempotency_key

    request = make_mocked_request("POST", "/events", headers={"Idempotency-Key": key})
    assert _idempotency_key(request) == (None, [{"field": "Idempotency-Key", "message": ANY}])


async def test_idempotency_key_of_255_visible_chars_is_accepted(client: TestClient) -> None:
    headers = {**JSON, "Idempotency-Key": "~" * 255}
    assert (await post(client, view(), headers)).status == 202


async def test_event_ids_are_unique_and_time_ordered(client: TestClient) -> None:
    ids = []
    for _ in range(20):
        ids.append((await (await post(client, view())).json())["event_id"])
    assert len(set(ids)) == 20
    assert ids == sorted(ids)


async def test_event_id_embeds_the_timestamps_millisecond(client: TestClient) -> None:
    from datetime import UTC, datetime, timedelta

    epoch = datetime(1970, 1, 1, tzinfo=UTC)

    batch = {"events": [view(user=f"u{i}") for i in range(1000)]}
    response = await client.post("/events/batch", data=orjson.dumps(batch), headers=JSON)
    acks = (await response.json())["events"] + [(await (await post(client, view())).json())]
    for ack in acks:
        embedded_ms = int(ack["event_id"].replace("-", "")[:12], 16)
        stamped = datetime.fromisoformat(ack["timestamp"].replace("Z", "+00:00"))
        assert embedded_ms == (stamped - epoch) // timedelta(milliseconds=1), ack
    assert [a["timestamp"] for a in acks] == sorted(a["timestamp"] for a in acks)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_body_that_does_not_match_its_content_encoding_is_400(
    client: TestClient, db: Database, encoding: str
) -> None:
    response = await post(client, b"xx", {**JSON, "Content-Encoding": encoding})
    await assert_problem(response, 400, "Content-Encoding")
    assert stored(db) == 0


async def test_gzip_body_is_accepted(client: TestClient) -> None:
    import gzip

    response = await post(
        client, gzip.compress(orjson.dumps(view())), {**JSON, "Content-Encoding": "gzip"}
    )
    assert response.status == 202


@pytest.mark.parametrize("encoding", ["compress", "x-gzip", "gzip, gzip", "gzip;q=1", "exi"])
@pytest.mark.parametrize("path", ["/events", "/events/batch"])
async def test_a_content_coding_the_service_does_not_decode_is_415(
    client: TestClient, db: Database, encoding: str, path: str
) -> None:
    """aiohttp decodes only a lone ``gzip`` or ``deflate`` (or ``br``, ``zstd`` with their
    libraries) and passes any other coding through undecoded: the body was then parsed as
    if it had none (found by an outside probe). RFC 9110: 415, naming the header."""
    event = orjson.dumps(view())
    body = event if path == "/events" else b'{"events":[%s]}' % event
    response = await client.post(path, data=body, headers={**JSON, "Content-Encoding": encoding})
    await assert_problem(response, 415, "Content-Encoding")
    assert stored(db) == 0


@pytest.mark.parametrize("encoding", ["identity", "GZIP"])
async def test_identity_and_any_case_of_gzip_are_accepted(
    client: TestClient, encoding: str
) -> None:
    import gzip

    raw = orjson.dumps(view())
    body = raw if encoding == "identity" else gzip.compress(raw)
    response = await post(client, body, {**JSON, "Content-Encoding": encoding})
    assert response.status == 202, await response.text()


async def test_bad_idempotency_key_and_bad_body_are_reported_together(
    client: TestClient, db: Database
) -> None:
    headers = {**JSON, "Idempotency-Key": "has space"}
    await assert_problem(
        await post(client, view(url=""), headers), 400, "payload.url", "Idempotency-Key"
    )
    batch = orjson.dumps({"events": [view(url="")]})
    response = await client.post("/events/batch", data=batch, headers=headers)
    await assert_problem(response, 400, "events[0].payload.url", "Idempotency-Key")
    assert stored(db) == 0
