"""The SQLite backend of ``schema.storage.Storage``: all SQL the service runs on a file.

Who touches which connection (nothing is shared between concurrent requests):

- **the writer**: one ``sqlite3`` connection confined to one thread of its own. Each write
  transaction (a group commit, a key prune) is one function call on that thread, i.e. one
  hand-off from the event loop, and SQLite's one write lock orders it with other processes.
  (aiosqlite hands off once per statement and has no public way to run a function on its
  thread; a write transaction must not wait on a busy event loop between its statements
  while it holds the write lock — see the README's profile notes.)
- **readers**: a small pool of aiosqlite connections (each on its own thread, read-only).
  A read (a count, a key lookup) is ONE statement on an idle one: one hand-off, and one WAL
  snapshot of its own, never another request's connection or transaction. A whole count
  (rollup days, 15-minute buckets, log slivers) is written as one statement for this.
- **maintenance**: one thread with its own connection for rollup recounts, so a long
  reconcile pass neither blocks the writer's thread nor takes a reader.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import orjson

from schema.events import EVENT_TYPES
from schema.sqlite.answers import AnswerCache
from schema.sqlite.migrate import migrate
from schema.storage import (
    AuditEntry,
    BeforeHorizonError,
    CountPlan,
    DayLook,
    DayRecount,
    EventRow,
    ExportFilter,
    ExportPage,
    LifecycleStep,
    StorageBusyError,
    StorageError,
    StorageIntegrityError,
    StoredKey,
    WriteGroup,
)
from schema.timestamps import parse_day

log = logging.getLogger(__name__)
T = TypeVar("T")

# The 15-minute bucket (epoch seconds, floored to 900; SQLite's % truncates toward zero,
# hence the double modulo for instants before 1970) of a column ``s`` of epoch seconds.
BUCKET_OF_S = "s - ((s % 900) + 900) % 900"
EPOCH_S_OF_TIMESTAMP = "unixepoch(substr(timestamp, 1, 19))"

_EPOCH_DAY = date(1970, 1, 1)

# Sentinels that sort before and after every day / timestamp string.
LOWEST = ""
HIGHEST = "~"

# --- writing -------------------------------------------------------------------------

INSERT_EVENTS_SQL = (
    "INSERT INTO events (event_id, user_id, event_type, timestamp, payload) VALUES (?, ?, ?, ?, ?)"
)
# The same rows as one JSON array ``[[event_id, user_id, event_type, timestamp, payload],
# …]`` in one parameter (see _pack_rows).
INSERT_PACKED_EVENTS_SQL = """
INSERT INTO events (event_id, user_id, event_type, timestamp, payload)
SELECT value->>0, value->>1, value->>2, value->>3, value->>4 FROM json_each(?)
"""
# The newest seq, and the highest seq any erasure or retention transaction had seen.
# SQLite gives a new row MAX(seq) + 1, which would reuse the seq of a newest row that was
# deleted (a seq is an export cursor: it must never name two events); then, and only
# then, rows are numbered explicitly above the floor (an explicit rowid costs a seek per
# row, measured ~15 % of a group commit, so the usual path lets SQLite append).
LAST_SEQ_SQL = """
SELECT (SELECT COALESCE(MAX(seq), 0) FROM events), (SELECT seq_floor FROM log_state)
"""
INSERT_NUMBERED_EVENTS_SQL = """
INSERT INTO events (seq, event_id, user_id, event_type, timestamp, payload)
VALUES (?, ?, ?, ?, ?, ?)
"""
# The rollup rows of the events this transaction appended (``seq`` above the last one
# before it: one writer at a time, so they are exactly ours), read back while their pages
# are hot. ``WHERE`` keeps SQLite's upsert parser unambiguous.
# NOT INDEXED: only the rowid range; else the planner would walk the whole
# ("events#day#user_id") index, whose order matches the GROUP BY (measured: 100x slower).
ADD_TO_DAILY_SQL = """
INSERT INTO daily_event_counts (day, event_type, count)
SELECT substr(timestamp, 1, 10), event_type, COUNT(*) FROM events NOT INDEXED WHERE seq > ?
GROUP BY 1, 2
ON CONFLICT (day, event_type) DO UPDATE SET count = count + excluded.count
"""
ADD_TO_QUARTERS_SQL = f"""
INSERT INTO quarter_hour_event_counts (bucket, event_type, count)
SELECT {BUCKET_OF_S}, event_type, COUNT(*) FROM (
    SELECT {EPOCH_S_OF_TIMESTAMP} AS s, event_type FROM events WHERE seq > ?
) WHERE true GROUP BY 1, 2
ON CONFLICT (bucket, event_type) DO UPDATE SET count = count + excluded.count
"""
INSERT_KEYS_SQL = (
    "INSERT INTO idempotency_keys (key, request_hash, response, created_at) VALUES (?, ?, ?, ?)"
)
FIND_KEYS_SQL = "SELECT key, request_hash, response FROM idempotency_keys WHERE key IN ({marks})"
PRUNE_KEYS_SQL = "DELETE FROM idempotency_keys WHERE created_at < ?"

# --- reading -------------------------------------------------------------------------


# A whole count is ONE statement, so it is one snapshot (SQLite reads a statement in one
# implicit read transaction) and one hand-off to a reader. Each distinct range of a plan
# (a JSON array of ``[lo, hi]`` per source) is one index range, answered as the three
# types' totals in one JSON array: a correlated subquery per range avoids the sort a
# GROUP BY over (range, type) needs, which measured ~3x slower for a year of local days.
def _totals(aggregate: str) -> str:
    return ", ".join(f"{aggregate} FILTER (WHERE event_type = '{t}')" for t in EVENT_TYPES)


COUNT_PLAN_SQL = f"""
SELECT 0, r.key, (
    SELECT json_array({_totals("SUM(count)")}) FROM daily_event_counts
    WHERE day >= r.value->>0 AND day < r.value->>1
) FROM json_each(?1) AS r
UNION ALL
SELECT 1, r.key, (
    SELECT json_array({_totals("SUM(count)")}) FROM quarter_hour_event_counts
    WHERE bucket >= r.value->>0 AND bucket < r.value->>1
) FROM json_each(?2) AS r
UNION ALL
SELECT 2, r.key, (
    SELECT json_array({_totals("COUNT(*)")}) FROM events
    WHERE event_type IN ({", ".join(f"'{t}'" for t in EVENT_TYPES)})
      AND timestamp >= r.value->>0 AND timestamp < r.value->>1
) FROM json_each(?3) AS r
"""
# The same, plus one row ``(HORIZON_ROW, 0, horizon)``: the retention horizon, read in the
# counts' own snapshot.
HORIZON_ROW = 3
COUNT_PLAN_AND_HORIZON_SQL = (
    COUNT_PLAN_SQL + f"UNION ALL\nSELECT {HORIZON_ROW}, 0, horizon FROM log_state\n"
)
NEWEST_BUCKET_SQL = "SELECT MAX(bucket) FROM quarter_hour_event_counts"

# --- rollup maintenance --------------------------------------------------------------

# Each is one descent of the (event_type, timestamp) index: O(log n), never a scan.
FIRST_TIMESTAMP_SQL = "SELECT MIN(timestamp) FROM events WHERE event_type = ?"
LAST_TIMESTAMP_SQL = "SELECT MAX(timestamp) FROM events WHERE event_type = ?"
ROLLUP_DAYS_SQL = "SELECT DISTINCT day FROM daily_event_counts ORDER BY day"
# Days (epoch seconds of their first instant) that hold quarter rows; a rollup of a year
# is ~100k rows, scanned once per pass.
QUARTER_DAYS_SQL = (
    "SELECT DISTINCT bucket - ((bucket % 86400) + 86400) % 86400 FROM quarter_hour_event_counts"
)
# One day of the log per (bucket, type): the day's 96 buckets × the types as ranges of
# the (event_type, timestamp) index, each counted where it lies — no date arithmetic per
# row and no sort (5× faster than grouping the day's rows by a computed bucket: 2.9 vs
# 14.6 ms for a day of 27,000 events). ?1 is the day's first second (epoch); bucket
# bounds are log timestamps, and the one past 9999-12-31 is HIGHEST.
_TIMESTAMP_OF_S = "strftime('%Y-%m-%dT%H:%M:%S.000000Z', {}, 'unixepoch')"
COUNT_DAY_BY_QUARTER_SQL = f"""
WITH RECURSIVE q(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM q WHERE i < 95),
b(bucket, lo, hi) AS (
    SELECT ?1 + i * 900, {_TIMESTAMP_OF_S.format("?1 + i * 900")},
           COALESCE({_TIMESTAMP_OF_S.format("?1 + i * 900 + 900")}, '{HIGHEST}')
    FROM q
),
t(event_type) AS (VALUES {", ".join(f"(?{i + 2})" for i in range(len(EVENT_TYPES)))})
SELECT bucket, event_type, n FROM (
    SELECT b.bucket, t.event_type, (
        SELECT COUNT(*) FROM events
        WHERE events.event_type = t.event_type AND timestamp >= b.lo AND timestamp < b.hi
    ) AS n
    FROM b, t
) WHERE n > 0
"""
DAILY_OF_DAY_SQL = "SELECT event_type, count FROM daily_event_counts WHERE day = ?"
QUARTERS_OF_DAY_SQL = """
SELECT bucket, event_type, count FROM quarter_hour_event_counts WHERE bucket >= ? AND bucket < ?
"""
SET_DAILY_SQL = """
INSERT INTO daily_event_counts (day, event_type, count) VALUES (?, ?, ?)
ON CONFLICT (day, event_type) DO UPDATE SET count = excluded.count
"""
DELETE_DAILY_SQL = "DELETE FROM daily_event_counts WHERE day = ? AND event_type = ?"
SET_QUARTER_SQL = """
INSERT INTO quarter_hour_event_counts (bucket, event_type, count) VALUES (?, ?, ?)
ON CONFLICT (bucket, event_type) DO UPDATE SET count = excluded.count
"""
DELETE_QUARTER_SQL = "DELETE FROM quarter_hour_event_counts WHERE bucket = ? AND event_type = ?"

BUSY_ATTEMPTS = 3  # a repair's attempts at the write lock, each waiting busy_timeout

# --- data lifecycle: erasure, retention, export -----------------------------------------

HORIZON_SQL = "SELECT horizon FROM log_state"
# One descent of the (event_type, timestamp) index per type.
OLDEST_TIMESTAMP_SQL = (
    "SELECT MIN(t) FROM ("
    + " UNION ALL ".join(
        f"SELECT MIN(timestamp) AS t FROM events WHERE event_type = '{t}'" for t in EVENT_TYPES
    )
    + ")"
)
LIFECYCLE_STATE_SQL = "SELECT horizon, expired_seq FROM log_state"
POSITION_SQL = (
    "SELECT MAX((SELECT COALESCE(MAX(seq), 0) FROM events), (SELECT seq_floor FROM log_state))"
)
# The log's events may leave it only while this row exists (the DELETE trigger's WHEN);
# a lifecycle transaction inserts it first and deletes it before its COMMIT.
GRANT_PERMIT_SQL = "INSERT INTO lifecycle_permit (id) VALUES (1)"
REVOKE_PERMIT_SQL = "DELETE FROM lifecycle_permit"
# Before deleting: no later append may reuse a seq this transaction could delete.
RAISE_SEQ_FLOOR_SQL = (
    "UPDATE log_state SET seq_floor = MAX(seq_floor, (SELECT COALESCE(MAX(seq), 0) FROM events))"
)
START_AUDIT_SQL = """
INSERT INTO lifecycle_audit (operation, started_at, user_id_sha256, before) VALUES (?, ?, ?, ?)
"""
ADD_TO_AUDIT_SQL = """
UPDATE lifecycle_audit SET events_deleted = events_deleted + ?,
    finished_at = CASE WHEN ? THEN ? ELSE finished_at END
