"""Hostile input: limits, malformed JSON and Unicode, protocol abuse, slow clients.

Each is a 4xx problem (or, for abuse of HTTP itself, a 400 from the protocol layer or a
closed connection), never a 5xx, and never a stored event. Protocol-level abuse goes
through raw sockets, since a well-behaved client library cannot send it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Callable
from dataclasses import replace

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from app.config import Config
from app.factory import create_app
from app.logs import AccessLogger
from schema.events import MAX_BATCH_BODY_BYTES, MAX_PAYLOAD_BYTES
from tests.databases import Database, connect
from tests.helpers import assert_problem, stored, view

# HTTP abuse is the HTTP layer's business, not the storage's: runs once.
pytestmark = pytest.mark.backend_independent

JSON = {"Content-Type": "application/json"}
TIMEOUT = 5.0  # bound on every raw-socket read


async def post(client: TestClient, path: str, raw: bytes):  # type: ignore[no-untyped-def]
    return await client.post(path, data=io.BytesIO(raw), headers=JSON)


def count(config: Config) -> int:
    conn = connect(config.db)
    try:
        return conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        conn.close()


async def raw_exchange(
    client: TestClient, request: bytes, *, until_close: bool = False, wait: float = TIMEOUT
) -> bytes:
    """Send bytes on a fresh connection; return what the server sends: the first complete
    response (or, with ``until_close``, everything until it closes), or whatever arrived
    within ``wait`` seconds."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    received = b""
    try:
        writer.write(request)
        await writer.drain()
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            async with asyncio.timeout(wait):
                while chunk := await reader.read(65536):
                    received += chunk
                    if not until_close and _complete(received):
                        break
        return received
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await writer.wait_closed()


def _complete(received: bytes) -> bool:
    head, sep, body = received.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def status_of(response: bytes) -> int | None:
    """The status of the first response in ``response`` (None: closed without answer)."""
    if not response:
        return None
    line = response.split(b"\r\n", 1)[0].split()
    return int(line[1])


def request_bytes(path: str, body: bytes, *, length: int | None = None, extra: str = "") -> bytes:
    length = len(body) if length is None else length
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    )
    return head.encode() + body


@pytest.fixture
def short_timeout_client(aiohttp_client: Callable[..., TestClient], config: Config):
    """The app with a 0.5 s body timeout (the service default is 10 s)."""

    async def make() -> TestClient:
        return await aiohttp_client(create_app(replace(config, body_timeout_s=0.5)))

    return make


# --- limits: at the limit is judged by the rules, over it is refused ------------------


def _padded_batch(size: int) -> bytes:
    events = [view(user=f"u{i}", pad="") for i in range(1000)]
    raw = orjson.dumps({"events": events})
    missing = size - len(raw)
    events[0]["payload"]["pad"] = "x" * min(missing, MAX_PAYLOAD_BYTES - 100)
    missing -= len(events[0]["payload"]["pad"])
    i = 1
    while missing > 0:
        take = min(missing, MAX_PAYLOAD_BYTES - 100)
        events[i]["payload"]["pad"] = "x" * take
        missing -= take
        i += 1
    raw = orjson.dumps({"events": events})
    assert len(raw) == size
    return raw


async def test_batch_of_exactly_1_mib_is_accepted(client: TestClient, db: Database) -> None:
    response = await post(client, "/events/batch", _padded_batch(MAX_BATCH_BODY_BYTES))
    assert response.status == 202, await response.text()
    assert stored(db) == 1000


async def test_batch_one_byte_over_1_mib_is_413(client: TestClient, db: Database) -> None:
    await assert_problem(
        await post(client, "/events/batch", _padded_batch(MAX_BATCH_BODY_BYTES + 1)), 413
    )
    assert stored(db) == 0


def _payload_of_size(size: int) -> dict[str, object]:
    payload: dict[str, object] = {"url": "https://example.com/", "pad": ""}
    payload["pad"] = "x" * (size - len(orjson.dumps(payload)))
    assert len(orjson.dumps(payload)) == size
    return payload


