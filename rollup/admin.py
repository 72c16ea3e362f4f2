"""The admin HTTP API for the rollup and data lifecycle:

    POST /admin/rollups/rebuild     {"start_date": "2025-05-01", "end_date": "…", "dry_run": false}
    POST /admin/rollups/reconcile   same optional body
    GET  /admin/rollups/status      last report, next scheduled runs, retention horizon
    POST /admin/erasures            {"user_id": "…"}: erase every event of that user
    GET  /admin/export              the log as NDJSON or CSV (``query.export``)

Every route needs ``Authorization: Bearer <admin_token>``. With no token configured the
admin API is off (403); a missing or wrong token is a 401 with ``WWW-Authenticate``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from typing import Any

import orjson
from aiohttp import web

from app.auth import require_admin
from app.bodies import read_body
from app.config import Config
from app.keys import METRICS, RUNNER, STORE
from app.problems import Problem, bad_request
from query import export
from rollup.service import RollupRunner, RunnerClosedError
from schema import strict_json
from schema.events import ErasureRequest
from schema.storage import StorageBusyError
from schema.timestamps import parse_day

MAX_BODY_BYTES = 4096
FIELDS = ("start_date", "end_date", "dry_run")
_RETRY = {"Retry-After": "5"}


def _json(body: object) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _authorize(request: web.Request) -> RollupRunner:
    """The runner, once the admin bearer token matches (``app.auth.require_admin``)."""
    runner = request.app[RUNNER]
    require_admin(request, runner.config.admin_token)
    return runner


def _json_object(request: web.Request, raw: bytes) -> dict[str, Any]:
    """An admin body: ``application/json`` (else 415) holding one JSON object, parsed
    strictly (``{"user_id": "a", "user_id": "b"}``: whose? a 400; see schema.strict_json)."""
    if request.content_type != "application/json":
        raise Problem(415, "the body must be application/json")
    try:
        body: Any = strict_json.loads(raw)
    except strict_json.JSONDecodeError:
        raise bad_request([{"field": "body", "message": "is not valid JSON"}]) from None
    except strict_json.AmbiguousJSONError as exc:
        raise bad_request(exc.errors) from None
    if not isinstance(body, dict):
        raise bad_request([{"field": "body", "message": "must be a JSON object"}])
    return body


async def _options(request: web.Request) -> tuple[date | None, date | None, bool]:
    """``(start, end, dry_run)`` from the optional JSON body; 400 lists every problem."""
    if request.query:
        raise bad_request(
            [
                {"field": name, "message": "is not a known parameter (send options as JSON)"}
                for name in request.query
            ]
        )
    raw = await read_body(request, MAX_BODY_BYTES)
    if not raw:  # no body: the defaults (whitespace alone is not JSON: a 400 below)
        return None, None, False
    body = _json_object(request, raw)

    errors = [
        {"field": name, "message": f"is not an allowed field (allowed: {', '.join(FIELDS)})"}
        for name in body
        if name not in FIELDS
    ]
    bounds: dict[str, date | None] = {}
    for name in ("start_date", "end_date"):
        value = body.get(name)
        if value is None:
            bounds[name] = None
        elif not isinstance(value, str):
            errors.append({"field": name, "message": "must be a string YYYY-MM-DD or null"})
        elif (day := parse_day(value)) is None:
            errors.append({"field": name, "message": f"{value[:64]!r} is not a date YYYY-MM-DD"})
        else:
            bounds[name] = day
    dry_run = body.get("dry_run", False)
    if dry_run is None:
        dry_run = False
    if not isinstance(dry_run, bool):
        errors.append({"field": "dry_run", "message": "must be true or false"})
    start, end = bounds.get("start_date"), bounds.get("end_date")
    if start and end and start > end:
        errors.append({"field": "start_date", "message": "must not be after end_date"})
    if errors:
        raise bad_request(errors)
    return start, end, dry_run


async def _run(request: web.Request, kind: str) -> web.Response:
    runner = _authorize(request)
    start, end, dry_run = await _options(request)
    try:
        report = await runner.run(kind, start=start, end=end, dry_run=dry_run, trigger="http")
    except RunnerClosedError:
        raise Problem(503, "the service is shutting down", headers=_RETRY) from None
    except StorageBusyError as exc:
        raise Problem(503, "the database is busy; retry shortly", headers=_RETRY) from exc
    return _json(report.to_dict())


async def rebuild(request: web.Request) -> web.Response:
    """Recount the rollup from the log for all days (or a date range) and repair it."""
    return await _run(request, "rebuild")


async def reconcile(request: web.Request) -> web.Response:
    """Check every day with events or rollup rows against the log, repairing differences."""
    return await _run(request, "reconcile")


async def status(request: web.Request) -> web.Response:
    """The last report (of any pass in this process), the next scheduled runs and the
    retention horizon."""
    return _json(await _authorize(request).status())


async def erase(request: web.Request) -> web.Response:
    """Erase every event of a user from the log and the rollups: 200 ``{"user_id",
    "events_deleted", "erased_at"}``; repeating it deletes 0."""
    runner = _authorize(request)
    if request.query:
        raise bad_request(
            [{"field": name, "message": "is not a known parameter"} for name in request.query]
        )
    body = _json_object(request, await read_body(request, MAX_BODY_BYTES))
    user_id = ErasureRequest.model_validate(body).user_id  # ValidationError: a 400
    try:
        result = await runner.erase(user_id)
    except RunnerClosedError:
        raise Problem(503, "the service is shutting down", headers=_RETRY) from None
    except StorageBusyError as exc:
        raise Problem(503, "the database is busy; retry shortly", headers=_RETRY) from exc
    return _json(result.to_dict())


def _admin_only(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """``handler`` behind the admin token (for handlers that live outside this module)."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        _authorize(request)
        return await handler(request)

    guarded.__doc__ = handler.__doc__
    return guarded


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: start the scheduler with the app, stop it (and any pass) on shutdown."""
    runner = app[RUNNER]
    runner.store = app[STORE]
    runner.start_scheduler()
    try:
        yield
    finally:
        await runner.close()


def setup(app: web.Application, config: Config) -> None:
    """Add the rollup runner (it counts repaired days, erased and expired events in
    ``app[METRICS]``), its scheduler (a cleanup_ctx; add it after the storage one so it
    stops first), the ``/admin/rollups/*`` routes and the data lifecycle's routes."""
    metrics = app[METRICS]
    app[RUNNER] = RollupRunner(
        config,
        on_repaired=metrics.rollup_repaired,
        on_erased=metrics.erased,
        on_expired=metrics.retention_deleted,
    )
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_post("/admin/rollups/rebuild", rebuild)
    app.router.add_post("/admin/rollups/reconcile", reconcile)
    app.router.add_get("/admin/rollups/status", status)
    app.router.add_post("/admin/erasures", erase)
    app.router.add_get("/admin/export", _admin_only(export.export))
