"""Assembles the service: ``create_app(config)`` wires every part's routes, the
middlewares and the resources (storage, writer, rollup scheduler) into one aiohttp app.

HTTP → validate (schema/) → writer: log + rollup in one transaction (ingest/, rollup/)
→ exact counts from rollup + log edges (query/).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from app import docs
from app.config import Config
from app.inflight import InFlight
from app.keys import BODY_TIMEOUT, CONFIG, INFLIGHT, METRICS, STORE, WRITER
from app.metrics import Metrics, http_middleware, metrics_handler
from app.middlewares import cors_middleware, problem_middleware, quiet_protocol_errors
from ingest import handlers as ingest_handlers
from ingest.writer import Writer
from query import handlers as query_handlers
from rollup import admin as rollup_admin
from schema.backends import open_storage
from web import pages as web_pages

log = logging.getLogger("analytics")

MAX_REQUEST_BYTES = 1024 * 1024 + 64 * 1024  # the batch limit plus headroom; handlers check exactly


async def healthz(request: web.Request) -> web.Response:
    """200 while the process serves."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 only when the database answers, the writer runs and the service is not draining."""
    problems = []
    if request.app[INFLIGHT].draining:
        problems.append("the service is shutting down")
    try:
        if not await request.app[STORE].ping():
            problems.append("database did not answer")
    except Exception as exc:  # readiness must answer, whatever the database does
        log.warning("readiness check: database error: %r", exc)
        problems.append("database error")
    if not request.app[WRITER].running:
        problems.append("writer is not running")
    if problems:
        return web.json_response({"status": "unavailable", "problems": problems}, status=503)
    return web.json_response({"status": "ready"})


def create_app(config: Config) -> web.Application:
    """The whole service for ``config``; resources open on startup and drain on cleanup."""
    inflight = InFlight()
    quiet_protocol_errors()  # a client's malformed request: one WARNING line, no traceback
    metrics = Metrics()
    middlewares = [cors_middleware(config.cors_origins), problem_middleware]
    if config.metrics or config.access_log:  # it sees every final status
        middlewares.insert(0, http_middleware(metrics if config.metrics else None))
    # InFlight outermost: it counts every request, whatever the others answer.
    middlewares.insert(0, inflight.middleware)
    app = web.Application(middlewares=middlewares, client_max_size=MAX_REQUEST_BYTES)
    app[CONFIG] = config
    app[INFLIGHT] = inflight
    app[METRICS] = metrics  # always there: rollup, erasure and retention count into it
    app[BODY_TIMEOUT] = config.body_timeout_s
    app.cleanup_ctx.append(_storage)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if config.metrics:
        app.router.add_get("/metrics", metrics_handler(metrics, config.admin_token))
    ingest_handlers.setup_routes(app)
    query_handlers.setup_routes(app)
    web_pages.setup_routes(app)
    rollup_admin.setup(app, config)  # after _storage: the scheduler stops first
    docs.setup_routes(app)  # /openapi.json and /docs
    return app


async def _storage(app: web.Application) -> AsyncIterator[None]:
    """Open the database and start the writer; on shutdown, drain the writer first."""
    config = app[CONFIG]
    store = open_storage(
        config.db,
        synchronous=config.synchronous,
        busy_timeout_ms=config.busy_timeout_ms,
        readers=config.read_connections,
        answer_cache=config.answer_cache,
    )
    await store.open()  # migrates first
    try:
        writer = Writer(
            store,
            queue_max_events=config.queue_max_events,
            commit_max_events=config.commit_max_events,
            key_ttl_hours=config.idempotency_hours,
            on_commit=app[METRICS].committed if config.metrics else None,
        )
        app[METRICS].watch_queue(lambda: writer.queued_events)
        await writer.start()
    except BaseException:
        await store.close()  # its reader threads would keep the process alive
        raise
    app[STORE] = store
    app[WRITER] = writer
    log.info("serving %s (synchronous=%s)", store.description, config.synchronous)
    try:
        yield
    finally:
        await writer.close()
        await store.close()
        log.info("writer drained, database closed")
