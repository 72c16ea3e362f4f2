"""``POST /events`` and ``POST /events/batch``: read, validate, queue for the writer, answer 202.

Nothing here writes to the database: the writer commits, and a 202 is only sent after
its commit.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson
from aiohttp import web

from app.bodies import read_body
from app.keys import METRICS, STORE, WRITER
from app.problems import Problem, bad_request
from ingest.stamps import stamp_events
from ingest.writer import (
    IdempotencyConflictError,
    QueueFullError,
    WriterClosedError,
    WriteRequest,
)
from schema import strict_json
from schema.events import (
    MAX_BATCH_BODY_BYTES,
    MAX_EVENT_BODY_BYTES,
    Event,
    check_batch,
    check_event,
)
from schema.storage import EventRow, StorageBusyError

JSON_TYPES = {"application/json", "text/plain"}  # text/plain is what sendBeacon sends
_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # fullmatch only: "$" matches before a final "\n"
RETRY_AFTER = {"Retry-After": "1"}
_JSON_UTF8 = {"Content-Type": "application/json; charset=utf-8"}


async def post_event(request: web.Request) -> web.Response:
    """Store one event; 202 ``{"event_id", "timestamp"}`` once committed."""
    body = await _read_json(request, MAX_EVENT_BODY_BYTES)
    key, key_errors = _idempotency_key(request)
    event, errors = check_event(body)
    if errors or key_errors:  # every problem in one answer
        errors.add_all(key_errors)
        raise bad_request(errors)
    assert event is not None
    return await _ingest(request, key, body, [(event, body["payload"])], batch=False)


async def post_batch(request: web.Request) -> web.Response:
    """Store 1–1000 events all or nothing; 202 ``{"accepted", "events"}`` in request order."""
    body = await _read_json(request, MAX_BATCH_BODY_BYTES)
    key, key_errors = _idempotency_key(request)
    events, errors = check_batch(body)
    if errors or key_errors:
        errors.add_all(key_errors)
        raise bad_request(errors)
    pairs = [(event, raw["payload"]) for event, raw in zip(events, body["events"], strict=True)]
    return await _ingest(request, key, body, pairs, batch=True)


async def _ingest(
    request: web.Request,
    key: str | None,
    body: Any,
    events: list[tuple[Event, dict[str, Any]]],
    *,
    batch: bool,
) -> web.Response:
    digest = _request_hash(request.path, body) if key else None
    store = request.app[STORE]
    if key:  # fast path for a retry of a committed request: no trip through the writer
        prior = (await store.find_keys([key])).get(key)
        if prior is not None:
            response = _replay(prior, digest)
            request.app[METRICS].replayed()
            return response

    rows: list[EventRow] = [
        (event_id, event.user_id, event.event_type, timestamp, _dumps(payload))
        for (event, payload), (event_id, timestamp) in zip(
            events, stamp_events(len(events)), strict=True
        )
    ]
    accepted = [{"event_id": row[0], "timestamp": row[3]} for row in rows]
    answer: Any = {"accepted": len(rows), "events": accepted} if batch else accepted[0]
    write = WriteRequest(
        rows=rows,
        response=orjson.dumps(answer).decode(),
        key=key,
        request_hash=digest,
        created_at=rows[0][3],
    )
    try:
        response = await request.app[WRITER].submit(write)
    except QueueFullError:
        raise Problem(
            503, "too many events are waiting to be written; retry shortly", headers=RETRY_AFTER
        ) from None
    except WriterClosedError:
        raise Problem(
            503, "the service is shutting down; retry shortly", headers=RETRY_AFTER
        ) from None
    except IdempotencyConflictError:
        raise _key_conflict() from None
    except StorageBusyError as exc:
        raise Problem(503, "the database is busy; retry shortly", headers=RETRY_AFTER) from exc
    return _accepted(response)


def _replay(prior: tuple[bytes, str], digest: bytes | None) -> web.Response:
    stored_hash, response = prior
    if stored_hash != digest:
        raise _key_conflict()
    return _accepted(response)


def _key_conflict() -> Problem:
    return Problem(
        422,
        "this Idempotency-Key was already used with a different request body",
        [{"field": "Idempotency-Key", "message": "was already used with a different request body"}],
    )


def _accepted(body: str) -> web.Response:
    # The header as text= would set it, without working it out again for every response.
    return web.Response(status=202, body=body.encode(), headers=_JSON_UTF8)


def _dumps(payload: dict[str, Any]) -> str:
    return orjson.dumps(payload).decode()


def _request_hash(path: str, body: Any) -> bytes:
    """Key order and whitespace do not make a different request; the endpoint does."""
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(path.encode() + b"\n" + canonical).digest()


def _idempotency_key(request: web.Request) -> tuple[str | None, list[dict[str, str]]]:
    """The optional key, or the problem with it."""
    if "Idempotency-Key" not in request.headers:  # the common case, without a list
        return None, []
    values = request.headers.getall("Idempotency-Key")
    if len(values) > 1 or not _KEY.fullmatch(values[0]):
        message = "must be one header of 1 to 255 visible ASCII characters"
        return None, [{"field": "Idempotency-Key", "message": message}]
    return values[0], []


async def _read_json(request: web.Request, limit: int) -> Any:
    """The body as JSON, after checking its content type and size."""
    if request.content_type not in JSON_TYPES:
        raise Problem(
            415,
            f"Content-Type must be application/json or text/plain, not {request.content_type!r}",
            [{"field": "Content-Type", "message": "must be application/json or text/plain"}],
        )
    # A declared charset is not trusted: JSON is UTF-8 (RFC 8259), and invalid UTF-8 is a 400.
    raw = await read_body(request, limit)
    try:
        return strict_json.loads(raw)
    except strict_json.JSONDecodeError as exc:
        raise Problem(
            400,
            f"the body is not valid JSON: {exc.msg}",
            [{"field": "body", "message": f"is not valid JSON: {exc.msg}"}],
        ) from None
    except strict_json.AmbiguousJSONError as exc:  # a repeated key, an integer beyond 64 bits
        raise bad_request(exc.errors) from None


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/events", post_event)
    app.router.add_post("/events/batch", post_batch)