WHERE id = ?
"""

# Erasure. The events to delete in this step, with what the rollups need to know, go
# into temporary tables of the writer's connection (in memory, never seen by others).
DOOMED_TABLES_SQL = (
    "CREATE TEMP TABLE IF NOT EXISTS doomed"
    " (seq INTEGER PRIMARY KEY, event_type TEXT NOT NULL, timestamp TEXT NOT NULL)",
    "CREATE TEMP TABLE IF NOT EXISTS doomed_days (day TEXT NOT NULL, event_type TEXT NOT NULL,"
    " n INTEGER NOT NULL, PRIMARY KEY (day, event_type)) WITHOUT ROWID",
    "CREATE TEMP TABLE IF NOT EXISTS doomed_quarters (bucket INTEGER NOT NULL,"
    " event_type TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (bucket, event_type))"
    " WITHOUT ROWID",
    "DELETE FROM temp.doomed",
    "DELETE FROM temp.doomed_days",
    "DELETE FROM temp.doomed_quarters",
)
# One seek of the ("events#day#user_id") index: the user's events of one UTC day.
FIND_USER_EVENTS_SQL = """
INSERT INTO temp.doomed (seq, event_type, timestamp)
SELECT seq, event_type, timestamp FROM events
WHERE substr(timestamp, 1, 10) = ? AND user_id = ? AND seq <= ?
LIMIT ?
"""
# Warming (a read snapshot, no lock): the user's next events of one day, then a look-up
# of each in the two other indexes, so the step under the write lock finds every page it
# changes in memory instead of reading it from disk.
LOOK_USER_EVENTS_SQL = """
SELECT event_id, event_type, timestamp FROM events
WHERE substr(timestamp, 1, 10) = ? AND user_id = ? AND seq <= ?
LIMIT ?
"""
TOUCH_EVENT_IDS_SQL = """
SELECT COUNT(*) FROM json_each(?) AS j JOIN events AS e INDEXED BY "events#event_id"
    ON e.event_id = j.value->>0
