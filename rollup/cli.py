"""``python -m app rebuild`` and ``python -m app reconcile``: the same passes as the admin
API, run directly on the database (no token needed; safe while servers run on it, since
every day is one short transaction under the backend's write exclusion)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import date
from pathlib import Path

import orjson

from app import config as settings
from app.config import Config
from rollup import recount
from schema.backends import UnknownBackendError, is_url, open_storage
from schema.storage import StorageError
from schema.timestamps import parse_day

COMMANDS = ("rebuild", "reconcile")
_SETTINGS = ("db", "busy_timeout_ms", "synchronous", "log_level", "log_format")


def _day(text: str) -> date:
    day = parse_day(text)
    if day is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD")
    return day


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    rebuild = commands.add_parser(
        "rebuild",
        help="recount the rollup from the log for all days or a date range, and repair it",
    )
    rebuild.add_argument("--start", type=_day, help="first day YYYY-MM-DD (default: the first)")
    rebuild.add_argument(
        "--end", type=_day, help="last day YYYY-MM-DD, inclusive (default: the last)"
    )
    reconcile = commands.add_parser(
        "reconcile", help="check every day with events or rollup rows; repair differences"
    )
    for command in (rebuild, reconcile):
        command.add_argument(
            "--dry-run", action="store_true", help="report the differences, write nothing"
        )
        command.add_argument("--json", action="store_true", help="print the report as JSON")
        settings.add_arguments(command, _SETTINGS)


async def _pass(
    config: Config, args: argparse.Namespace, start: date | None, end: date | None
) -> recount.Report:
    store = open_storage(
        config.db, synchronous=config.synchronous, busy_timeout_ms=config.busy_timeout_ms
    )
    await store.open()  # migrates: a no-op on a current database; refuses a newer schema
    try:
        return await recount.run(
            store, args.command, start=start, end=end, dry_run=args.dry_run, trigger="cli"
        )
    finally:
        await store.close()


def run(args: argparse.Namespace, config: Config) -> int:
    """Run the pass and print its report; 0 on success, 1 on a database error, 2 on usage."""
    start, end = getattr(args, "start", None), getattr(args, "end", None)
    if start and end and start > end:
        print("error: --start must not be after --end", file=sys.stderr)
        return 2
    if not is_url(config.db) and not Path(config.db).is_file():
        print(f"error: no database at {config.db}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_pass(config, args, start, end))
    except (StorageError, UnknownBackendError, RuntimeError) as exc:
        print(f"error: {args.command} failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(report.to_text())
    return 0