async def test_payload_of_exactly_16_kib_is_accepted_one_more_byte_is_not(
    client: TestClient, db: Database
) -> None:
    at = {"user_id": "u", "event_type": "view", "payload": _payload_of_size(MAX_PAYLOAD_BYTES)}
    over = {**at, "payload": _payload_of_size(MAX_PAYLOAD_BYTES + 1)}
    assert (await post(client, "/events", orjson.dumps(at))).status == 202
    await assert_problem(await post(client, "/events", orjson.dumps(over)), 400, "payload")
    assert stored(db) == 1


# --- malformed JSON and Unicode ------------------------------------------------------

DEEP = 10_000
HOSTILE_BODIES = [
    pytest.param(b"[" * DEEP + b"]" * DEEP, id="10k-nested-arrays"),
    pytest.param(b'{"a":' * DEEP + b"1" + b"}" * DEEP, id="10k-nested-objects"),
    pytest.param(
        b'{"user_id":"u","event_type":"view","payload":{"url":"x","d":'
        + b"[" * DEEP
        + b"]" * DEEP
        + b"}}",
        id="10k-nested-in-payload",
    ),
    pytest.param(
        b'{"user_id":"u","event_type":"view","payload":{"url":"x","n":1e400}}', id="1e400"
    ),
    pytest.param(
        b'{"user_id":"u","event_type":"view","payload":{"url":"x","n":1' + b"0" * 5000 + b"}}",
        id="5000-digit-integer",
    ),
    pytest.param(
        b'{"user_id":"u","event_type":"location","payload":{"latitude":-1e400,"longitude":0}}',
        id="minus-1e400-latitude",
    ),
    pytest.param(
        b'{"user_id":"u\xc3\x28","event_type":"view","payload":{"url":"x"}}',
        id="invalid-utf8-in-string",
    ),
    pytest.param(
        b'{"user_id":"u\xed\xa0\x80","event_type":"view","payload":{"url":"x"}}',
        id="utf8-encoded-surrogate",
    ),
    pytest.param(
        b'{"user_id":"u","event_type":"view","payload":{"url":"x","\\udc00":1}}',
        id="lone-surrogate-in-key",
    ),
    pytest.param(
        b'{"user_id":"u","event_type":"view","payload":{"url":"\\ud800\\u0041"}}',
        id="high-surrogate-then-letter",
    ),
    pytest.param(b"\xef\xbb\xbf" + orjson.dumps(view()), id="utf8-bom"),
    pytest.param(orjson.dumps(view()) + b"\x00", id="nul-after-json"),
    pytest.param(orjson.dumps(view()) + b"{}", id="two-documents"),
    pytest.param(b"\x00" * 1000, id="only-nuls"),
    pytest.param(orjson.dumps(view()).decode().encode("utf-16"), id="utf-16"),
]


@pytest.mark.parametrize("raw", HOSTILE_BODIES)
@pytest.mark.parametrize("path", ["/events", "/events/batch"])
async def test_hostile_body_is_a_4xx_and_stores_nothing(
    client: TestClient, db: Database, path: str, raw: bytes
) -> None:
    if path == "/events/batch" and raw.startswith(b"{"):
        raw = b'{"events":[' + raw + b"]}"
    response = await post(client, path, raw)
    assert 400 <= response.status < 500, await response.text()
    await assert_problem(response, response.status)
    assert stored(db) == 0


@pytest.mark.parametrize(
    "number", ["18446744073709551616", "-9223372036854775809", "123456789012345678901234567890"]
)
async def test_an_integer_beyond_64_bits_is_a_400_not_silently_rounded(
    client: TestClient, db: Database, number: str
) -> None:
    """orjson reads an integer outside [-2^63, 2^64) as a float: stored, it would be a
    different number than the one sent (found by an outside probe). A 400 naming it."""
    raw = b'{"user_id":"u","event_type":"view","payload":{"url":"x","n":%s}}' % number.encode()
    body = await assert_problem(await post(client, "/events", raw), 400, "payload.n")
    assert "64" in body["errors"][0]["message"]
    batch = b'{"events":[%s,%s]}' % (orjson.dumps(view()), raw)
    await assert_problem(await post(client, "/events/batch", batch), 400, "events[1].payload.n")
    assert stored(db) == 0