"""
TOUCH_TYPE_TIMESTAMPS_SQL = """
SELECT COUNT(*) FROM json_each(?) AS j JOIN events AS e INDEXED BY "events#event_type#timestamp"
    ON e.event_type = j.value->>1 AND e.timestamp = j.value->>2
"""
DOOMED_BY_DAY_SQL = """
INSERT INTO temp.doomed_days (day, event_type, n)
SELECT substr(timestamp, 1, 10), event_type, COUNT(*) FROM temp.doomed GROUP BY 1, 2
"""
DOOMED_BY_QUARTER_SQL = f"""
INSERT INTO temp.doomed_quarters (bucket, event_type, n)
SELECT {BUCKET_OF_S}, event_type, COUNT(*) FROM (
    SELECT {EPOCH_S_OF_TIMESTAMP} AS s, event_type FROM temp.doomed
) WHERE true GROUP BY 1, 2
"""
# A rollup row the deletion empties goes (count > 0 holds); the others drop by n. A row
# that already counted fewer than n (drift) goes too, and reconcile would recount it.
# Every statement is driven by the doomed keys (a primary-key search each), never by a
# scan of the rollup.
SUBTRACT_SQL = (
    """
DELETE FROM daily_event_counts WHERE (day, event_type) IN (
    SELECT c.day, c.event_type FROM temp.doomed_days AS x JOIN daily_event_counts AS c
        ON c.day = x.day AND c.event_type = x.event_type WHERE c.count <= x.n)
""",
    """
UPDATE daily_event_counts SET count = count - (
    SELECT x.n FROM temp.doomed_days AS x
    WHERE x.day = daily_event_counts.day AND x.event_type = daily_event_counts.event_type)
WHERE (day, event_type) IN (SELECT day, event_type FROM temp.doomed_days)
""",
    """
DELETE FROM quarter_hour_event_counts WHERE (bucket, event_type) IN (
    SELECT c.bucket, c.event_type FROM temp.doomed_quarters AS x
    JOIN quarter_hour_event_counts AS c ON c.bucket = x.bucket AND c.event_type = x.event_type
    WHERE c.count <= x.n)
""",
    """
UPDATE quarter_hour_event_counts SET count = count - (
    SELECT x.n FROM temp.doomed_quarters AS x
    WHERE x.bucket = quarter_hour_event_counts.bucket
        AND x.event_type = quarter_hour_event_counts.event_type)
