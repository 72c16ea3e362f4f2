"""``python -m app erase | export | retention``: the data lifecycle on the database
directly, without a server or a token (safe while servers run on the same file: every
step is one short transaction, every export page one short snapshot).

python -m app erase     --user-id ID [--db PATH]
python -m app export    [--format ndjson|csv] [--event-type T] [--start-date D]
                        [--end-date D] [--tz ZONE] [--after CURSOR] [--db PATH]
python -m app retention --before YYYY-MM-DD [--db PATH] [--json]

Exit status: 0 done; 1 the database failed, or retention deleted events the export would
need (the message names the horizon); 2 bad arguments or no database file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import orjson
from multidict import MultiDict
from pydantic import ValidationError

from app import config as settings
from app.config import Config
from app.problems import Problem
from query import export
from rollup import erasure, retention
from schema.backends import UnknownBackendError, is_url, open_storage
from schema.errors import validation_errors
from schema.events import ErasureRequest
from schema.storage import BeforeHorizonError, Storage, StorageError
from schema.timestamps import parse_day

COMMANDS = ("erase", "export", "retention")
_SETTINGS = ("db", "busy_timeout_ms", "synchronous", "log_level")
T = TypeVar("T")


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    erase = commands.add_parser(
        "erase", help="delete every event of one user from the log and the rollups"
    )
    erase.add_argument("--user-id", required=True, help="the user whose events to erase")
    settings.add_arguments(erase, _SETTINGS)

    dump = commands.add_parser(
        "export", help="write the log's events (NDJSON or CSV, log order) to standard output"
    )
    dump.add_argument("--format", default="ndjson", help="ndjson (default) or csv")
    for flag in ("event-type", "start-date", "end-date", "tz"):
        dump.add_argument(f"--{flag}", help="as the analytics parameter of that name")
    dump.add_argument("--after", help="a cursor from an earlier export: continue after it")
    settings.add_arguments(dump, _SETTINGS)

    expire = commands.add_parser(
        "retention", help="delete raw events before a UTC day; the rollups are kept"
    )
    expire.add_argument(
        "--before", required=True, help="YYYY-MM-DD: delete the events before this UTC day"
    )
    expire.add_argument("--json", action="store_true", help="print the report as JSON")
    settings.add_arguments(expire, _SETTINGS)


def run(args: argparse.Namespace, config: Config) -> int:
    """Run one lifecycle command; the exit status as the module docstring says."""
    if not is_url(config.db) and not Path(config.db).is_file():
        print(f"error: no database at {config.db}", file=sys.stderr)
        return 2
    try:
        if args.command == "erase":
            return _erase(args, config)
        if args.command == "export":
            return _export(args, config)
        return _retention(args, config)
    except (StorageError, UnknownBackendError, RuntimeError) as exc:
        print(f"error: {args.command} failed: {exc}", file=sys.stderr)
        return 1


async def _with_store(config: Config, work: Callable[[Storage], Awaitable[T]]) -> T:
    store = open_storage(
        config.db, synchronous=config.synchronous, busy_timeout_ms=config.busy_timeout_ms
    )
    await store.open()  # migrates: a no-op on a current database; refuses a newer schema
    try:
        return await work(store)
    finally:
        await store.close()


def _erase(args: argparse.Namespace, config: Config) -> int:
    try:  # the rules of POST /admin/erasures: an id no event can have is a mistake
        ErasureRequest.model_validate({"user_id": args.user_id})
    except ValidationError as exc:
        for error in validation_errors(exc):
            print(f"error: --user-id {error['message']}", file=sys.stderr)
        return 2
    result = asyncio.run(_with_store(config, lambda store: erasure.erase(store, args.user_id)))
    print(orjson.dumps(result.to_dict()).decode())
    return 0


def _retention(args: argparse.Namespace, config: Config) -> int:
    before = parse_day(args.before)
    if before is None:
        print(f"error: --before {args.before!r} is not a date YYYY-MM-DD", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(
            _with_store(config, lambda store: retention.expire(store, before, trigger="cli"))
        )
    except retention.CutoffInFutureError as exc:
        print(f"error: --before {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(report.summary())
    return 0


def _export(args: argparse.Namespace, config: Config) -> int:
    params: MultiDict[str] = MultiDict()
    for name in ("format", "event_type", "start_date", "end_date", "tz", "after"):
        value = getattr(args, name)
        if value is not None:
            params[name] = value
    try:
        wanted = export.parse_export(params)
    except Problem as problem:
        for error in problem.errors:
            flag = "--" + error["field"].replace("_", "-")
            print(f"error: {flag} {error['message']}", file=sys.stderr)
        return 2

    async def write(store: Storage) -> tuple[int, int]:
        spec, first = await export.open_export(store, wanted)
        out = sys.stdout.buffer
        size = 0
        async for chunk in export.chunks(store, spec, wanted.format, first):
            out.write(chunk)
            size += len(chunk)
        out.flush()
        return spec.upto, size

    try:
        cursor, size = asyncio.run(_with_store(config, write))
    except Problem as problem:  # a cursor ahead of the log
        for error in problem.errors:
            print(f"error: --{error['field']} {error['message']}", file=sys.stderr)
        return 2
    except BeforeHorizonError as exc:
        print(f"error: {export.before_horizon(exc).detail}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader stopped early (``| head``): not our error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing at exit
        return 1
    print(f"export: {size} bytes; cursor {cursor} (--after {cursor} continues)", file=sys.stderr)
    return 0
