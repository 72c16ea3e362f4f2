"""All SQL of the running service, behind one small storage interface.

``SQLiteStore`` owns two connections: a writer (a ``sqlite3`` connection on a thread of
its own, used only by the ingest writer, so the service has one writer of events) and an
aiosqlite reader for queries. Rollup repairs (``rollup/``) use a connection of their own
with the same pragmas (``connection_pragmas``); SQLite's write lock serialises them with
the writer. A PostgreSQL backend would implement the same methods.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import orjson

from rollup.apply import daily_deltas

log = logging.getLogger(__name__)
T = TypeVar("T")

# A log row: (event_id, user_id, event_type, timestamp, payload JSON).
EventRow = tuple[str, str, str, str, str]
# An idempotency row: (key, request_hash, response JSON, created_at).
KeyRow = tuple[str, bytes, str, str]

# Sentinels that sort before and after every day / timestamp string.
LOWEST = ""
HIGHEST = "~"

INSERT_EVENTS_SQL = (
    "INSERT INTO events (event_id, user_id, event_type, timestamp, payload) VALUES (?, ?, ?, ?, ?)"
)
# The same rows as one JSON array ``[[event_id, user_id, event_type, timestamp, payload],
# …]`` in one parameter (see _pack_rows).
INSERT_PACKED_EVENTS_SQL = """
INSERT INTO events (event_id, user_id, event_type, timestamp, payload)
SELECT value->>0, value->>1, value->>2, value->>3, value->>4 FROM json_each(?)
"""
ADD_TO_ROLLUP_SQL = """
INSERT INTO daily_event_counts (day, event_type, count) VALUES (?, ?, ?)
ON CONFLICT (day, event_type) DO UPDATE SET count = count + excluded.count
"""
INSERT_KEYS_SQL = (
    "INSERT INTO idempotency_keys (key, request_hash, response, created_at) VALUES (?, ?, ?, ?)"
)
FIND_KEYS_SQL = "SELECT key, request_hash, response FROM idempotency_keys WHERE key IN ({marks})"
SUM_ROLLUP_SQL = """
SELECT event_type, SUM(count) FROM daily_event_counts
WHERE day >= ? AND day < ? GROUP BY event_type
"""
ROLLUP_BY_DAY_SQL = """
SELECT day, event_type, count FROM daily_event_counts WHERE day >= ? AND day < ?
"""
# Uses the (event_type, timestamp) index: one index range per type, never the table.
COUNT_LOG_SQL = """
SELECT event_type, COUNT(*) FROM events
WHERE event_type IN ({marks}) AND timestamp >= ? AND timestamp < ?
GROUP BY event_type
"""
# Only well-formed days: a stray rollup key must not break the default range (reconcile removes it).
RECENT_DAYS_SQL = """
SELECT DISTINCT day FROM daily_event_counts
WHERE day <= ? AND day GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]'
ORDER BY day DESC LIMIT ?
"""
PRUNE_KEYS_SQL = "DELETE FROM idempotency_keys WHERE created_at < ?"


@dataclass(frozen=True)
class LogSlice:
    """Part of one UTC day, ``[lo, hi)`` as timestamp strings, counted from the log."""

    day: str
    lo: str
    hi: str | None


@dataclass(frozen=True)
class CountPlan:
    """Whole days ``[first_day, end_day)`` from the rollup plus partial days from the log.

    A None day is unbounded on that side; ``first_day == end_day`` means no whole days.
    """

    first_day: str | None
    end_day: str | None
    slices: tuple[LogSlice, ...]
    empty: bool = False


def _pack_rows(rows: Sequence[EventRow]) -> bytes | None:
    """The rows as one JSON array for ``INSERT_PACKED_EVENTS_SQL``, or None to insert them
    row by row.

    Why: ``executemany`` steps SQLite once per row, and every step releases and retakes
    the GIL; while the event loop validates the next requests it holds the GIL, so each
    retake can wait a whole switch interval. One statement over ``json_each`` is one step
    for the whole batch (batch ingest measured ~40 % faster, bench/). The values make the
    round trip exactly (JSON strings, decoded by SQLite), except a NUL character, which
    SQLite's JSON functions cut off: rows with one (only ``user_id`` can hold a raw NUL;
    ``payload`` is JSON text, where control characters are escaped) use ``executemany``.
    """
    for row in rows:
        if "\x00" in row[1] or "\x00" in row[4]:
            return None
    try:
        return orjson.dumps(rows)
    except TypeError:  # not JSON-serialisable (a caller's non-str value): row by row
        return None


def connection_pragmas(synchronous: str, busy_timeout_ms: int, *, cache_mib: int) -> list[str]:
    """Every connection's settings: wait ``busy_timeout`` for the write lock, the chosen
    durability, a page cache, temporary tables in memory."""
    return [
        f"PRAGMA busy_timeout = {int(busy_timeout_ms)}",
        f"PRAGMA synchronous = {synchronous.upper()}",
        f"PRAGMA cache_size = {-1024 * cache_mib}",
        "PRAGMA temp_store = MEMORY",
    ]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def is_busy(exc: BaseException) -> bool:
    """The database stayed locked past the busy timeout (the caller answers 503)."""
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


class SQLiteStore:
    def __init__(self, path: str | Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 5000):
        self.path = str(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout_ms = busy_timeout_ms
        # The writer: a plain sqlite3 connection confined to one thread of its own. Each
        # write transaction is one function call on that thread, i.e. one hand-off from the
        # event loop. (aiosqlite hands off once per statement; under load every hand-off
        # waits for turns of the busy loop, which made commits wait on the loop, not the
        # disk: see bench/ and the README.)
        self._write_thread: ThreadPoolExecutor | None = None
        self._writer: sqlite3.Connection | None = None
        self._reader: aiosqlite.Connection | None = None

    def _pragmas(self, *, cache_mib: int) -> list[str]:
        return connection_pragmas(self.synchronous, self.busy_timeout_ms, cache_mib=cache_mib)

    async def open(self) -> None:
        self._write_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._writer = await self._on_writer(self._open_writer)
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in [*self._pragmas(cache_mib=16), "PRAGMA query_only = ON"]:
            await self._reader.execute(pragma)

    def _open_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in self._pragmas(cache_mib=32):
            conn.execute(pragma)
        return conn

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()
        if self._writer is not None:
            await self._on_writer(self._writer.close)
        if self._write_thread is not None:
            self._write_thread.shutdown(wait=True)
        self._reader = self._writer = self._write_thread = None

    async def _on_writer(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the writer's thread."""
        assert self._write_thread is not None, "store is not open"
        return await asyncio.get_running_loop().run_in_executor(self._write_thread, fn, *args)

    @property
    def reader(self) -> aiosqlite.Connection:
        assert self._reader is not None, "store is not open"
        return self._reader

    # --- writing (each method is one transaction on the writer's thread) ----------------

    async def append(self, rows: Sequence[EventRow], keys: Sequence[KeyRow] = ()) -> None:
        """Append events, add them to the daily rollup and record idempotency keys,
        all in one transaction: either everything is committed or nothing is."""
        if not rows and not keys:
            return
        # Pure-Python preparation stays on the loop's thread: on the writer's thread it
        # would hold the GIL against the loop; there, only SQLite runs (and releases it).
        packed = _pack_rows(rows) if rows else None
        deltas = daily_deltas(rows)
        await self._on_writer(self._append, rows, packed, deltas, keys)

    def _append(
        self,
        rows: Sequence[EventRow],
        packed: bytes | None,
        deltas: Sequence[tuple[str, str, int]],
        keys: Sequence[KeyRow],
    ) -> None:
        with self._write_transaction() as conn:
            if packed is not None:  # one statement, one parameter: see _pack_rows
                conn.execute(INSERT_PACKED_EVENTS_SQL, (packed,))
            elif rows:
                conn.executemany(INSERT_EVENTS_SQL, rows)
            if deltas:
                conn.executemany(ADD_TO_ROLLUP_SQL, deltas)
            if keys:
                conn.executemany(INSERT_KEYS_SQL, keys)

    @contextmanager
    def _write_transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT on the writer; ROLLBACK and re-raise on any error."""
        conn = self._writer
        assert conn is not None, "store is not open"
        if conn.in_transaction:  # never join a transaction a failed rollback left open
            log.warning("writer connection was left in a transaction; rolling it back")
            conn.execute("ROLLBACK")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:  # the original error matters more
                log.exception("rollback failed")
            raise

    async def prune_keys(self, older_than: str) -> int:
        """Forget idempotency keys created before ``older_than`` (a timestamp string)."""
        return await self._on_writer(self._prune_keys, older_than)

    def _prune_keys(self, older_than: str) -> int:
        with self._write_transaction() as conn:
            return conn.execute(PRUNE_KEYS_SQL, (older_than,)).rowcount

    async def find_keys(
        self, keys: Sequence[str], *, use_writer: bool = False
    ) -> dict[str, tuple[bytes, str]]:
        """Stored ``(request_hash, response)`` for those of ``keys`` already used
        (``use_writer``: read on the writer's connection, in line with its commits)."""
        if not keys:
            return {}
        sql = FIND_KEYS_SQL.format(marks=_marks(len(keys)))
        if use_writer:
            rows = await self._on_writer(self._read_on_writer, sql, list(keys))
        else:
            rows = await self.reader.execute_fetchall(sql, list(keys))
        return {key: (digest, response) for key, digest, response in rows}

    def _read_on_writer(self, sql: str, args: list[Any]) -> list[Any]:
        assert self._writer is not None, "store is not open"
        return self._writer.execute(sql, args).fetchall()

    # --- reading -------------------------------------------------------------------

    async def count(self, plan: CountPlan, types: Iterable[str]) -> dict[str, int]:
        """Events per type for the plan: rollup rows for whole days, the log for slices.
        One read transaction, so a commit in between cannot be counted half."""
        per_day = await self.count_by_day(plan, types, whole_days_total=True)
        totals: dict[str, int] = {}
        for (_, event_type), n in per_day.items():
            totals[event_type] = totals.get(event_type, 0) + n
        return totals

    async def count_by_day(
        self, plan: CountPlan, types: Iterable[str], *, whole_days_total: bool = False
    ) -> dict[tuple[str, str], int]:
        """``{(day, event_type): n}``; with ``whole_days_total`` the whole days are
        summed into one pseudo-day ``""`` (cheaper: no row per day)."""
        wanted = tuple(types)
        if plan.empty or not wanted:
            return {}
        conn = self.reader
        counts: dict[tuple[str, str], int] = {}
        day_range = (plan.first_day or LOWEST, plan.end_day or HIGHEST)
        whole = plan.first_day is None or plan.end_day is None or plan.first_day < plan.end_day
        # More than one statement: read them in one snapshot.
        in_transaction = len(plan.slices) + whole > 1
        if in_transaction:
            await conn.execute("BEGIN")
        try:
            # execute_fetchall: one round trip to aiosqlite's thread per statement (a
            # cursor costs three or more: execute, fetch, close); the answers are small.
            if whole:
                if whole_days_total:
                    for event_type, n in await conn.execute_fetchall(SUM_ROLLUP_SQL, day_range):
                        if event_type in wanted and n:
                            counts[("", event_type)] = n
                else:
                    for day, event_type, n in await conn.execute_fetchall(
                        ROLLUP_BY_DAY_SQL, day_range
                    ):
                        if event_type in wanted and n:
                            counts[(day, event_type)] = n
            sql = COUNT_LOG_SQL.format(marks=_marks(len(wanted)))
            for part in plan.slices:
                args = (*wanted, part.lo, part.hi or HIGHEST)
                for event_type, n in await conn.execute_fetchall(sql, args):
                    if n:
                        key = (part.day, event_type)
                        counts[key] = counts.get(key, 0) + n
        finally:
            if in_transaction:
                await conn.execute("COMMIT")
        return counts

    async def recent_days_with_data(self, n: int, until: str | None = None) -> list[str]:
        """The ``n`` most recent days (``<= until``) that have events, newest first."""
        async with self.reader.execute(RECENT_DAYS_SQL, (until or HIGHEST, n)) as cursor:
            return [day async for (day,) in cursor]

    async def ping(self) -> bool:
        async with self.reader.execute("SELECT 1") as cursor:
            return (await cursor.fetchone()) == (1,)