async def test_integers_at_the_64_bit_edges_and_long_digit_strings_are_stored_exactly(
    client: TestClient, db: Database
) -> None:
    raw = (
        b'{"user_id":"u","event_type":"view","payload":{"url":"x","hi":18446744073709551615,'
        b'"lo":-9223372036854775808,"s":"1234567890123456789012345","f":1234567890123456789.5}}'
    )
    assert (await post(client, "/events", raw)).status == 202
    (payload,) = db.execute("SELECT payload FROM events").fetchone()
    assert orjson.loads(payload) == {
        "url": "x",
        "hi": 18446744073709551615,
        "lo": -9223372036854775808,
        "s": "1234567890123456789012345",
        "f": 1234567890123456789.5,
    }


async def test_nul_and_astral_characters_in_keys_are_stored_verbatim(
    client: TestClient, db: Database
) -> None:
    event = view(**{"k\x00ey": "v\x00", "\U0001d11e": "𝄞", "\\u0000": "\\"})
    batch = {"events": [event, event]}
    assert (await post(client, "/events", orjson.dumps(event))).status == 202
    assert (await post(client, "/events/batch", orjson.dumps(batch))).status == 202
    payloads = [orjson.loads(p) for (p,) in db.execute("SELECT payload FROM events")]
    assert payloads == [event["payload"]] * 3


async def test_surrogate_pair_escapes_are_one_character(client: TestClient, db: Database) -> None:
    raw = b'{"user_id":"\\ud834\\udd1e","event_type":"view","payload":{"url":"x"}}'
    assert (await post(client, "/events", raw)).status == 202
    assert db.execute("SELECT user_id FROM events").fetchone() == ("𝄞",)


# --- Content-Length lies and slow clients ---------------------------------------------


async def test_content_length_larger_than_the_body_times_out_with_408(
    short_timeout_client, config: Config
) -> None:
    client = await short_timeout_client()
    body = orjson.dumps(view())
    response = await raw_exchange(client, request_bytes("/events", body, length=len(body) + 100))
    assert status_of(response) == 408, response[:300]
    assert b"application/problem+json" in response
    assert count(config) == 0


