"""The OpenAPI 3.1 document of the service, generated from the pydantic models.

``build_openapi(app)`` is a pure function of the app's routes: every operation the router
serves is looked up in ``OPERATIONS`` (what it takes and answers); the schemas come from
the models in ``schema.events`` (the same ones that validate requests) and the response
models below, so the document cannot drift from the validation. A route that is missing
from ``OPERATIONS`` fails ``tests/test_openapi.py``; an operation whose route is not
registered is left out of the document.
"""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from schema.errors import MAX_ERRORS
from schema.events import (
    MAX_BATCH_BODY_BYTES,
    MAX_BATCH_EVENTS,
    MAX_EVENT_BODY_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_PAYLOAD_DEPTH,
    Accepted,
    BatchAccepted,
    ClickEvent,
    ErasureRequest,
    EventBatch,
    LocationEvent,
    ViewEvent,
)

REF = "#/components/schemas/{model}"
TAGS = ("ingest", "analytics", "operations", "admin", "documentation", "pages")
VERSION = "1.0.0"

# ---- response models (the handlers build these bodies as dicts) ---------------------

Count = Annotated[int, Field(ge=0)]


class FieldError(BaseModel):
    field: str = Field(description="dotted path, e.g. `events[3].payload.url`")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every 4xx/5xx answer."""

    type: str = Field(description="always `about:blank`")
    title: str = Field(description="the HTTP status phrase")
    status: int = Field(ge=400, le=599)
    detail: str = Field(description="one line naming the first problems (at most 1024 characters)")
    errors: list[FieldError] = Field(
        description=(
            f"every problem found, not only the first, up to {MAX_ERRORS}; each `field` and "
            "`message` is shortened to 256 characters"
        )
    )
    errors_omitted: int | None = Field(
        default=None,
        ge=1,
        description=(
            f"present when more than {MAX_ERRORS} problems were found: how many are not listed. "
            "A batch is checked only until more problems are found than can be listed, so "
            "later events may hold more (the `detail` then says `at least`)."
        ),
    )


class EventCounts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    total_events: Count


class EventCountsByType(BaseModel):
    """Types without events are left out; `{}` when nothing matches."""

    model_config = ConfigDict(extra="forbid")
    view: Count | None = None
    click: Count | None = None
    location: Count | None = None


class DayCounts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    view: Count
    click: Count
    location: Count


class EventCountsByDay(BaseModel):
    """One zero-filled entry per day of the range, in order."""

    model_config = ConfigDict(extra="forbid")
    days: list[DayCounts]


class SeriesBucket(BaseModel):
    """One local hour, day, ISO week or month; only the filtered type with `event_type`."""

    model_config = ConfigDict(extra="forbid")
    start: str = Field(
        description="the bucket's first local instant with its UTC offset (ISO 8601)",
        examples=["2025-05-01T00:00:00+05:45"],
    )
    view: Count | None = None
    click: Count | None = None
    location: Count | None = None


class TimeSeries(BaseModel):
    """Every bucket of the range in order, zero-filled."""

    model_config = ConfigDict(extra="forbid")
    interval: str = Field(pattern="^(hour|day|week|month)$")
    tz: str = Field(description="the IANA time zone of the buckets")
    buckets: list[SeriesBucket]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str = Field(description="`ready` or `unavailable`")
    problems: list[str] | None = Field(default=None, description="why it is not ready")


class DayChange(BaseModel):
    date: str
    before: dict[str, int] = Field(description="the daily rollup's counts per type before")
    after: dict[str, int] = Field(description="the log's counts per type")
    quarter_buckets: int = Field(description="15-minute rollup rows that differed")


class RollupReport(BaseModel):
    """What one reconcile or rebuild pass found (and, unless a dry run, repaired)."""

    kind: str = Field(description="`reconcile` or `rebuild`")
    dry_run: bool
    start_date: str | None = None
    end_date: str | None = None
    trigger: str = Field(description="`cli`, `http` or `schedule`")
    started_at: str
    finished_at: str
    days_checked: Count
    days_changed: list[DayChange]
    events_counted: Count
    ms: float
    longest_transaction_ms: float
    completed: bool


class RollupStatus(BaseModel):
    reconcile_minutes: float
    next_run_at: str | None = None
    running: bool
    last_report: dict[str, Any] | None = Field(
        default=None, description="of the last pass: reconcile, rebuild, retention or erasure"
    )
    last_error: dict[str, Any] | None = None
    retention_days: int = Field(ge=0, description="0: retention is off")
    next_retention_at: str | None = None
    horizon: str | None = Field(
        default=None,
        description=(
            "the oldest instant the raw log still covers (retention deleted the events "
            "before it; their rollups are kept and frozen); null: nothing was deleted"
        ),
    )


class Erased(BaseModel):
    """The answer to an erasure."""

    model_config = ConfigDict(extra="forbid")
    user_id: str
    events_deleted: Count = Field(description="0 when repeated")
    erased_at: str = Field(description="UTC timestamp of the erasure's last transaction")


class RollupOptions(BaseModel):
    """Optional body of the admin passes; an empty body means all days, no dry run."""

    model_config = ConfigDict(extra="forbid")
    start_date: str | None = Field(default=None, pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
    end_date: str | None = Field(default=None, pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
    dry_run: bool | None = False


_MODELS: list[tuple[type[BaseModel], str]] = [
    (ViewEvent, "validation"),
    (ClickEvent, "validation"),
    (LocationEvent, "validation"),
    (EventBatch, "validation"),
    (Accepted, "serialization"),
    (BatchAccepted, "serialization"),
    (Problem, "serialization"),
    (EventCounts, "serialization"),
    (EventCountsByType, "serialization"),
    (EventCountsByDay, "serialization"),
    (TimeSeries, "serialization"),
    (Health, "serialization"),
    (Readiness, "serialization"),
    (RollupReport, "serialization"),
    (RollupStatus, "serialization"),
    (RollupOptions, "validation"),
    (ErasureRequest, "validation"),
    (Erased, "serialization"),
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def component_schemas() -> dict[str, Any]:
    """Every model's JSON Schema, with ``$ref``s into ``#/components/schemas``."""
    _, top = models_json_schema(_MODELS, ref_template=REF)
    schemas: dict[str, Any] = dict(top["$defs"])
    schemas["Event"] = {
        "description": "One event: the payload's rules depend on `event_type`.",
        "oneOf": [_ref("ViewEvent"), _ref("ClickEvent"), _ref("LocationEvent")],
        "discriminator": {
            "propertyName": "event_type",
            "mapping": {
                "view": REF.format(model="ViewEvent"),
                "click": REF.format(model="ClickEvent"),
                "location": REF.format(model="LocationEvent"),
            },
        },
    }
    return schemas


