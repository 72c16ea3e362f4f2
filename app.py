"""Assembles the service: ``create_app(config)`` and the command line.

    python -m app serve     [--db PATH] [--host H] [--port P] …
    python -m app migrate   [--db PATH]
    python -m app rebuild   [--db PATH] [--start D] [--end D] [--dry-run] [--json]
    python -m app reconcile [--db PATH] [--dry-run] [--json]

HTTP → validate (schema/) → writer: log + rollup in one transaction (ingest/, rollup/)
→ exact counts from rollup + log edges (query/).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import AsyncIterator

from aiohttp import web

import config as settings
import docs_routes
from config import Config
from ingest import handlers as ingest_handlers
from ingest.handlers import BODY_TIMEOUT, STORE, WRITER
from ingest.writer import Writer
from middlewares import (
    AccessLogger,
    cors_middleware,
    problem_middleware,
    quiet_protocol_errors,
)
from query import handlers as query_handlers
from rollup import admin as rollup_admin
from rollup import cli as rollup_cli
from schema.migrate import migrate
from schema.store import SQLiteStore
from web import pages as web_pages

log = logging.getLogger("analytics")
CONFIG = web.AppKey("config", Config)

MAX_REQUEST_BYTES = 1024 * 1024 + 64 * 1024  # the batch limit plus headroom; handlers check exactly


async def healthz(request: web.Request) -> web.Response:
    """200 while the process serves."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 only when the database answers and the writer runs."""
    problems = []
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
    app = web.Application(
        middlewares=[cors_middleware(config.cors_origins), problem_middleware],
        client_max_size=MAX_REQUEST_BYTES,
    )
    app[CONFIG] = config
    app[BODY_TIMEOUT] = config.body_timeout_s
    app.cleanup_ctx.append(_storage)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    ingest_handlers.setup_routes(app)
    query_handlers.setup_routes(app)
    web_pages.setup_routes(app)
    rollup_admin.setup(app, config)  # after _storage: the scheduler stops first
    docs_routes.setup_routes(app)  # /openapi.json and /docs
    return app


async def _storage(app: web.Application) -> AsyncIterator[None]:
    """Open the database and start the writer; on shutdown, drain the writer first."""
    config = app[CONFIG]
    migrate(config.db)
    store = SQLiteStore(
        config.db, synchronous=config.synchronous, busy_timeout_ms=config.busy_timeout_ms
    )
    await store.open()
    writer = Writer(
        store,
        queue_max_events=config.queue_max_events,
        commit_max_events=config.commit_max_events,
        key_ttl_hours=config.idempotency_hours,
    )
    await writer.start()
    app[STORE] = store
    app[WRITER] = writer
    log.info("serving %s (synchronous=%s)", config.db, config.synchronous)
    try:
        yield
    finally:
        await writer.close()
        await store.close()
        log.info("writer drained, database closed")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiosqlite's DEBUG lines carry SQL arguments, i.e. user data: never log them.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, logging.getLogger().level))


def serve(config: Config) -> None:
    _configure_logging(config.log_level)
    quiet_protocol_errors()  # malformed HTTP: one WARNING line, not a traceback
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # uvloop is optional: plain asyncio works, a little slower
        pass
    app = create_app(config)
    web.run_app(
        app,
        host=config.host,
        port=config.port,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("analytics.access") if config.access_log else None,
        print=None,
        shutdown_timeout=30,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app", description="Web analytics event service"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the HTTP service")
    settings.add_arguments(serve_cmd)
    migrate_cmd = commands.add_parser("migrate", help="create or upgrade the database, then exit")
    settings.add_arguments(migrate_cmd, ("db",))
    rollup_cli.add_commands(commands)
    args = parser.parse_args(argv)
    config = settings.load(args)
    if args.command == "serve":
        serve(config)
    elif args.command == "migrate":
        _configure_logging(config.log_level)
        print(f"{config.db}: schema version {migrate(config.db)}")
    elif args.command in rollup_cli.COMMANDS:
        _configure_logging(config.log_level)
        return rollup_cli.run(args, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