WHERE (bucket, event_type) IN (SELECT bucket, event_type FROM temp.doomed_quarters)
""",
)
DELETE_DOOMED_SQL = "DELETE FROM events WHERE seq IN (SELECT seq FROM temp.doomed)"

# Retention: walk the table in seq order, ``limit`` rows per step, deleting the ones
# before the horizon. Rows are appended in time order, so the expired ones are a prefix
# and every page of the table and of its indexes is rewritten about once.
SET_HORIZON_SQL = "UPDATE log_state SET horizon = ? WHERE horizon IS NULL OR horizon < ?"
FIRST_SEQ_SQL = "SELECT MIN(seq) FROM events"
WINDOW_END_SQL = "SELECT MAX(seq) FROM (SELECT seq FROM events WHERE seq > ? ORDER BY seq LIMIT ?)"
EXPIRE_WINDOW_SQL = "DELETE FROM events WHERE seq > ? AND seq <= ? AND timestamp < ? RETURNING seq"
RAISE_EXPIRED_SEQ_SQL = "UPDATE log_state SET expired_seq = MAX(expired_seq, ?)"

# Export: one page in log order. NOT INDEXED: walk the table by seq (the order wanted),
# filtering as it goes, rather than sort an index range.
# The first row is the lifecycle state (horizon, newest expired seq), read in the page's
# own snapshot.
EXPORT_PAGE_SQL = """
SELECT NULL, horizon, expired_seq, NULL, NULL, NULL FROM log_state
UNION ALL
SELECT * FROM (
    SELECT seq, event_id, user_id, event_type, timestamp, payload FROM events NOT INDEXED
    WHERE seq > ? AND seq <= ? AND event_type IN ({marks}) AND timestamp >= ? AND timestamp < ?
    ORDER BY seq LIMIT ?
)
"""
EXPORT_WINDOW = 50_000  # positions one page looks at, at most: its snapshot stays short
CHECKPOINT_SQL = "PRAGMA wal_checkpoint(PASSIVE)"


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


def _pragmas(synchronous: str, busy_timeout_ms: int, *, cache_mib: int) -> list[str]:
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


def _is_busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


def _storage_error(exc: sqlite3.Error) -> StorageError:
    """The backend-neutral error for a driver error (its cause stays attached)."""
    if _is_busy(exc):
        return StorageBusyError(str(exc))
    if isinstance(exc, sqlite3.IntegrityError):
        return StorageIntegrityError(str(exc))
    return StorageError(str(exc))


class _Lane:
    """A thread pool whose threads each hold their own connection, opened on first use.

    A call runs ``fn(conn, *args)`` on one of the threads; a connection is only ever used
    by its own thread, one call at a time.
    """

    def __init__(self, name: str, size: int, connect: Callable[[], sqlite3.Connection]):
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"sqlite-{name}")
        self._connect = connect
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            with self._lock:
                self._opened.append(conn)
        return conn

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            return fn(self._connection(), *args)
        except sqlite3.Error as exc:
            raise _storage_error(exc) from exc

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, fn, args)

    def close(self) -> None:
        """Wait for running calls, then close every connection (from this thread: each
        connection was opened with ``check_same_thread=False`` and is idle by now)."""
        self._pool.shutdown(wait=True)
        with self._lock:
            for conn in self._opened:
                conn.close()
            self._opened.clear()


class _ReadPool:
    """``size`` aiosqlite connections (each with its own thread, read-only). A read takes
    an idle one for ONE statement — one hand-off and one WAL snapshot — so concurrent
    requests never share a connection, a cursor or a transaction."""

    def __init__(self, connections: list[aiosqlite.Connection]):
        self._all = connections
        self._idle: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        for conn in connections:
            self._idle.put_nowait(conn)

    @classmethod
    async def open(cls, path: str, size: int, pragmas: list[str]) -> _ReadPool:
        connections = []
        for _ in range(size):
            conn = await aiosqlite.connect(path, isolation_level=None)
            for pragma in pragmas:
                await conn.execute(pragma)
            connections.append(conn)
        return cls(connections)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[aiosqlite.Connection]:
        """An idle connection, all to the caller until the block ends."""
        conn = await self._idle.get()
        try:
            yield conn
        finally:
            self._idle.put_nowait(conn)

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Any]:
        async with self.connection() as conn:
            try:
                return list(await conn.execute_fetchall(sql, args))
            except sqlite3.Error as exc:
                raise _storage_error(exc) from exc

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()


@contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT; ROLLBACK and re-raise on any error."""
    if conn.in_transaction:  # never join a transaction a failed rollback left open
        log.warning("connection was left in a transaction; rolling it back")
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


def _snapshot(fn: Callable[..., T]) -> Callable[..., T]:
    """Run a read function inside one deferred transaction: one WAL snapshot for all of
    its statements, so a commit landing in between cannot be counted half."""

    def read(conn: sqlite3.Connection, *args: Any) -> T:
        conn.execute("BEGIN")
        try:
            return fn(conn, *args)
        finally:
            conn.execute("COMMIT")

    read.__name__ = fn.__name__
    return read