# ---- parameters ------------------------------------------------------------------------

DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
DATE_TIME = DATE + r"[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+ \-][0-9]{2}:[0-9]{2})"
DATE_BOUND_PATTERN = f"^({DATE}|{DATE_TIME})$"
_BOUND_HELP = (
    "`YYYY-MM-DD` (a whole local day of `tz`, inclusive; a day may last 23 or 25 hours) "
    "or an RFC 3339 date-time with an offset (`2025-05-28T09:30:00+02:00`, an exact "
    "instant, inclusive, whatever `tz` says). A date-time without an "
    "offset, an impossible date (`2025-02-30`) or a repeated parameter is a 400. A value "
    "is taken exactly as sent: surrounding whitespace or a trailing newline makes it malformed."
)


def _date_param(name: str, side: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": f"{side} of the range: {_BOUND_HELP}",
        "schema": {"type": "string", "pattern": DATE_BOUND_PATTERN, "maxLength": 64},
        "examples": {
            "day": {"value": "2025-05-28"},
            "instant": {"value": "2025-05-28T09:30:00+02:00"},
        },
    }


START = _date_param("start_date", "Start")
END = _date_param("end_date", "End")
TZ = {
    "name": "tz",
    "in": "query",
    "required": False,
    "description": (
        "IANA time zone (`Europe/Berlin`, `Asia/Kathmandu`); default `UTC`. It says which "
        "local day a `YYYY-MM-DD` bound means and which local day, hour, week or month an "
        "event falls in. An unknown name is a 400."
    ),
    "schema": {"type": "string", "maxLength": 64, "default": "UTC"},
    "examples": {"utc": {"value": "UTC"}, "kathmandu": {"value": "Asia/Kathmandu"}},
}
INTERVAL = {
    "name": "interval",
    "in": "query",
    "required": True,
    "description": "Bucket size: local clock hours, local days, ISO weeks (Monday) or months.",
    "schema": {"type": "string", "enum": ["hour", "day", "week", "month"]},
}
EVENT_TYPE = {
    "name": "event_type",
    "in": "query",
    "required": False,
    "description": "Count only this type.",
    "schema": {"type": "string", "enum": ["view", "click", "location"]},
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "A retry with the same key answers 202 with the original ids and stores nothing new; "
        "the same key with a different body is a 422."
    ),
    "schema": {"type": "string", "pattern": r"^[\x21-\x7e]{1,255}$"},
}
EXPORT_FORMAT = {
    "name": "format",
    "in": "query",
    "required": False,
    "description": "`ndjson` (default) or `csv`.",
    "schema": {"type": "string", "enum": ["ndjson", "csv"], "default": "ndjson"},
}
AFTER = {
    "name": "after",
    "in": "query",
    "required": False,
    "description": "A cursor from an earlier export: continue after it.",
    "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
}
NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "file name",
    "schema": {"type": "string"},
}