async def test_content_length_smaller_than_the_body_is_judged_on_what_it_declares(
    client: TestClient, config: Config
) -> None:
    body = orjson.dumps(view())
    # The declared bytes are truncated JSON: 400. The rest is not a request: 400 or closed.
    response = await raw_exchange(
        client, request_bytes("/events", body, length=len(body) // 2), until_close=True
    )
    assert status_of(response) == 400, response[:300]
    statuses = [
        int(line.split()[1]) for line in response.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")
    ]
    assert all(400 <= s < 500 for s in statuses), statuses
    assert count(config) == 0


@pytest.mark.parametrize("length", ["-1", "abc", "1e3", "99999999999999999999999", "5, 5"], ids=str)
async def test_malformed_content_length_is_refused(
    client: TestClient, config: Config, length: str
) -> None:
    body = orjson.dumps(view())
    response = await raw_exchange(
        client,
        request_bytes("/events", body, length=0).replace(
            b"Content-Length: 0", f"Content-Length: {length}".encode()
        ),
    )
    status = status_of(response)
    assert status is None or 400 <= status < 500, response[:300]
    assert count(config) == 0


async def test_content_length_with_chunked_encoding_is_refused(
    client: TestClient, config: Config
) -> None:
    body = orjson.dumps(view())
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    response = await raw_exchange(
        client, request_bytes("/events", chunked, extra="Transfer-Encoding: chunked\r\n")
    )
    status = status_of(response)
    assert status is None or 400 <= status < 500, response[:300]
    assert count(config) == 0


async def test_slow_body_is_408_and_others_are_served_meanwhile(
    short_timeout_client, config: Config
) -> None:
    client = await short_timeout_client()
    body = orjson.dumps(view())
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(request_bytes("/events", b"", length=len(body)))
        response = b""
        async with asyncio.timeout(TIMEOUT):
            for byte in body[:40]:  # one byte every 20 ms: 0.8 s > the 0.5 s body timeout
                writer.write(bytes([byte]))
                await writer.drain()
                # Meanwhile the service answers everyone else.
                if byte == body[5]:
                    other = await client.post("/events", data=orjson.dumps(view()), headers=JSON)
                    assert other.status == 202
                await asyncio.sleep(0.02)
            response = await reader.read(65536)
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await writer.wait_closed()
    assert status_of(response) == 408, response[:300]
    assert count(config) == 1  # only the other client's event


async def test_slow_headers_do_not_block_other_clients(client: TestClient) -> None:
    _reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        await writer.drain()
        for _ in range(5):
            writer.write(b"a")
            await writer.drain()
            response = await client.get("/healthz")
            assert response.status == 200
            await asyncio.sleep(0.02)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await writer.wait_closed()


# --- query strings, URLs and headers ----------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("&".join(["x=1"] * 2000), id="2000-unknown-params"),
        pytest.param("&".join(["event_type=view"] * 500), id="500-repeats"),
        pytest.param("&".join(f"p{i}" for i in range(1500)), id="1500-distinct-names"),
        pytest.param("start_date=" + "9" * 5000, id="5000-digit-date"),
        pytest.param("start_date=%00", id="nul"),
        pytest.param("start_date=%ff%fe", id="invalid-utf8"),
        pytest.param("start_date=%ED%A0%80", id="encoded-surrogate"),
        pytest.param("start_date=2025-01-01T00:00:00%2B99:99", id="bad-offset"),
        pytest.param("start_date=99999-01-01", id="five-digit-year"),
        pytest.param("start_date=0000-01-01", id="year-zero"),
    ],
)
@pytest.mark.parametrize(
    "path",
    [
        "/analytics/event-counts",
        "/analytics/event-counts-by-type",
        "/analytics/event-counts-by-day",
    ],
)
async def test_hostile_query_is_a_400(client: TestClient, path: str, query: str) -> None:
    response = await raw_exchange(
        client,
        f"GET {path}?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode(),
    )
    assert status_of(response) == 400, response[:500]
    assert b"application/problem+json" in response or len(path) + len(query) > 8000


@pytest.mark.parametrize(
    "digits",
    ["٢٠٢٥-٠١-٠١", "２０２５-01-01", "2025-01-01T00:00:00+０１:00", "2025-01-01T00:00:0٠Z"],
)
async def test_dates_with_non_ascii_digits_are_400(client: TestClient, digits: str) -> None:
    response = await client.get("/analytics/event-counts", params={"start_date": digits})
    await assert_problem(response, 400, "start_date")