class SQLiteStore:
    """``Storage`` on one SQLite file (WAL mode). ``readers`` is the read pool's size."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5000,
        readers: int = 4,
        answer_cache: bool = True,
    ):
        self.path = str(path)
        self.answer_cache = answer_cache
        self.description = self.path
        self.synchronous = synchronous.upper()
        self.busy_timeout_ms = busy_timeout_ms
        self.readers = readers
        self._writer: _Lane | None = None
        self._readers: _ReadPool | None = None
        self._maintenance: _Lane | None = None
        self._answers: AnswerCache | None = None

    # --- lifecycle -------------------------------------------------------------------

    async def migrate(self) -> int:
        return await asyncio.to_thread(migrate, self.path)

    async def open(self) -> None:
        await self.migrate()
        self._writer = _Lane("writer", 1, lambda: self._connect(cache_mib=32))
        self._maintenance = _Lane("maintenance", 1, lambda: self._connect(cache_mib=32))
        pragmas = [*_pragmas(self.synchronous, self.busy_timeout_ms, cache_mib=8)]
        self._readers = await _ReadPool.open(
            self.path, self.readers, [*pragmas, "PRAGMA query_only = ON"]
        )
        self._answers = AnswerCache(self.path) if self.answer_cache else None
        if await self._lane(self._writer).run(_revoke_stray_permit):
            log.warning(
                "a lifecycle permit row was committed by someone else (the log accepted "
                "DELETEs meanwhile); it is removed: the log is append-only again"
            )

    def _connect(self, cache_mib: int) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in _pragmas(self.synchronous, self.busy_timeout_ms, cache_mib=cache_mib):
            conn.execute(pragma)
        return conn

    async def close(self) -> None:
        lanes = [lane for lane in (self._writer, self._maintenance) if lane]
        readers, self._readers = self._readers, None
        self._writer = self._maintenance = None
        answers, self._answers = self._answers, None
        if answers is not None:
            answers.close()
        for lane in lanes:
            await asyncio.to_thread(lane.close)
        if readers is not None:
            await readers.close()

    def _lane(self, lane: _Lane | None) -> _Lane:
        assert lane is not None, "store is not open"
        return lane

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """The rows of ONE statement on an idle reader: its own connection and snapshot."""
        assert self._readers is not None, "store is not open"
        return await self._readers.fetch(sql, args)

    # --- writing -------------------------------------------------------------------

    async def append(self, groups: Sequence[WriteGroup]) -> dict[str, StoredKey]:
        groups = [group for group in groups if group.rows or group.key]
        if not groups:
            return {}
        # Pure-Python preparation stays on the loop's thread: on the writer's thread it
        # would hold the GIL against the loop; there, only SQLite runs (and releases it).
        rows = [row for group in groups for row in group.rows]
        return await self._lane(self._writer).run(_append, groups, rows, _pack_rows(rows))

    async def prune_keys(self, older_than: str) -> int:
        return await self._lane(self._writer).run(_prune_keys, older_than)

    # --- reading -------------------------------------------------------------------

    async def find_keys(self, keys: Sequence[str]) -> dict[str, StoredKey]:
        if not keys:
            return {}
        rows = await self._fetch(FIND_KEYS_SQL.format(marks=_marks(len(keys))), list(keys))
        return {key: (digest, response) for key, digest, response in rows}

    async def count(self, plan: CountPlan, types: Iterable[str]) -> dict[tuple[int, str], int]:
        wanted = tuple(types)
        if not plan.intervals or not wanted:
            return {}
        # The same question while the database is unchanged is answered from memory
        # (schema.sqlite.answers); the version is read before the statement runs.
        answers = self._answers
        version = answers.version() if answers is not None else None
        if answers is not None and (known := answers.get(version, (plan, wanted))) is not None:
            return dict(known)
        sources = [
            _distinct((i, lo or LOWEST, hi or HIGHEST, 1) for i, lo, hi in plan.days),
            _distinct(plan.quarters),
            _distinct((i, lo, hi or HIGHEST, 1) for i, lo, hi in plan.log),
        ]
        args = [orjson.dumps(list(ranges)) for ranges in sources]
        rows = await self._fetch(COUNT_PLAN_AND_HORIZON_SQL, args)
        # The horizon comes from the same statement, so the same snapshot, as the counts.
        horizon = next(totals for source, _, totals in rows if source == HORIZON_ROW)
        if horizon is not None and any(lo < horizon for _, lo, _ in plan.log):
            raise BeforeHorizonError(horizon)  # those raw events are gone: never undercount
        counted = [row for row in rows if row[0] != HORIZON_ROW]
        tally = _tally(counted, sources, wanted)
        if answers is not None:
            answers.put(version, (plan, wanted), dict(tally))
        return tally

    async def newest_bucket(self) -> int | None:
        (newest,) = (await self._fetch(NEWEST_BUCKET_SQL))[0]
        return newest

    async def ping(self) -> bool:
        return await self._fetch("SELECT 1") == [(1,)]

    # --- rollup maintenance ----------------------------------------------------------

    async def days_to_check(self, start: date | None, end: date | None) -> list[str]:
        return await self._lane(self._maintenance).run(_snapshot(_days_to_check), start, end)

    async def recount_day(self, day: str, *, repair: bool) -> DayRecount:
        return await self._lane(self._maintenance).run(_recount_day, day, repair)

    # --- data lifecycle --------------------------------------------------------------

    async def log_position(self) -> int:
        (position,) = (await self._fetch(POSITION_SQL))[0]
        return int(position)

    async def horizon(self) -> str | None:
        (horizon,) = (await self._fetch(HORIZON_SQL))[0]
        return horizon

    async def oldest_timestamp(self) -> str | None:
        (oldest,) = (await self._fetch(OLDEST_TIMESTAMP_SQL))[0]
        return oldest

    async def export_page(self, spec: ExportFilter, after: int, limit: int) -> ExportPage:
        """One statement, so one short snapshot: the lifecycle state row, then the page."""
        until = min(spec.upto, after + EXPORT_WINDOW)
        sql = EXPORT_PAGE_SQL.format(marks=_marks(len(spec.types)))
        args = (after, until, *spec.types, spec.lo or LOWEST, spec.hi or HIGHEST, limit)
        state, *rows = await self._fetch(sql, args)
        _, horizon, expired_seq, *_ = state
        if horizon is not None and after < expired_seq and (spec.lo is None or spec.lo < horizon):
            raise BeforeHorizonError(horizon)  # retention took rows this export wants
        if after >= until:
            return ExportPage([], max(after, spec.upto))
        return ExportPage(rows, rows[-1][0] if len(rows) == limit else until)

    async def erase_step(
        self, user_id: str, *, upto: int, limit: int, audit: AuditEntry, resume: int = 0
    ) -> LifecycleStep:
        # First a look without the lock (as recount_day does): a heavy user's events lie
        # scattered over the file, and reading their pages from disk under the write lock
        # would make ingestion wait for the disk.
        await self._lane(self._maintenance).run(
            _snapshot(_warm_erasure), user_id, upto, limit, resume
        )
        step = await self._lane(self._writer).run(_erase_step, user_id, upto, limit, audit, resume)
        await self._checkpoint()
        return step

    async def expire_step(
        self, before: str, *, resume: int, limit: int, audit: AuditEntry
    ) -> LifecycleStep:
        step = await self._lane(self._writer).run(_expire_step, before, resume, limit, audit)
        await self._checkpoint()
        return step

    async def _checkpoint(self) -> None:
        """Copy the WAL into the database beside the writer, not on its thread: a
        lifecycle step writes thousands of pages, and the writer's own automatic
        checkpoint after its next commit would make ingestion wait for the copy. A
        PASSIVE checkpoint never waits for the write lock."""
        await self._lane(self._maintenance).run(_run, CHECKPOINT_SQL)

    # --- jobs --------------------------------------------------------------------------

    async def try_lock_job(self, job: str) -> bool:
        """Always granted: one SQLite file serves one machine, and every step of a pass
        that writes (a day's repair, an erasure or retention step) takes the file's write
        lock, so passes of two processes on one file interleave step by step, each step
        still exact."""
        return True

    async def unlock_job(self, job: str) -> None:
        return None


# --- the functions that run on a lane's thread, on its connection ---------------------


def _run(conn: sqlite3.Connection, sql: str) -> list[Any]:
    return conn.execute(sql).fetchall()


def _find_keys(conn: sqlite3.Connection, keys: list[str]) -> dict[str, StoredKey]:
    rows = conn.execute(FIND_KEYS_SQL.format(marks=_marks(len(keys))), keys).fetchall()
    return {key: (digest, response) for key, digest, response in rows}


def _append(
    conn: sqlite3.Connection,
    groups: list[WriteGroup],
    rows: list[EventRow],
    packed: bytes | None,
) -> dict[str, StoredKey]:
    with _write_transaction(conn):
        # Under the write lock, so no other writer (another process on the same file)
        # can store one of these keys between this check and our insert.
        keys = [group.key[0] for group in groups if group.key]
        stored = _find_keys(conn, keys) if keys else {}
        if stored:  # rare: a retry that raced a commit elsewhere; skip those groups
            groups = [g for g in groups if not (g.key and g.key[0] in stored)]
            rows = [row for group in groups for row in group.rows]
            packed = _pack_rows(rows)
        if rows:
            last_seq, floor = conn.execute(LAST_SEQ_SQL).fetchone()
            if floor > last_seq:  # rare: the newest rows were erased or expired
                numbered = [(floor + i, *row) for i, row in enumerate(rows, 1)]
                conn.executemany(INSERT_NUMBERED_EVENTS_SQL, numbered)
            elif packed is not None:  # one statement, one parameter: see _pack_rows
                conn.execute(INSERT_PACKED_EVENTS_SQL, (packed,))
            else:
                conn.executemany(INSERT_EVENTS_SQL, rows)
            conn.execute(ADD_TO_DAILY_SQL, (last_seq,))
            conn.execute(ADD_TO_QUARTERS_SQL, (last_seq,))
        new_keys = [group.key for group in groups if group.key]
        if new_keys:
            conn.executemany(INSERT_KEYS_SQL, new_keys)
    return stored


def _prune_keys(conn: sqlite3.Connection, older_than: str) -> int:
    with _write_transaction(conn):
        return conn.execute(PRUNE_KEYS_SQL, (older_than,)).rowcount


# A plan's parts as distinct ranges: ``{(lo, hi): [(part, sign), …]}`` (read once each).
_Ranges = dict[tuple[Any, Any], list[tuple[int, int]]]


def _distinct(parts: Iterable[tuple[int, Any, Any, int]]) -> _Ranges:
    ranges: _Ranges = {}
    for part, lo, hi, sign in parts:
        ranges.setdefault((lo, hi), []).append((part, sign))
    return ranges


def _tally(
    rows: Iterable[tuple[int, int, str]], sources: list[_Ranges], wanted: tuple[str, ...]
) -> dict[tuple[int, str], int]:
    """``{(part, event_type): n}`` from ``COUNT_PLAN_SQL``'s rows (source, range, totals)."""
    parts = [list(ranges.values()) for ranges in sources]  # by source, then range index
    picked = [(i, t) for i, t in enumerate(EVENT_TYPES) if t in wanted]
    counts: dict[tuple[int, str], int] = {}
    get = counts.get
    for source, index, totals in rows:
        sums = orjson.loads(totals)  # a type without rows is null
        if not any(sums):
            continue
        for part, sign in parts[source][index]:
            for i, event_type in picked:
                n = sums[i]
                if n:
                    key = (part, event_type)
                    counts[key] = get(key, 0) + sign * n
    return {key: n for key, n in counts.items() if n}


def _days_to_check(conn: sqlite3.Connection, start: date | None, end: date | None) -> list[str]:
    """Days with events are every day from the log's first timestamp to its last (found
    through the index, not by scanning it); days in between without events cost one empty
    index probe each when recounted."""
    days: set[str] = set()
    strays: list[str] = []
    whole = start is None and end is None  # rollup keys that are not dates only then
    (horizon,) = conn.execute(HORIZON_SQL).fetchone()
    if horizon is not None:  # days before it are frozen: never listed
        live_from = date.fromisoformat(horizon[:10])
        start = live_from if start is None else max(start, live_from)
    span = _log_span(conn)
    if span is not None:
        day, final = date.fromisoformat(span[0][:10]), date.fromisoformat(span[1][:10])
        if start is not None:
            day = max(day, start)
        if end is not None:
            final = min(final, end)
        while day <= final:
            days.add(day.isoformat())
            if day == date.max:
                break
            day += timedelta(days=1)
    for (first_s,) in conn.execute(QUARTER_DAYS_SQL):
        day = _EPOCH_DAY + timedelta(seconds=first_s)
        if (start is None or day >= start) and (end is None or day <= end):
            days.add(day.isoformat())
    for (key,) in conn.execute(ROLLUP_DAYS_SQL):
        parsed = parse_day(key)
        if parsed is None:
            if whole:
                strays.append(key)
        elif (start is None or parsed >= start) and (end is None or parsed <= end):
            days.add(key)
    return sorted(days) + strays


def _recount_day(conn: sqlite3.Connection, day: str, repair: bool) -> DayRecount:
    """The first look is a read snapshot, without the write lock: commits change the log
    and the rollups together, so a day that agrees in a snapshot stays right, and only a
    day that differs is recounted and repaired under the lock — with the cache already
    warm, so ingestion waits for a warm count, never a cold one."""
    parsed = parse_day(day)
    look = _snapshot(_count_and_read)(conn, day, parsed)
    if look is None:
        return DayRecount(day, {}, {}, frozen=True)
    if not look.differs or not repair:
        return look.result(day)

    for attempt in range(1, BUSY_ATTEMPTS + 1):
        try:
            conn.execute("BEGIN IMMEDIATE")
            break
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or attempt == BUSY_ATTEMPTS:
                raise
            log.warning("rollup recount of %s: database busy, retrying", day)
    began = time.perf_counter()
    try:
        look = _count_and_read(conn, day, parsed)  # exact: no commit can interleave
        if look is not None:  # (None: retention froze the day meanwhile)
            look.repair(conn, day)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    held_ms = (time.perf_counter() - began) * 1000
    if look is None:
        return DayRecount(day, {}, {}, frozen=True, held_ms=held_ms)
    return look.result(day, repaired=look.differs, held_ms=held_ms)


@dataclass
class _DayLook(DayLook):
    """``DayLook`` with SQLite's repair."""

    def repair(self, conn: sqlite3.Connection, day: str) -> None:
        """Write the log's numbers over the day's rollup rows (in the caller's transaction)."""
        _rewrite(conn, day, self.counted, self.stored, DELETE_DAILY_SQL, SET_DAILY_SQL)
        _rewrite(
            conn,
            None,
            self.counted_quarters,
            self.stored_quarters,
            DELETE_QUARTER_SQL,
            SET_QUARTER_SQL,
        )


def _rewrite(
    conn: sqlite3.Connection,
    prefix: str | None,
    counted: dict[Any, int],
    stored: dict[Any, int],
    delete_sql: str,
    set_sql: str,
) -> None:
    """Delete the stored keys the log has no events for; set the ones that differ."""

    def key(k: Any) -> tuple[Any, ...]:
        return (prefix, k) if prefix is not None else tuple(k)

    gone = [key(k) for k in stored if k not in counted]
    if gone:
        conn.executemany(delete_sql, gone)
    fixed = [(*key(k), n) for k, n in counted.items() if stored.get(k) != n]
    if fixed:
        conn.executemany(set_sql, fixed)


def _count_and_read(conn: sqlite3.Connection, day: str, parsed: date | None) -> _DayLook | None:
    """The day's rollup rows and the log's counts, in the caller's transaction; None for a
    day before the retention horizon (frozen: its raw events are gone). A day key that is
    not a real date has no events: its rows are all stray."""
    if parsed is not None:
        (horizon,) = conn.execute(HORIZON_SQL).fetchone()
        if horizon is not None and day < horizon[:10]:
            return None
    stored = dict(conn.execute(DAILY_OF_DAY_SQL, (day,)).fetchall())
    if parsed is None:
        return _DayLook({}, stored, {}, {})
    first_s = (parsed - _EPOCH_DAY).days * 86400
    counted_quarters = {
        (bucket, event_type): n
        for bucket, event_type, n in conn.execute(COUNT_DAY_BY_QUARTER_SQL, (first_s, *EVENT_TYPES))
    }
    counted: dict[str, int] = {}
    for (_, event_type), n in counted_quarters.items():
        counted[event_type] = counted.get(event_type, 0) + n
    stored_quarters = {
        (bucket, event_type): n
        for bucket, event_type, n in conn.execute(QUARTERS_OF_DAY_SQL, (first_s, first_s + 86400))
    }
    return _DayLook(counted, stored, counted_quarters, stored_quarters)


# --- data lifecycle ------------------------------------------------------------------


@contextmanager
def _lifecycle_transaction(conn: sqlite3.Connection) -> Iterator[list[float]]:
    """A write transaction that may delete from the log: the permit row is inserted first
    and deleted before COMMIT, so it is never committed and no other connection ever sees
    it (one writer at a time; readers see committed data only). Yields a list that
    receives how long the write lock was held (ms). The WAL is not checkpointed on this
    thread (see ``SQLiteStore._checkpoint``)."""
    held: list[float] = []
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    try:
        with _write_transaction(conn):
            began = time.perf_counter()
            conn.execute(GRANT_PERMIT_SQL)
            yield held
            conn.execute(REVOKE_PERMIT_SQL)
        held.append((time.perf_counter() - began) * 1000)
    finally:
        conn.execute("PRAGMA wal_autocheckpoint = 1000")  # SQLite's default


def _revoke_stray_permit(conn: sqlite3.Connection) -> int:
    """Only a lifecycle transaction may hold a permit, and it never commits one."""
    if not conn.execute("SELECT COUNT(*) FROM lifecycle_permit").fetchone()[0]:
        return 0  # the usual case: read only, no write lock taken at startup
    with _write_transaction(conn):
        return conn.execute(REVOKE_PERMIT_SQL).rowcount


def _audit(conn: sqlite3.Connection, audit: AuditEntry, deleted: int, done: bool) -> int:
    """Add this step's deletions to the pass's audit record (created by its first step)."""
    audit_id = audit.id
    if audit_id is None:
        cursor = conn.execute(
            START_AUDIT_SQL,
            (audit.operation, audit.started_at, audit.user_id_sha256, audit.before),
        )
        audit_id = int(cursor.lastrowid or 0)
    conn.execute(ADD_TO_AUDIT_SQL, (deleted, done, audit.at, audit_id))
    return audit_id


def _log_span(conn: sqlite3.Connection) -> tuple[str, str] | None:
    """The first and last timestamp of the log (two index descents per type)."""
    first = last = None
    for event_type in EVENT_TYPES:
        (lo,) = conn.execute(FIRST_TIMESTAMP_SQL, (event_type,)).fetchone()
        (hi,) = conn.execute(LAST_TIMESTAMP_SQL, (event_type,)).fetchone()
        if lo is not None:
            first = lo if first is None else min(first, lo)
            last = hi if last is None else max(last, hi)
    return (first, last) if first is not None and last is not None else None


def _oldest_timestamp(conn: sqlite3.Connection) -> str | None:
    span = _log_span(conn)
    return span[0] if span else None


def _user_days(conn: sqlite3.Connection, resume: int) -> Iterator[str]:
    """The UTC days of the log from ``resume`` (a date ordinal; 0: the first) on, in order."""
    span = _log_span(conn)
    if span is None:
        return
    day, last = date.fromisoformat(span[0][:10]), date.fromisoformat(span[1][:10])
    if resume:
        day = max(day, date.fromordinal(resume))
    while day <= last:
        yield day.isoformat()
        day += timedelta(days=1)


def _warm_erasure(
    conn: sqlite3.Connection, user_id: str, upto: int, limit: int, resume: int
) -> int:
    """Read the pages the next erase step will change (see ``LOOK_USER_EVENTS_SQL``)."""
    rows: list[tuple[str, str, str]] = []
    for day in _user_days(conn, resume):
        rows += conn.execute(LOOK_USER_EVENTS_SQL, (day, user_id, upto, limit - len(rows)))
        if len(rows) >= limit:
            break
    if rows:
        packed = orjson.dumps(rows)
        conn.execute(TOUCH_EVENT_IDS_SQL, (packed,)).fetchone()
        conn.execute(TOUCH_TYPE_TIMESTAMPS_SQL, (packed,)).fetchone()
    return len(rows)


def _erase_step(
    conn: sqlite3.Connection,
    user_id: str,
    upto: int,
    limit: int,
    audit: AuditEntry,
    resume: int,
) -> LifecycleStep:
    """Up to ``limit`` of the user's events (seq <= ``upto``) leave the log, and their
    counts leave both rollups, in one transaction. The days are probed in order, from
    the day the previous step stopped on (``resume``: its date ordinal): the days before
    it hold no event of this user at or below ``upto`` any more."""
    with _lifecycle_transaction(conn) as held:
        for sql in DOOMED_TABLES_SQL:
            conn.execute(sql)
        found = 0
        for day in _user_days(conn, resume):  # one index seek per day, in order
            args = (day, user_id, upto, limit - found)
            found += conn.execute(FIND_USER_EVENTS_SQL, args).rowcount
            resume = date.fromisoformat(day).toordinal()  # may hold more; earlier days do not
            if found >= limit:
                break
        if found:
            conn.execute(RAISE_SEQ_FLOOR_SQL)
            conn.execute(DOOMED_BY_DAY_SQL)
            conn.execute(DOOMED_BY_QUARTER_SQL)
            for sql in SUBTRACT_SQL:
                conn.execute(sql)
            deleted = conn.execute(DELETE_DOOMED_SQL).rowcount
            assert deleted == found, (deleted, found)
        done = found < limit
        audit_id = _audit(conn, audit, found, done)
    return LifecycleStep(found, done, audit_id, resume=resume, held_ms=held[0])


def _expire_step(
    conn: sqlite3.Connection, before: str, resume: int, limit: int, audit: AuditEntry
) -> LifecycleStep:
    """The next ``limit`` rows of the table after ``resume`` are looked at and those
    before ``before`` deleted; the horizon moves to ``before`` first, in the same
    transaction, so no reader ever sees a deleted event without the horizon that
    explains it."""
    with _lifecycle_transaction(conn) as held:
        conn.execute(SET_HORIZON_SQL, (before, before))
        conn.execute(RAISE_SEQ_FLOOR_SQL)
        if not resume:
            (first,) = conn.execute(FIRST_SEQ_SQL).fetchone()
            resume = (first or 1) - 1
        (until,) = conn.execute(WINDOW_END_SQL, (resume, limit)).fetchone()
        deleted = 0
        if until is not None:
            seqs = conn.execute(EXPIRE_WINDOW_SQL, (resume, until, before)).fetchall()
            deleted = len(seqs)
            if seqs:
                conn.execute(RAISE_EXPIRED_SEQ_SQL, (max(seq for (seq,) in seqs),))
            resume = until
        oldest = _oldest_timestamp(conn)
        done = until is None or oldest is None or oldest >= before
        audit_id = _audit(conn, audit, deleted, done)
    return LifecycleStep(deleted, done, audit_id, resume=resume, held_ms=held[0])