# ---- responses -------------------------------------------------------------------------

_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_PROBLEM_TEXT = {
    400: f"Invalid request: `errors` names every problem (up to {MAX_ERRORS}; `errors_omitted`)",
    401: "Missing or wrong admin bearer token",
    403: "The admin API is off: no admin token is configured",
    404: "Not found",
    405: "Method not allowed (see `Allow`)",
    408: "The request body did not arrive in time",
    409: "Needs raw events from before the retention horizon (named in `detail`), which "
    "retention deleted",
    413: "The body is too large",
    415: "Unsupported Content-Type, charset or Content-Encoding",
    422: "The Idempotency-Key was already used with a different body",
    500: "Server fault; the cause is in the server log, never in the answer",
    503: "Overloaded, database busy or shutting down: retry after `Retry-After`",
}


def _problem(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _PROBLEM_TEXT[status],
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }
    if status == 503:
        response["headers"] = _RETRY_AFTER
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


def _json(description: str, model: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _responses(ok: tuple[int, dict[str, Any]], *problems: int) -> dict[str, Any]:
    status, body = ok
    out = {str(status): body}
    for code in sorted({*problems, 500}):
        out[str(code)] = _problem(code)
    return out


def _body(model: str, limit: int) -> dict[str, Any]:
    return {
        "required": True,
        "description": (
            f"At most {limit} bytes. Payloads: at most {MAX_PAYLOAD_BYTES} bytes serialized, "
            f"nested at most {MAX_PAYLOAD_DEPTH} deep. `text/plain` (what `sendBeacon` sends) "
            "is parsed as JSON too. A repeated key anywhere in the body is a 400 (parsers "
            "disagree on which one wins); `user_id` and `url` must not be empty or only "
            "whitespace."
        ),
        "content": {
            "application/json": {"schema": _ref(model)},
            "text/plain": {
                "schema": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": _ref(model),
                }
            },
        },
    }


