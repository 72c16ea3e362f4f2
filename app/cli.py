"""The command line: ``python -m app <command>``.

python -m app serve     [--db PATH] [--host H] [--port P] …
python -m app migrate   [--db PATH]
python -m app rebuild   [--db PATH] [--start D] [--end D] [--dry-run] [--json]
python -m app reconcile [--db PATH] [--dry-run] [--json]
python -m app erase     --user-id ID [--db PATH]
python -m app export    [--format ndjson|csv] [filters] [--after CURSOR] [--db PATH]
python -m app retention --before YYYY-MM-DD [--db PATH] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys

from aiohttp import web

from app import config as settings
from app import lifecycle_cli, logs, server
from app.config import Config
from app.factory import create_app
from rollup import cli as rollup_cli
from schema.backends import UnknownBackendError, describe, open_storage
from schema.storage import SchemaTooNewError, StorageError


def serve(config: Config) -> int:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # uvloop is optional: plain asyncio works, a little slower
        pass
    access_log = logging.getLogger(logs.ACCESS_LOGGER) if config.access_log else None
    app = create_app(config)
    app.on_startup.append(_freeze_startup_objects)  # after the storage and writer started
    try:
        asyncio.run(server.serve(app, config, access_log=access_log))
    except (StorageError, SchemaTooNewError, UnknownBackendError, server.ListenError) as exc:
        # The database cannot be opened or the port is taken: one clear line (a URL without
        # its password).
        logging.getLogger("analytics").error("cannot start: %s", exc)
        return 1
    return 0


async def _migrate(config: Config) -> int:
    return await open_storage(config.db).migrate()


async def _freeze_startup_objects(app: web.Application) -> None:
    """Move everything alive once the service is up (modules, models, the app) out of the
    garbage collector's sight: its collections, a few per request under load, then walk
    only what requests allocate. About a tenth of the event loop's CPU per request
    (README, Operations)."""
    gc.collect()
    gc.freeze()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app", description="Web analytics event service"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the HTTP service")
    settings.add_arguments(serve_cmd)
    migrate_cmd = commands.add_parser("migrate", help="create or upgrade the database, then exit")
    settings.add_arguments(migrate_cmd, ("db", "log_level", "log_format"))
    rollup_cli.add_commands(commands)
    lifecycle_cli.add_commands(commands)
    args = parser.parse_args(argv)
    config = settings.load(args)
    log_setup = logs.configure(config.log_level, config.log_format)
    try:
        if args.command == "serve":
            return serve(config)
        elif args.command == "migrate":
            try:
                version = asyncio.run(_migrate(config))
            except UnknownBackendError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            except (StorageError, SchemaTooNewError) as exc:
                print(f"error: migrate failed: {exc}", file=sys.stderr)
                return 1
            print(f"{describe(config.db)}: schema version {version}")
        elif args.command in rollup_cli.COMMANDS:
            return rollup_cli.run(args, config)
        elif args.command in lifecycle_cli.COMMANDS:
            return lifecycle_cli.run(args, config)
        return 0
    finally:
        log_setup.stop()  # every queued line is written before the process exits
