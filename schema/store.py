"""All SQL of the running service, behind one small storage interface.

``SQLiteStore`` owns two aiosqlite connections: a writer (used only by the ingest
writer, so the service has one writer of events) and a reader for queries. Rollup
repairs (``rollup/``) use a connection of their own; SQLite's write lock serialises them
with the writer. A PostgreSQL backend would implement the same methods.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiosqlite
import orjson

from rollup.apply import daily_deltas

log = logging.getLogger(__name__)

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


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class StorageBusyError(Exception):
    """The database stayed locked past the busy timeout."""


def is_busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


class SQLiteStore:
    def __init__(self, path: str | Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 5000):
        self.path = str(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout_ms = busy_timeout_ms
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None

    async def _connect(self, *, cache_mib: int) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        await conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        await conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        await conn.execute(f"PRAGMA cache_size = {-1024 * cache_mib}")
        await conn.execute("PRAGMA temp_store = MEMORY")
        return conn

    async def open(self) -> None:
        self._writer = await self._connect(cache_mib=32)
        # The writer's first INSERT of a transaction begins it itself (sqlite3 issues BEGIN
        # IMMEDIATE in the same call), so append() needs no separate BEGIN: one round trip
        # to aiosqlite's thread fewer per commit. Under load every round trip waits for a
        # turn of the busy event loop (two, in fact), so this shortens each group commit.
        # Statements other than INSERT/UPDATE/DELETE/REPLACE never open a transaction, and
        # explicit BEGIN ... COMMIT (prune_keys) works as before.
        self._writer.isolation_level = "IMMEDIATE"
        self._reader = await self._connect(cache_mib=16)
        await self._reader.execute("PRAGMA query_only = ON")

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    @property
    def writer(self) -> aiosqlite.Connection:
        assert self._writer is not None, "store is not open"
        return self._writer

    @property
    def reader(self) -> aiosqlite.Connection:
        assert self._reader is not None, "store is not open"
        return self._reader

    # --- writing -------------------------------------------------------------------

    async def append(self, rows: Sequence[EventRow], keys: Sequence[KeyRow] = ()) -> None:
        """Append events, add them to the daily rollup and record idempotency keys,
        all in one transaction: either everything is committed or nothing is."""
        if not rows and not keys:
            return
        conn = self.writer
        if conn.in_transaction:  # never join a transaction a failed rollback left open
            log.warning("writer connection was left in a transaction; rolling it back")
            await self._rollback(conn)
        try:
            # The first INSERT begins the transaction (BEGIN IMMEDIATE, see open()).
            if rows:
                packed = _pack_rows(rows)
                if packed is not None:  # one statement, one parameter: see _pack_rows
                    await conn.executemany(INSERT_PACKED_EVENTS_SQL, [(packed,)])
                else:
                    await conn.executemany(INSERT_EVENTS_SQL, rows)
                await conn.executemany(ADD_TO_ROLLUP_SQL, daily_deltas(rows))
            if keys:
                await conn.executemany(INSERT_KEYS_SQL, keys)
            await conn.execute("COMMIT")
        except BaseException:
            await self._rollback(conn)
            raise

    @staticmethod
    async def _rollback(conn: aiosqlite.Connection) -> None:
        try:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
        except sqlite3.Error:  # the original error matters more
            log.exception("rollback failed")

    async def prune_keys(self, older_than: str) -> int:
        """Forget idempotency keys created before ``older_than`` (a timestamp string)."""
        conn = self.writer
        await conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = await conn.execute(PRUNE_KEYS_SQL, (older_than,))
            await conn.execute("COMMIT")
        except BaseException:
            await self._rollback(conn)
            raise
        return cursor.rowcount

    async def find_keys(
        self, keys: Sequence[str], *, use_writer: bool = False
    ) -> dict[str, tuple[bytes, str]]:
        """Stored ``(request_hash, response)`` for those of ``keys`` already used."""
        if not keys:
            return {}
        conn = self.writer if use_writer else self.reader
        sql = FIND_KEYS_SQL.format(marks=_marks(len(keys)))
        async with conn.execute(sql, list(keys)) as cursor:
            return {key: (digest, response) async for key, digest, response in cursor}

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