def _text(description: str, media_type: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


_INGEST_PROBLEMS = (400, 408, 413, 415, 422, 503)
_ADMIN_PROBLEMS = (400, 401, 403, 413, 415, 503)
_ADMIN_BODY = {
    "required": False,
    "description": "Optional; a repeated key is a 400.",
    "content": {"application/json": {"schema": _ref("RollupOptions")}},
}


def _admin_pass(summary: str, description: str) -> dict[str, Any]:
    return {
        "tags": ["admin"],
        "summary": summary,
        "description": description,
        "security": [{"adminToken": []}],
        "requestBody": _ADMIN_BODY,
        "responses": _responses(
            (200, _json("The pass's report", "RollupReport")), *_ADMIN_PROBLEMS
        ),
    }


OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/events"): {
        "tags": ["ingest"],
        "summary": "Record one event",
        "description": (
            "Answers 202 only once the event is committed to the log and its rollup: "
            "a crash after the 202 loses nothing. `event_id` and `timestamp` are assigned "
            "by the server; sending them is a 400."
        ),
        "parameters": [IDEMPOTENCY_KEY],
        "requestBody": _body("Event", MAX_EVENT_BODY_BYTES),
        "responses": _responses((202, _json("Committed", "Accepted")), *_INGEST_PROBLEMS),
    },
    ("POST", "/events/batch"): {
        "tags": ["ingest"],
        "summary": f"Record 1 to {MAX_BATCH_EVENTS} events, all or nothing",
        "description": "Any invalid event is a 400 naming each bad index; nothing is stored.",
        "parameters": [IDEMPOTENCY_KEY],
        "requestBody": _body("EventBatch", MAX_BATCH_BODY_BYTES),
        "responses": _responses(
            (202, _json("Committed, ids in request order", "BatchAccepted")), *_INGEST_PROBLEMS
        ),
    },
    ("GET", "/analytics/event-counts"): {
        "tags": ["analytics"],
        "summary": "Exact number of events",
        "description": "Unknown or repeated parameters are a 400.",
        "parameters": [EVENT_TYPE, START, END, TZ],
        "responses": _responses((200, _json("The count", "EventCounts")), 400, 409),
    },
    ("GET", "/analytics/event-counts-by-type"): {
        "tags": ["analytics"],
        "summary": "Exact number of events per type",
        "description": "An `event_type` parameter here is an unknown parameter: 400.",
        "parameters": [START, END, TZ],
        "responses": _responses((200, _json("Counts per type", "EventCountsByType")), 400, 409),
    },
    ("GET", "/analytics/event-counts-by-day"): {
        "tags": ["analytics"],
        "summary": "Exact number of events per local day and type",
        "description": (
            "One zero-filled entry per local day of `tz`. The range defaults to the last 30 "
            "days up to and including today, or, when those hold no event, the 30 days up to "
            "the newest day that has events. At most 3,660 days."
        ),
        "parameters": [EVENT_TYPE, START, END, TZ],
        "responses": _responses((200, _json("Counts per day", "EventCountsByDay")), 400, 409),
    },
    ("GET", "/analytics/timeseries"): {
        "tags": ["analytics"],
        "summary": "Exact counts per local hour, day, ISO week or month",
        "description": (
            "Every bucket of the range, zero-filled; `start` is the bucket's first local "
            "instant with its offset. The range defaults to the last 24 hours, 30 days, 12 "
            "weeks or 12 months ending now. When the clock goes back, the repeated hour is two "
            "buckets, each with its own offset. More than 10,000 buckets is a 400."
        ),
        "parameters": [INTERVAL, EVENT_TYPE, START, END, TZ],
        "responses": _responses((200, _json("The series", "TimeSeries")), 400, 409),
    },
    ("GET", "/healthz"): {
        "tags": ["operations"],
        "summary": "Liveness: 200 while the process serves",
        "responses": _responses((200, _json("Serving", "Health"))),
    },
    ("GET", "/readyz"): {
        "tags": ["operations"],
        "summary": "Readiness: the database answers and the writer runs",
        "responses": {
            "200": _json("Ready", "Readiness"),
            "503": _json("Not ready", "Readiness"),
            "500": _problem(500),
        },
    },
    ("GET", "/metrics"): {
        "tags": ["operations"],
        "summary": "Prometheus metrics (text exposition format)",
        "description": (
            "Events accepted and rejected, replays, requests by route pattern and status, "
            "latency, queue depth, commit size and time, rollup repairs, erasure and "
            "retention. Needs the admin bearer token when one is configured."
        ),
        "security": [{}, {"adminToken": []}],
        "responses": _responses(
            (200, _text("Metrics", "text/plain; version=0.0.4; charset=utf-8")), 401
        ),
    },
    ("POST", "/admin/rollups/rebuild"): _admin_pass(
        "Recount the rollup from the log and repair it",
        "For all days or a date range, while ingestion goes on.",
    ),
    ("POST", "/admin/rollups/reconcile"): _admin_pass(
        "Check every day against the log, repairing differences",
        "What the scheduled reconciliation does, on demand.",
    ),
    ("GET", "/admin/rollups/status"): {
        "tags": ["admin"],
        "summary": "The last report, the next scheduled runs and the retention horizon",
        "security": [{"adminToken": []}],
        "responses": _responses((200, _json("Status", "RollupStatus")), 401, 403),
    },
    ("POST", "/admin/erasures"): {
        "tags": ["admin"],
        "summary": "Erase every event of one user from the log and the rollups",
        "description": (
            "Each event leaves the log and every rollup in the same transaction (many "
            "events: bounded transactions, each consistent). Repeating it deletes 0. An "
            "audit record keeps when, how many and a SHA-256 of the user_id, never the id."
        ),
        "security": [{"adminToken": []}],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref("ErasureRequest")}},
        },
        "responses": _responses((200, _json("Erased", "Erased")), *_ADMIN_PROBLEMS),
    },
    ("GET", "/admin/export"): {
        "tags": ["admin"],
        "summary": "Stream the log's events as NDJSON or CSV, in log order",
        "description": (
            "Every matching event committed before the export began, after the `after` "
            "cursor, one per line: `{event_id, user_id, event_type, timestamp, payload}` "
            "(CSV: those columns with a header row, RFC 4180, payload as JSON text). The "
            '`X-Export-Cursor` header and, for NDJSON, a last line `{"cursor", '
            '"events"}` give the cursor to continue from: no overlap, no gap. A range '
            "whose raw events retention deleted is a 409."
        ),
        "security": [{"adminToken": []}],
        "parameters": [EXPORT_FORMAT, AFTER, EVENT_TYPE, START, END, TZ],
        "responses": _responses(
            (
                200,
                {
                    "description": "The events, streamed (chunked)",
                    "headers": {
                        "X-Export-Cursor": {
                            "description": "pass as `after` to continue after this export",
                            "schema": {"type": "string", "pattern": "^[0-9]+$"},
                        }
                    },
                    "content": {
                        "application/x-ndjson": {"schema": {"type": "string"}},
                        "text/csv": {"schema": {"type": "string"}},
                    },
                },
            ),
            400,
            401,
            403,
            409,
        ),
    },
    ("GET", "/openapi.json"): {
        "tags": ["documentation"],
        "summary": "This document",
        "responses": _responses(
            (
                200,
                {
                    "description": "OpenAPI 3.1",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
            )
        ),
    },
    ("GET", "/docs"): {
        "tags": ["documentation"],
        "summary": "This document, rendered (Swagger UI, served offline)",
        "responses": _responses((200, _text("HTML page", "text/html"))),
    },
    ("GET", "/docs/static/{name}"): {
        "tags": ["documentation"],
        "summary": "The documentation page's scripts and styles",
        "parameters": [NAME],
        "responses": _responses((200, _text("A file", "application/octet-stream")), 404),
    },
    ("GET", "/"): {
        "tags": ["pages"],
        "summary": "Demo page that sends events",
        "responses": _responses((200, _text("HTML page", "text/html"))),
    },
    ("GET", "/dashboard"): {
        "tags": ["pages"],
        "summary": "Dashboard of the analytics endpoints",
        "responses": _responses((200, _text("HTML page", "text/html"))),
    },
    ("GET", "/service-worker.js"): {
        "tags": ["pages"],
        "summary": "The demo page's service worker (queues events while offline)",
        "responses": _responses((200, _text("Script", "text/javascript"))),
    },
    ("GET", "/static/{name}"): {
        "tags": ["pages"],
        "summary": "The pages' scripts, styles and images",
        "parameters": [NAME],
        "responses": _responses((200, _text("A file", "application/octet-stream")), 404),
    },
}