@pytest.mark.parametrize(
    "request_line",
    [
        pytest.param(
            b"GET /analytics/event-counts?" + b"x" * 9000 + b" HTTP/1.1", id="9000-byte-query"
        ),
        pytest.param(b"GET /" + b"a" * 20000 + b" HTTP/1.1", id="20000-byte-path"),
        pytest.param(b"GET /events/" + b"../" * 3000 + b" HTTP/1.1", id="dot-dot-path"),
    ],
)
async def test_very_long_urls_are_refused(client: TestClient, request_line: bytes) -> None:
    response = await raw_exchange(client, request_line + b"\r\nHost: 127.0.0.1\r\n\r\n")
    status = status_of(response)
    assert status is None or 400 <= status < 500, response[:300]


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"X-Big: " + b"a" * 20000, id="20000-byte-header"),
        pytest.param(b"\r\n".join(b"X-H%d: v" % i for i in range(200)), id="200-headers"),
        pytest.param(b"Idempotency-Key: " + b"k" * 5000, id="5000-byte-idempotency-key"),
        pytest.param(b"Content-Type: application/json; charset=" + b"x" * 5000, id="long-charset"),
        pytest.param(b"Bad Header Name: x", id="space-in-header-name"),
        pytest.param(b"X-Nul: a\x00b", id="nul-in-header"),
    ],
)
async def test_header_abuse_is_refused(client: TestClient, config: Config, header: bytes) -> None:
    body = orjson.dumps(view())
    request = (
        b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + header
        + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    response = await raw_exchange(client, request)
    status = status_of(response)
    assert status is None or 400 <= status < 500 or status == 202, response[:300]
    if status != 202:
        assert count(config) == 0


async def test_garbage_instead_of_http_is_refused(client: TestClient) -> None:
    for garbage in (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
        b"\r\n" * 100,
        b"GET\r\n\r\n",
    ):
        response = await raw_exchange(client, garbage, wait=1.0)
        status = status_of(response)
        assert status is None or 400 <= status < 500, response[:300]


# --- logs never carry secrets or bodies --------------------------------------------------


async def test_admin_token_and_request_bodies_never_reach_the_logs(
    aiohttp_server: Callable[..., TestServer],
    aiohttp_client: Callable[..., TestClient],
    config: Config,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = "s3cr3t-admin-token-that-must-not-leak"
    secret = "body-secret-7f3a9c"
    app = create_app(replace(config, admin_token=token))
    # The service's own access logger (path, status, duration), as `serve` installs it.
    server = await aiohttp_server(app, access_log_class=AccessLogger)
    client = await aiohttp_client(server)
    caplog.set_level(logging.INFO)  # the service's level (at DEBUG, aiosqlite logs SQL args)
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/admin/rollups/status", headers=headers)).status == 200
    assert (await client.post("/admin/rollups/reconcile", headers=headers)).status == 200
    wrong = {"Authorization": f"Bearer {token}x"}
    assert (await client.get("/admin/rollups/status", headers=wrong)).status == 401
    for raw in (
        orjson.dumps(view(user=secret)),
        orjson.dumps({**view(), "user_id": 7, "note": secret}),
        b'{"user_id": "' + secret.encode() + b'", "broken',
        orjson.dumps({"events": [view(user=secret), {"bad": secret}]}),
    ):
        await client.post("/events", data=raw, headers=JSON)
        await client.post("/events/batch", data=raw, headers=JSON)
    await client.get("/analytics/event-counts", params={"start_date": secret})
    text = "\n".join(
        r.getMessage() + (str(r.exc_info) if r.exc_info else "") for r in caplog.records
    )
    assert caplog.records, "expected some log records"
    assert token not in text
    assert secret not in text


# --- security headers on HTML pages ------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/dashboard", "/docs"])
async def test_html_pages_carry_security_headers(client: TestClient, path: str) -> None:
    response = await client.get(path)
    if response.status == 404:
        pytest.skip(f"{path} is not served")
    assert response.status == 200
    assert response.content_type == "text/html"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    csp = response.headers["Content-Security-Policy"]
    directives = dict(
        ([*part.strip().split(" ", 1), ""])[:2] for part in csp.split(";") if part.strip()
    )
    assert "'unsafe-inline'" not in directives.get("script-src", directives.get("default-src", ""))
    assert "'unsafe-eval'" not in csp
    assert directives.get("object-src") == "'none'"
    assert "frame-ancestors" in directives
    html = await response.text()
    assert "<script>" not in html.replace(" ", "").lower()  # no inline script to allow


@pytest.mark.slow
def test_protocol_abuse_is_one_warning_line_not_a_traceback(tmp_path) -> None:
    """aiohttp answers a request line or header over 8190 bytes with a plain 400 before any
    handler runs (no problem+json is possible there); the service logs it as one WARNING
    line without the client's bytes, not as an ERROR traceback quoting them."""
    import socket

    from scripts.crash_test import Service

    service = Service(tmp_path / "abuse.db")
    service.start()
    try:
        for request in (
            b"GET /analytics/event-counts?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"z" * 9000 + b"\r\n\r\n",
        ):
            with socket.create_connection(("127.0.0.1", service.port), timeout=TIMEOUT) as sock:
                sock.sendall(request)
                assert sock.recv(65536).startswith(b"HTTP/1.0 400 ")
    finally:
        assert service.terminate() == 0
    log = service.log()
    assert "Traceback" not in log and " ERROR " not in log, log
    assert log.count("malformed HTTP request") == 2, log
    assert "qqqqqqqq" not in log and "zzzzzzzz" not in log
