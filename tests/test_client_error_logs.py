"""A 4xx caused by the client is logged as a warning at most, never as an error with a
traceback (the contract; issue 10, fault 5). A table of bad requests, each sent to the real
server with its access log on, while every log record is captured at DEBUG.

(The autouse ``no_error_logs`` fixture in conftest also fails any test that logs an ERROR
or a traceback without ``@pytest.mark.server_fault``, so every 4xx the suite sends is
checked too.)
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import replace

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from app.config import Config
from app.factory import create_app
from app.logs import AccessLogger
from tests.helpers import view
from tests.test_hostile import raw_exchange, request_bytes, status_of

# How client errors are logged is the HTTP layer's business, not the storage's: runs once
# (conftest's no_error_logs checks every test on both backends anyway).
pytestmark = pytest.mark.backend_independent

TOKEN = "admin-token-for-log-tests"
JSON = {"Content-Type": "application/json"}
EVENT = orjson.dumps(view())

Send = Callable[[TestClient], Awaitable[int | None]]


def http(method: str, path: str, body: bytes = b"", **headers: str) -> Send:
    async def send(client: TestClient) -> int | None:
        response = await client.request(method, path, data=body or None, headers=headers)
        await response.read()
        return response.status

    return send


def raw(request: bytes) -> Send:
    async def send(client: TestClient) -> int | None:
        return status_of(await raw_exchange(client, request, wait=2.0))

    return send


async def _conflict(client: TestClient) -> int | None:
    key = {**JSON, "Idempotency-Key": "log-test-key"}
    await client.post("/events", data=EVENT, headers=key)
    response = await client.post("/events", data=orjson.dumps(view(user="other")), headers=key)
    return response.status


CHUNKED = "Transfer-Encoding: chunked\r\n"
BAD_REQUESTS = [
    pytest.param(
        http("POST", "/events", b"not deflate", **JSON, **{"Content-Encoding": "deflate"}),
        400,
        id="deflate-that-does-not-inflate",
    ),
    pytest.param(
        http("POST", "/events", b"not gzip", **JSON, **{"Content-Encoding": "gzip"}), 400, id="gzip"
    ),
    pytest.param(
        http(
            "POST",
            "/events/batch",
            zlib.compress(b'{"events": [')[:-4] + b"garbage",
            **JSON,
            **{"Content-Encoding": "deflate"},
        ),
        400,
        id="deflate-corrupt-midway",
    ),
    pytest.param(
        raw(
            b"POST /events HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + EVENT + b"\r\n0\r\n\r\n"
        ),
        400,
        id="bad-chunk-size",
    ),
    pytest.param(raw(request_bytes("/events", EVENT, extra=CHUNKED)), 400, id="length-and-chunked"),
    pytest.param(
        raw(request_bytes("/events", EVENT, length=0).replace(b"Length: 0", b"Length: abc")),
        400,
        id="bad-content-length",
    ),
    pytest.param(
        raw(b"GET /analytics/event-counts?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"),
        400,
        id="request-line-too-long",
    ),
    pytest.param(
        raw(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"z" * 9000 + b"\r\n\r\n"),
        400,
        id="header-too-long",
    ),
    pytest.param(raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"), 400, id="tls-hello"),
    pytest.param(http("POST", "/events", b"{nope", **JSON), 400, id="not-json"),
    pytest.param(
        http("POST", "/events", b'{"user_id": "u", "user_id": "v"}', **JSON), 400, id="repeated"
    ),
    pytest.param(http("POST", "/events", orjson.dumps(view(url=" ")), **JSON), 400, id="invalid"),
    pytest.param(
        http("POST", "/events", b"[" * 2000 + b"]" * 2000, **JSON), 400, id="deeply-nested"
    ),
    pytest.param(http("POST", "/events", b"x" * (64 * 1024 + 1), **JSON), 413, id="too-large"),
    pytest.param(http("POST", "/events", EVENT, **{"Content-Type": "text/html"}), 415, id="415"),
    pytest.param(_conflict, 422, id="idempotency-conflict"),
    pytest.param(
        raw(request_bytes("/events", EVENT, length=len(EVENT) + 50)), 408, id="body-timeout"
    ),
    pytest.param(http("GET", "/analytics/event-counts?start_date=2024-03-10%0A"), 400, id="query"),
    pytest.param(http("GET", "/nope"), 404, id="404"),
    pytest.param(http("DELETE", "/events"), 405, id="405"),
    pytest.param(http("GET", "/admin/rollups/status"), 401, id="401"),
    pytest.param(
        http(
            "POST",
            "/admin/rollups/rebuild",
            b'{"dry_run": 1}',
            **JSON,
            Authorization=f"Bearer {TOKEN}",
        ),
        400,
        id="admin-400",
    ),
]


@pytest.mark.parametrize(("send", "status"), BAD_REQUESTS)
async def test_a_client_error_is_at_most_one_warning_without_traceback(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    config: Config,
    caplog: pytest.LogCaptureFixture,
    send: Send,
    status: int,
) -> None:
    app = create_app(replace(config, admin_token=TOKEN, body_timeout_s=0.3))
    server = await aiohttp_server(app, access_log_class=AccessLogger)
    client = await aiohttp_client(server)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="aiosqlite")  # its DEBUG lines are SQL, not ours
    caplog.clear()
    assert await send(client) == status
    await client.close()  # the connection's end is where aiohttp logs what it could not read
    records = [r for r in caplog.records if r.name != "analytics.access"]
    assert not [r for r in records if r.levelno >= logging.ERROR], records
    assert not [r for r in records if r.exc_info], records
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) <= 1 + (status == 422), [r.getMessage() for r in warnings]