def route_paths(app: web.Application) -> set[tuple[str, str]]:
    """``(method, OpenAPI path)`` of every route (HEAD, OPTIONS and static dirs excluded)."""
    found = set()
    for route in app.router.routes():
        if route.method in {"HEAD", "OPTIONS", "*"}:
            continue
        resource = route.resource
        if resource is None or isinstance(resource, web.StaticResource):
            continue
        found.add((route.method, resource.canonical))
    return found


def build_openapi(app: web.Application, *, server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``app``'s routes."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path in sorted(route_paths(app), key=lambda mp: (mp[1], mp[0])):
        operation = OPERATIONS.get((method, path))
        if operation is None:
            continue  # tests/test_openapi.py fails on an undocumented route
        op = dict(operation)
        op.setdefault("operationId", _operation_id(method, path))
        paths.setdefault(path, {})[method.lower()] = op
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Web analytics event service",
            "version": VERSION,
            "description": (
                "Collects `view`, `click` and `location` events into an append-only log and "
                "answers exact counts. A 202 means committed. Every 4xx/5xx body is "
                "`application/problem+json`; an unknown path is a 404 and a wrong method "
                "a 405 with `Allow`."
            ),
            "license": {"name": "Proprietary"},
        },
        "tags": [{"name": name} for name in TAGS],
        "paths": paths,
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the configured admin token (`--admin-token`)",
                }
            },
            "responses": {
                "NotFound": _problem(404),
                "MethodNotAllowed": {
                    **_problem(405),
                    "headers": {"Allow": {"schema": {"type": "string"}}},
                },
            },
        },
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document


def _operation_id(method: str, path: str) -> str:
    words = [w for w in path.replace("{", "").replace("}", "").replace("-", "/").split("/") if w]
    words = [w.replace(".", "_") for w in words]
    return method.lower() + "".join(w[:1].upper() + w[1:] for w in words or ["root"])
