"""Export: every matching event of the log, in log order, as NDJSON or CSV, streamed in
constant memory.

``GET /admin/export?format=ndjson|csv&event_type=…&start_date=…&end_date=…&tz=…&after=…``
(behind the admin token, see ``rollup.admin``) and ``python -m app export`` share
``open_export`` and ``chunks``.

- **Which events.** Positions (``seq``) in ``(after, cursor]``, where ``cursor`` is the
  log's position when the export began (``Storage.log_position``; on PostgreSQL a bound
  of transaction ids, not an event's own position): the
  ``X-Export-Cursor`` header, sent before the first line, and, for NDJSON, the last line
  ``{"cursor": "…", "events": n}``. Positions are never reused and become visible in
  order, so an export resumed with ``after=<cursor>`` holds exactly the matching events
  committed after the first one began: no overlap, no gap. Events committed while an
  export runs belong to the next one.
- **Reading.** Keyset pagination: each page is one short snapshot on a reader of the pool
  (``Storage.export_page``), at most ``PAGE_EVENTS`` rows (on SQLite of at most
  ``EXPORT_WINDOW`` positions), so an export never holds a reader between pages and
  analytics queries keep theirs. An event erased before its page is read is not exported.
- **Writing.** A chunked ``StreamResponse``: each page is written (and drained) before the
  next is read, so memory does not grow with the export.
- **Retention.** When retention deleted an event the export would include (its range
  starts before the horizon, and its cursor before the newest expired event), the answer
  is a 409 naming the horizon; should retention delete such events while the export
  runs, the stream is cut off without its end (an incomplete chunked body; NDJSON also
  lacks its cursor line), never completed silently short.

NDJSON lines are ``{"event_id", "user_id", "event_type", "timestamp", "payload"}`` with
the payload as the JSON object stored. CSV (the standard library's ``csv``, RFC 4180:
CRLF line ends, quotes doubled, fields with a comma, quote or line break quoted) has
those five columns and a header row; ``payload`` is the stored JSON text.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import operator
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import orjson
from aiohttp import web
from multidict import MultiMapping

from app.keys import STORE
from app.problems import Problem, bad_request
from query.params import Query, parse_query
from schema.storage import (
    BeforeHorizonError,
    ExportFilter,
    ExportPage,
    ExportRow,
    Storage,
    StorageError,
)
from schema.timestamps import format_ts

log = logging.getLogger(__name__)

PARAMETERS = ("format", "after", "event_type", "start_date", "end_date", "tz")
FORMATS = {
    "ndjson": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8; header=present",
}
COLUMNS = ("event_id", "user_id", "event_type", "timestamp", "payload")
PAGE_EVENTS = 5_000  # rows per snapshot (≈1.5 MB of output)
_CURSOR = re.compile(r"[0-9]{1,19}", re.ASCII)
_MAX_CURSOR = 2**63 - 1


@dataclass(frozen=True)
class ExportRequest:
    """A validated export: the query (filters, zone), the format and the cursor."""

    query: Query
    format: str
    after: int


def parse_export(params: MultiMapping[str]) -> ExportRequest:
    """Validate the export's query string; a 400 lists every problem (unknown, repeated
    or malformed parameters, as for the analytics endpoints)."""
    errors: list[dict[str, str]] = []
    fmt = _single(params, "format")
    if fmt is None:
        fmt = "ndjson"
    elif fmt not in FORMATS:
        errors.append({"field": "format", "message": "must be ndjson or csv"})
    after = 0
    cursor = _single(params, "after")
    if cursor is not None:
        if _CURSOR.fullmatch(cursor) and int(cursor) <= _MAX_CURSOR:
            after = int(cursor)
        else:
            errors.append(
                {"field": "after", "message": "must be a cursor this service gave (digits)"}
            )
    try:
        query = parse_query(params, PARAMETERS)
    except Problem as problem:
        raise bad_request(problem.errors + errors) from None
    if errors:
        raise bad_request(errors)
    return ExportRequest(query, fmt, after)


def _single(params: MultiMapping[str], name: str) -> str | None:
    values = params.getall(name, [])
    return values[0] if len(values) == 1 else None  # repeated: parse_query reports it


async def open_export(store: Storage, request: ExportRequest) -> tuple[ExportFilter, ExportPage]:
    """The export's filter and its first page, read before anything is sent, so a cursor
    ahead of the log is a 400 and a range retention emptied a 409 (``BeforeHorizonError``
    is raised as such; callers turn it into their 409 or error message)."""
    cursor = await store.log_position()
    if request.after > cursor:
        raise bad_request(
            [
                {
                    "field": "after",
                    "message": "is ahead of the newest event: not a cursor of this log",
                }
            ]
        )
    query = request.query
    span = query.span()
    if span is None:  # no instant can match: an empty export up to the cursor
        spec = ExportFilter(query.types, cursor, lo="~", hi="~")
    else:
        lo, hi = span
        spec = ExportFilter(
            query.types,
            cursor,
            lo=format_ts(lo) if lo is not None else None,
            hi=format_ts(hi) if hi is not None else None,
        )
    return spec, await store.export_page(spec, request.after, PAGE_EVENTS)


async def chunks(
    store: Storage, spec: ExportFilter, fmt: str, first: ExportPage
) -> AsyncIterator[bytes]:
    """The export's bytes, one chunk per page: the CSV header, the rows, the NDJSON cursor
    line. Raises ``BeforeHorizonError`` if retention takes rows of a later page."""
    render = _ndjson if fmt == "ndjson" else _csv
    if fmt == "csv":
        yield _csv([("", *COLUMNS)])
    page, events = first, 0
    while True:
        # The next page is read (on a reader thread) while this one is rendered and sent.
        following = None
        if page.reached < spec.upto:
            following = asyncio.ensure_future(store.export_page(spec, page.reached, PAGE_EVENTS))
        try:
            if page.rows:
                events += len(page.rows)
                yield render(page.rows)
        except BaseException:  # the consumer stopped early: the read is not needed
            if following is not None:
                following.cancel()
            raise
        if following is None:
            break
        page = await following
    if fmt == "ndjson":
        yield orjson.dumps({"cursor": str(spec.upto), "events": events}) + b"\n"


def _ndjson(rows: list[ExportRow]) -> bytes:
    # The payload is stored as compact JSON text: it goes into the line as it is.
    return "".join(
        [
            f'{{"event_id":"{event_id}","user_id":{orjson.dumps(user_id).decode()},'
            f'"event_type":"{event_type}","timestamp":"{timestamp}","payload":{payload}}}\n'
            for _, event_id, user_id, event_type, timestamp, payload in rows
        ]
    ).encode()


def _csv(rows: list[ExportRow] | list[tuple[str, ...]]) -> bytes:
    """Rows without their first column (the position), RFC 4180 ("excel" dialect: CRLF
    line ends, a field with a comma, quote or line break quoted, quotes doubled)."""
    out = io.StringIO()
    csv.writer(out).writerows(map(_WITHOUT_POSITION, rows))
    return out.getvalue().encode()


_WITHOUT_POSITION = operator.itemgetter(1, 2, 3, 4, 5)


def _headers(fmt: str, cursor: int) -> Mapping[str, str]:
    return {
        "Content-Type": FORMATS[fmt],
        "Content-Disposition": f'attachment; filename="events.{fmt}"',
        "X-Export-Cursor": str(cursor),
        "Cache-Control": "no-store",
    }


async def export(request: web.Request) -> web.StreamResponse:
    """Stream the matching events of the log in log order (see the module docstring)."""
    store = request.app[STORE]
    wanted = parse_export(request.query)
    try:
        spec, first = await open_export(store, wanted)
    except BeforeHorizonError as exc:
        raise before_horizon(exc) from None
    response = web.StreamResponse(headers=_headers(wanted.format, spec.upto))
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        async for chunk in chunks(store, spec, wanted.format, first):
            await response.write(chunk)
    except ConnectionError:  # the client went away: nothing left to tell it
        return response
    except StorageError as exc:  # after the headers: cut the body off, never end it short
        log.warning("export stopped after its headers were sent: %s", exc)
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


def before_horizon(exc: BeforeHorizonError) -> Problem:
    """The 409 for an export that would miss events retention deleted."""
    return Problem(
        409,
        f"raw events before the retention horizon {exc.horizon} were deleted; this export "
        "would miss some of them. Start it at or after the horizon (start_date), or resume "
        "from a cursor given after they were deleted.",
        [{"field": "start_date", "message": f"must be at or after the horizon {exc.horizon}"}],
    )
