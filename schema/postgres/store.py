"""The PostgreSQL backend of ``schema.storage.Storage``: all SQL the service runs on a
PostgreSQL server, through asyncpg. Several instances of the service may share one database.

Who touches which connection (nothing is shared between concurrent requests):

- **the writer**: one connection for group commits and key pruning, one transaction at a
  time. It holds a session advisory lock on a rollup slot (0..15) while it lives, and adds
  its commits' counts to that slot's rows, so writers of different instances never wait on
  each other's row locks (``schema/postgres/locks.py``).
- **readers**: a pool of ``readers`` connections. A read is one statement (a whole count
  too), so it is one snapshot, never another request's transaction.
- **maintenance**: one connection for rollup recounts and the advisory lock of a running
  pass, so a long reconcile pass neither blocks the writer nor takes a reader.

Timestamps travel as the log's strings (``schema.timestamps``) and are cast in SQL; days
and 15-minute buckets are computed by PostgreSQL, in UTC, with the same expressions when
appending and when recounting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from schema.events import EVENT_TYPES
from schema.postgres import lifecycle, locks
from schema.postgres.lifecycle import MOST_ROWS_PER_APPEND, POSITIONS_PER_TRANSACTION
from schema.postgres.migrate import migrate
from schema.storage import (
    AuditEntry,
    BeforeHorizonError,
    CountPlan,
    DayLook,
    DayRecount,
    ExportFilter,
    ExportPage,
    LifecycleStep,
    StorageBusyError,
    StorageError,
    StorageIntegrityError,
    StorageUnavailableError,
    StoredKey,
    WriteGroup,
)
from schema.timestamps import day_start, format_ts, next_day, parse_day

log = logging.getLogger(__name__)
T = TypeVar("T")

# The 15-minute bucket and the UTC day of the log's timestamp (the same expressions when
# appending and when recounting; quarter_hour_of is in the migration).
BUCKET_OF_TIMESTAMP = "quarter_hour_of(timestamp)"
DAY_OF_TIMESTAMP = "(timestamp AT TIME ZONE 'UTC')::date"

# Dates and timestamps travel as text and are cast in SQL: asyncpg sends date.min and
# date.max (0001-01-01, 9999-12-31, real days of the calendar here) as -infinity/infinity.

# --- writing -------------------------------------------------------------------------

# Keys first, sorted (two instances inserting overlapping keys never deadlock). A key
# another transaction is inserting makes this wait for it; once it commits, the key is
# not returned, and that group's stored answer is read instead of writing it again.
INSERT_KEYS_SQL = """
INSERT INTO idempotency_keys (key, request_hash, response, created_at)
SELECT key, request_hash, response, created_at::timestamptz
FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[])
    AS k(key, request_hash, response, created_at)
ORDER BY key
ON CONFLICT (key) DO NOTHING
RETURNING key
"""
FIND_KEYS_SQL = "SELECT key, request_hash, response FROM idempotency_keys WHERE key = ANY($1)"
# The events and the rollup rows they make, in one statement: the counts come from the
# rows as stored, rollup keys in order (no deadlocks), added to this writer's slot. Each
# event's position is this transaction's id × 65,536 + its ordinal (schema.postgres.lifecycle).
APPEND_SQL = f"""
WITH appended AS (
    INSERT INTO events (seq, event_id, user_id, event_type, timestamp, payload)
    SELECT (SELECT (pg_current_xact_id()::text::bigint + xid_offset) * {POSITIONS_PER_TRANSACTION}
            FROM log_state) + ordinal,
        event_id, user_id, event_type, ts::timestamptz, payload
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::json[])
        WITH ORDINALITY AS r(event_id, user_id, event_type, ts, payload, ordinal)
    RETURNING timestamp, event_type
), daily AS (
    INSERT INTO daily_event_counts AS c (day, event_type, slot, count)
    SELECT {DAY_OF_TIMESTAMP}, event_type, $6, COUNT(*) FROM appended
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (day, event_type, slot) DO UPDATE SET count = c.count + excluded.count
)
INSERT INTO quarter_hour_event_counts AS c (bucket, event_type, slot, count)
SELECT {BUCKET_OF_TIMESTAMP}, event_type, $6, COUNT(*) FROM appended
GROUP BY 1, 2 ORDER BY 1, 2
ON CONFLICT (bucket, event_type, slot) DO UPDATE SET count = c.count + excluded.count
"""
PRUNE_KEYS_SQL = "DELETE FROM idempotency_keys WHERE created_at < $1::text::timestamptz"

# --- partitions ----------------------------------------------------------------------

ENSURE_PARTITION_SQL = "SELECT ensure_event_partition($1::text::date)"
PARTITIONS_SQL = """
SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
WHERE i.inhparent = 'events'::regclass
"""
DEFAULT_MONTHS_SQL = (
    f"SELECT DISTINCT date_trunc('month', {DAY_OF_TIMESTAMP})::date FROM events_default"
)
PARTITION_LOCK_TIMEOUT = "2s"  # partition DDL waits no longer; it is retried later
PARTITION_RETRY_S = 60.0
MONTHS_AHEAD = 3  # partitions kept ready after the current month (and one before it)

# --- reading -------------------------------------------------------------------------


# A whole count is ONE statement, so it is one snapshot with no transaction around it.
# Each distinct range of a plan is one index range, answered as the three types' totals
# (summed over the rollups' slots) by a correlated subquery, as on SQLite.
def _totals(aggregate: str) -> str:
    sums = ", ".join(f"{aggregate} FILTER (WHERE event_type = '{t}')" for t in EVENT_TYPES)
    return f"ARRAY[{sums}]::bigint[]"


HORIZON_ROW = 3  # the count's last row: the retention horizon, read in the same snapshot
COUNT_PLAN_SQL = f"""
SELECT 0, r.i, (
    SELECT {_totals("SUM(count)")} FROM daily_event_counts
    WHERE day >= r.lo::date AND day < r.hi::date
) FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS r(lo, hi, i)
UNION ALL
SELECT 1, r.i, (
    SELECT {_totals("SUM(count)")} FROM quarter_hour_event_counts
    WHERE bucket >= r.lo AND bucket < r.hi
) FROM unnest($3::bigint[], $4::bigint[]) WITH ORDINALITY AS r(lo, hi, i)
UNION ALL
SELECT 2, r.i, (
    SELECT {_totals("COUNT(*)")} FROM events
    WHERE event_type IN ({", ".join(f"'{t}'" for t in EVENT_TYPES)})
      AND timestamp >= r.lo::timestamptz AND timestamp < r.hi::timestamptz
) FROM unnest($5::text[], $6::text[]) WITH ORDINALITY AS r(lo, hi, i)
UNION ALL
SELECT {HORIZON_ROW}, 0, ARRAY[(extract(epoch FROM horizon) * 1000000)::bigint]
FROM log_state WHERE horizon IS NOT NULL
"""
NEWEST_BUCKET_SQL = "SELECT MAX(bucket) FROM quarter_hour_event_counts"

# --- rollup maintenance --------------------------------------------------------------

LOG_SPAN_SQL = "SELECT MIN(timestamp), MAX(timestamp) FROM events"  # two primary-key descents
ROLLUP_DAYS_SQL = "SELECT DISTINCT day FROM daily_event_counts"
QUARTER_DAYS_SQL = (
    "SELECT DISTINCT bucket - ((bucket % 86400) + 86400) % 86400 FROM quarter_hour_event_counts"
)
COUNT_DAY_BY_QUARTER_SQL = f"""
SELECT {BUCKET_OF_TIMESTAMP}, event_type, COUNT(*) FROM events
WHERE event_type = ANY($3::text[])
    AND timestamp >= $1::text::timestamptz AND timestamp < $2::text::timestamptz
GROUP BY 1, 2
"""
DAILY_OF_DAY_SQL = """
SELECT event_type, SUM(count)::bigint FROM daily_event_counts WHERE day = $1::text::date GROUP BY 1
"""
QUARTERS_OF_DAY_SQL = """
SELECT bucket, event_type, SUM(count)::bigint FROM quarter_hour_event_counts
WHERE bucket >= $1 AND bucket < $2 GROUP BY 1, 2
"""
# Writers add to the rollups under ROW EXCLUSIVE: this waits for the commits in progress,
# then holds every new one back until the day is rewritten (readers go on).
LOCK_ROLLUPS_SQL = "LOCK TABLE daily_event_counts, quarter_hour_event_counts IN EXCLUSIVE MODE"
DELETE_DAILY_SQL = "DELETE FROM daily_event_counts WHERE day = $1::text::date"
SET_DAILY_SQL = """
INSERT INTO daily_event_counts (day, event_type, slot, count)
SELECT $1::text::date, event_type, 0, count
FROM unnest($2::text[], $3::bigint[]) AS d(event_type, count)
"""
DELETE_QUARTERS_SQL = "DELETE FROM quarter_hour_event_counts WHERE bucket >= $1 AND bucket < $2"
SET_QUARTERS_SQL = """
INSERT INTO quarter_hour_event_counts (bucket, event_type, slot, count)
SELECT bucket, event_type, 0, count
FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS q(bucket, event_type, count)
"""
HORIZON_SQL = "SELECT horizon FROM log_state"
# A repair's first statement: waits for a retention step that is raising the horizon.
HORIZON_FOR_SHARE_SQL = "SELECT horizon FROM log_state FOR SHARE"
TRY_LOCK_SQL = "SELECT pg_try_advisory_lock($1, $2)"
UNLOCK_SQL = "SELECT pg_advisory_unlock($1, $2)"

APPEND_ATTEMPTS = 3  # a group commit chosen as a deadlock victim is retried whole
BUSY_ATTEMPTS = 3  # a repair's attempts at the rollup lock, each waiting busy_timeout
CONNECT_TIMEOUT_S = 10.0
PING_TIMEOUT_S = 2.0
CLOSE_TIMEOUT_S = 10.0  # reads still running at close get this long, then are cut
STUCK_WRITE_MARGIN_MS = 10_000  # statement_timeout of writes: busy timeout + this

_EPOCH_DAY = date(1970, 1, 1)
_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,  # includes "connection does not exist"
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,
    # A connection the server ended (a restart, pg_terminate_backend) before asyncpg read the
    # news: its protocol refuses the next operation with "cannot switch to state …".
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


def redact(url: str) -> str:
    """The URL without its password (in the user part or a ``password=`` parameter)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _storage_error(exc: BaseException) -> StorageError:
    """The backend-neutral error for a driver error (attach the cause with ``from``)."""
    if isinstance(exc, asyncpg.LockNotAvailableError | asyncpg.QueryCanceledError):
        return StorageBusyError(f"the database is busy: {exc}")
    if isinstance(exc, asyncpg.TooManyConnectionsError):
        return StorageBusyError(f"the database is busy: {exc}")
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return StorageIntegrityError(str(exc))
    if isinstance(exc, _UNAVAILABLE):
        return StorageUnavailableError(f"the database is unavailable: {exc!r}")
    return StorageError(str(exc))


def _translated(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Raise driver errors as ``StorageError``s (the cause stays attached)."""

    async def call(*args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except StorageError:
            raise
        except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
            raise _storage_error(exc) from exc

    call.__name__ = fn.__name__
    call.__doc__ = fn.__doc__
    return call


def _month_of(timestamp: str) -> date | None:
    """The first day of a log timestamp's UTC month, or None if it is not one."""
    try:
        return date(int(timestamp[:4]), int(timestamp[5:7]), 1)
    except ValueError:
        return None


def _months_around(today: date, before: int, after: int) -> list[date]:
    first = today.replace(day=1)
    index = first.year * 12 + first.month - 1
    return [date(i // 12, i % 12 + 1, 1) for i in range(index - before, index + after + 1)]


class PostgresStore:
    """``Storage`` on a PostgreSQL database named by a ``postgresql://`` URL."""

    def __init__(
        self,
        url: str,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5000,
        readers: int = 4,
    ):
        self.url = url
        self.description = redact(url)
        # NORMAL (generate_events.py) may lose the last commits in a server crash, never
        # corrupt: PostgreSQL's asynchronous commit. Every other mode waits for the flush.
        self.synchronous_commit = "off" if synchronous.upper() == "NORMAL" else "on"
        self.busy_timeout_ms = busy_timeout_ms
        self.readers = readers
        self.slot = 0
        self._writer: asyncpg.Connection | None = None
        self._maintenance: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        self._write_lock = asyncio.Lock()  # one transaction at a time on the writer
        self._maintenance_lock = asyncio.Lock()
        self._jobs_held: set[str] = set()
        self._months: set[date] = set()  # months whose partition exists
        self._month_retry_at: dict[date, float] = {}

    # --- connections -----------------------------------------------------------------

    def _settings(self, role: str, *, write: bool) -> dict[str, str]:
        """Session settings of every connection: UTC (``::date`` of a timestamptz is a UTC
        day), no JIT (short queries pay its compile time), and waits bounded by the busy
        timeout (0 would mean "forever" in PostgreSQL, the opposite of SQLite's 0)."""
        settings = {
            "application_name": f"analytics-{role}",
            "timezone": "UTC",
            "jit": "off",
            "lock_timeout": f"{max(self.busy_timeout_ms, 1)}ms",
        }
        if write:
            settings["synchronous_commit"] = self.synchronous_commit
            # A write running this long is stuck (a disk stall), not slow: fail it (503)
            # rather than hold the queue forever.
            settings["statement_timeout"] = f"{self.busy_timeout_ms + STUCK_WRITE_MARGIN_MS}ms"
        else:
            # A count is one prepared statement whose bounds change every call: PostgreSQL
            # kept re-planning it (custom plans, ~0.7 ms of a 2 ms count); a generic plan
            # prunes the log's partitions at run time just as well.
            settings["plan_cache_mode"] = "force_generic_plan"
        return settings

    async def _connect(self, role: str, *, write: bool) -> asyncpg.Connection:
        try:
            return await asyncpg.connect(
                self.url,
                timeout=CONNECT_TIMEOUT_S,
                server_settings=self._settings(role, write=write),
            )
        except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
            raise StorageUnavailableError(f"cannot connect to {self.description}: {exc!r}") from exc

    async def _writer_connection(self) -> asyncpg.Connection:
        """The writer's connection, (re)connected when needed; claims a rollup slot."""
        if self._writer is not None and not self._writer.is_closed():
            return self._writer
        self._writer = None
        conn = await self._connect("writer", write=True)
        try:
            self.slot = await self._claim_slot(conn)
        except BaseException:
            conn.terminate()
            raise
        self._writer = conn
        return conn

    @staticmethod
    async def _claim_slot(conn: asyncpg.Connection) -> int:
        """The first rollup slot no other writer connection holds (its advisory lock is
        this connection's until it closes); a random one when all 16 are taken."""
        for slot in range(locks.SLOT_COUNT):
            if await conn.fetchval(TRY_LOCK_SQL, locks.NAMESPACE, locks.SLOTS + slot):
                return slot
        slot = random.randrange(locks.SLOT_COUNT)
        log.warning("all %d rollup slots are taken; sharing slot %d", locks.SLOT_COUNT, slot)
        return slot

    async def _maintenance_connection(self) -> asyncpg.Connection:
        if self._maintenance is not None and not self._maintenance.is_closed():
            return self._maintenance
        self._maintenance = None
        if self._jobs_held:  # their advisory locks went with the old connection
            held, self._jobs_held = sorted(self._jobs_held), set()
            raise StorageUnavailableError(
                f"the database connection holding the {', '.join(held)} lock was lost"
            )
        self._maintenance = await self._connect("maintenance", write=True)
        return self._maintenance

    def _readers(self) -> asyncpg.Pool:
        assert self._pool is not None, "store is not open"
        return self._pool

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """One statement on a reader of its own: one snapshot."""
        async with self._readers().acquire() as conn:
            return await conn.fetch(sql, *args)

    # --- lifecycle -------------------------------------------------------------------

    @_translated
    async def migrate(self) -> int:
        conn = await self._connect("migrate", write=True)
        try:
            return await self._migrate(conn)
        finally:
            await conn.close()

    async def _migrate(self, conn: asyncpg.Connection) -> int:
        """Migrate, then make sure the partitions around today exist, and those of any
        month that has rows waiting in the DEFAULT partition."""
        version = await migrate(conn, self.description)
        self._months = {
            date(int(name[7:11]), int(name[12:14]), 1)
            for (name,) in await conn.fetch(PARTITIONS_SQL)
            if name.startswith("events_") and name[7:11].isdigit()
        }
        months = _months_around(datetime.now(UTC).date(), 1, MONTHS_AHEAD)
        months += [month for (month,) in await conn.fetch(DEFAULT_MONTHS_SQL)]
        await self._ensure_months(conn, months)
        return version

    @_translated
    async def open(self) -> None:
        conn = await self._connect("writer", write=True)
        try:
            await self._migrate(conn)
            self.slot = await self._claim_slot(conn)
        except BaseException:
            conn.terminate()
            raise
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.readers,
                timeout=CONNECT_TIMEOUT_S,
                server_settings=self._settings("reader", write=False),
                reset=_keep_reader_session,
            )
        except BaseException:
            conn.terminate()
            raise
        self._writer = conn
        log.info("PostgreSQL %s: the writer adds to rollup slot %d", self.description, self.slot)

    async def close(self) -> None:
        """Wait for running operations (the pool for its acquired connections, the
        writer and maintenance for their locks), then close every connection."""
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning(
                    "reads still running after %g s; closing their connections", CLOSE_TIMEOUT_S
                )
                pool.terminate()
        async with self._write_lock:
            writer, self._writer = self._writer, None
            if writer is not None:
                with contextlib.suppress(*_UNAVAILABLE, asyncpg.PostgresError):
                    await writer.close()
        async with self._maintenance_lock:
            maintenance, self._maintenance = self._maintenance, None
            self._jobs_held.clear()
            if maintenance is not None:
                with contextlib.suppress(*_UNAVAILABLE, asyncpg.PostgresError):
                    await maintenance.close()

    # --- partitions --------------------------------------------------------------------

    async def _ensure_months(self, conn: asyncpg.Connection, months: Iterable[date]) -> None:
        """Create the monthly partitions of ``months`` that are missing (see
        ``ensure_event_partition``). One that cannot take its locks within
        ``PARTITION_LOCK_TIMEOUT`` is left for later: its rows go to the DEFAULT partition
        meanwhile, which loses nothing."""
        for month in sorted(set(months) - self._months):
            if time.monotonic() < self._month_retry_at.get(month, 0.0):
                continue
            try:
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL lock_timeout = '{PARTITION_LOCK_TIMEOUT}'")
                    if await conn.fetchval(ENSURE_PARTITION_SQL, month.isoformat()):
                        log.info("created the log partition of %s", month.strftime("%Y-%m"))
            except asyncpg.PostgresError as exc:  # busy, or a role that may not create
                self._month_retry_at[month] = time.monotonic() + PARTITION_RETRY_S
                log.warning("log partition of %s not created yet: %s", month.strftime("%Y-%m"), exc)
                continue
            self._months.add(month)

    # --- writing -------------------------------------------------------------------

    @_translated
    async def append(self, groups: Sequence[WriteGroup]) -> dict[str, StoredKey]:
        groups = [group for group in groups if group.rows or group.key]
        if not groups:
            return {}
        async with self._write_lock:
            conn = await self._writer_connection()
            months = {m for row in (r for g in groups for r in g.rows) if (m := _month_of(row[3]))}
            if months - self._months:
                await self._ensure_months(conn, months)
            for attempt in range(1, APPEND_ATTEMPTS + 1):
                try:
                    async with conn.transaction():
                        return await self._append(conn, groups)
                except _UNAVAILABLE:
                    self._writer = None  # never reuse it: the next commit connects afresh
                    conn.terminate()
                    raise
                except _RETRYABLE:
                    if attempt == APPEND_ATTEMPTS:
                        raise
                    log.warning("group commit was a deadlock victim; retrying it")
                except _KeyVanishedError:
                    if attempt == APPEND_ATTEMPTS:
                        raise StorageError("an idempotency key changed during the commit") from None
        raise AssertionError("unreachable")

    async def _append(
        self, conn: asyncpg.Connection, groups: list[WriteGroup]
    ) -> dict[str, StoredKey]:
        """One group commit's statements, in the caller's READ COMMITTED transaction."""
        stored: dict[str, StoredKey] = {}
        keys = [group.key for group in groups if group.key]
        if keys:
            columns = [list(column) for column in zip(*keys, strict=True)]
            inserted = {key for (key,) in await conn.fetch(INSERT_KEYS_SQL, *columns)}
            taken = [key for key, *_ in keys if key not in inserted]
            if taken:  # rare: a retry that raced another writer; answer its original
                stored = await _find_keys(conn, taken)
                if len(stored) < len(taken):  # pruned in between: start over
                    raise _KeyVanishedError()
                groups = [g for g in groups if not (g.key and g.key[0] in stored)]
        rows = [row for group in groups for row in group.rows]
        if len(rows) > MOST_ROWS_PER_APPEND:  # config refuses such a commit_max_events
            raise StorageError(f"a group commit holds at most {MOST_ROWS_PER_APPEND} events")
        if rows:
            columns = [list(column) for column in zip(*rows, strict=True)]
            await conn.execute(APPEND_SQL, *columns, self.slot)
        return stored

    @_translated
    async def prune_keys(self, older_than: str) -> int:
        async with self._write_lock:
            conn = await self._writer_connection()
            status = await conn.execute(PRUNE_KEYS_SQL, older_than)
        return int(status.split()[-1])

    # --- reading -------------------------------------------------------------------

    @_translated
    async def find_keys(self, keys: Sequence[str]) -> dict[str, StoredKey]:
        if not keys:
            return {}
        rows = await self._fetch(FIND_KEYS_SQL, list(keys))
        return {key: (bytes(digest), response) for key, digest, response in rows}

    @_translated
    async def count(self, plan: CountPlan, types: Iterable[str]) -> dict[tuple[int, str], int]:
        wanted = tuple(types)
        if not plan.intervals or not wanted:
            return {}
        sources = [
            _distinct((i, lo or "-infinity", hi or "infinity", 1) for i, lo, hi in plan.days),
            _distinct(plan.quarters),
            _distinct((i, lo, hi or "infinity", 1) for i, lo, hi in plan.log),
        ]
        args = [list(column) for ranges in sources for column in _columns(ranges)]
        rows = await self._fetch(COUNT_PLAN_SQL, *args)
        for source, _, totals in rows:
            if source != HORIZON_ROW:
                continue
            horizon = lifecycle.horizon_of_micros(totals[0])
            if any(lo < horizon for _, lo, _ in plan.log):
                raise BeforeHorizonError(horizon)  # those raw events are gone: never undercount
        return _tally((r for r in rows if r[0] != HORIZON_ROW), sources, wanted)

    @_translated
    async def newest_bucket(self) -> int | None:
        return (await self._fetch(NEWEST_BUCKET_SQL))[0][0]

    async def ping(self) -> bool:
        try:
            async with self._readers().acquire(timeout=PING_TIMEOUT_S) as conn:
                return await conn.fetchval("SELECT 1", timeout=PING_TIMEOUT_S) == 1
        except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
            raise _storage_error(exc) from exc

    # --- rollup maintenance ----------------------------------------------------------

    @_translated
    async def days_to_check(self, start: date | None, end: date | None) -> list[str]:
        async with self._maintenance_lock:
            conn = await self._maintenance_connection()
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await _days_to_check(conn, start, end)

    @_translated
    async def recount_day(self, day: str, *, repair: bool) -> DayRecount:
        """The first look is a read snapshot, without any lock: commits change the log and
        the rollups together, so a day that agrees in a snapshot stays right. Only a day
        that differs is recounted and rewritten under the rollup lock. A day before the
        retention horizon is frozen: nothing is counted or written."""
        parsed = parse_day(day)
        async with self._maintenance_lock:
            conn = await self._maintenance_connection()
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                if _frozen(day, await conn.fetchval(HORIZON_SQL)):
                    return DayRecount(day, {}, {}, frozen=True)
                look = await _count_and_read(conn, day, parsed)
            if not look.differs or not repair or parsed is None:
                return look.result(day)
            for attempt in range(1, BUSY_ATTEMPTS + 1):
                try:
                    async with conn.transaction():  # READ COMMITTED: sees every commit
                        await conn.execute(LOCK_ROLLUPS_SQL)
                        began = time.perf_counter()
                        # Retention may have frozen the day meanwhile (it raises the
                        # horizon before it deletes; FOR SHARE waits for such a step).
                        frozen = _frozen(day, await conn.fetchval(HORIZON_FOR_SHARE_SQL))
                        if not frozen:
                            look = await _count_and_read(conn, day, parsed)  # exact now
                            if look.differs:
                                await look.rewrite(conn, day, parsed)
                    held_ms = (time.perf_counter() - began) * 1000
                    if frozen:
                        return DayRecount(day, {}, {}, frozen=True, held_ms=held_ms)
                    return look.result(day, repaired=look.differs, held_ms=held_ms)
                except asyncpg.LockNotAvailableError:
                    if attempt == BUSY_ATTEMPTS:
                        raise
                    log.warning("rollup recount of %s: rollups busy, retrying", day)
        raise AssertionError("unreachable")

    # --- data lifecycle (schema/postgres/lifecycle.py) ---------------------------------

    @_translated
    async def horizon(self) -> str | None:
        (horizon,) = (await self._fetch(HORIZON_SQL))[0]
        return format_ts(horizon) if horizon is not None else None

    @_translated
    async def oldest_timestamp(self) -> str | None:
        oldest = (await self._fetch(LOG_SPAN_SQL))[0][0]
        return format_ts(oldest) if oldest is not None else None

    @_translated
    async def log_position(self) -> int:
        """Waits (up to the busy timeout) for the transactions in progress to end: see
        ``lifecycle.settled_position``."""

        offset = 0

        async def snapshot() -> tuple[int, int]:
            nonlocal offset
            xmin, xmax, offset = (await self._fetch(lifecycle.SNAPSHOT_SQL))[0]
            return xmin, xmax

        settled = await lifecycle.settled_position(snapshot, self.busy_timeout_ms / 1000)
        return settled + offset * POSITIONS_PER_TRANSACTION  # migration 0003

    @_translated
    async def export_page(self, spec: ExportFilter, after: int, limit: int) -> ExportPage:
        async with self._readers().acquire() as conn:
            page, refused = await lifecycle.export_page(conn, spec, after, limit)
        if refused is not None:
            raise BeforeHorizonError(refused)  # retention took rows this export wants
        return page

    @_translated
    async def erase_step(
        self, user_id: str, *, upto: int, limit: int, audit: AuditEntry, resume: int = 0
    ) -> LifecycleStep:
        async with self._maintenance_lock:
            conn = await self._maintenance_connection()
            for attempt in range(1, APPEND_ATTEMPTS + 1):
                try:
                    return await lifecycle.erase_step(
                        conn, user_id, upto=upto, limit=limit, audit=audit, resume=resume
                    )
                except _RETRYABLE:
                    if attempt == APPEND_ATTEMPTS:
                        raise
                    log.warning("erasure step was a deadlock victim; retrying it")
        raise AssertionError("unreachable")

    @_translated
    async def expire_step(
        self, before: str, *, resume: int, limit: int, audit: AuditEntry
    ) -> LifecycleStep:
        async with self._maintenance_lock:
            conn = await self._maintenance_connection()
            step, dropped = await lifecycle.expire_step(
                conn,
                before,
                limit=limit,
                audit=audit,
                lock_timeout=self._settings("maintenance", write=True)["lock_timeout"],
            )
        if dropped is not None:  # gone: a later append of that month creates it anew
            self._months.discard(dropped)
        return step

    # --- jobs ----------------------------------------------------------------------------

    @_translated
    async def try_lock_job(self, job: str) -> bool:
        async with self._maintenance_lock:
            conn = await self._maintenance_connection()
            if not await conn.fetchval(TRY_LOCK_SQL, locks.NAMESPACE, locks.job(job)):
                return False
            self._jobs_held.add(job)
            return True

    @_translated
    async def unlock_job(self, job: str) -> None:
        async with self._maintenance_lock:
            if job not in self._jobs_held:
                return
            self._jobs_held.discard(job)
            conn = self._maintenance
            if conn is None or conn.is_closed():
                return  # the lock went with the connection
            try:
                await conn.execute(UNLOCK_SQL, locks.NAMESPACE, locks.job(job))
            except BaseException:
                # A lock left held would block every other instance's passes: closing
                # the connection releases it for sure.
                self._maintenance = None
                conn.terminate()
                raise


class _KeyVanishedError(Exception):
    """A key that conflicted was gone when its answer was read (pruned in between)."""


# --- the functions that run on one connection ---------------------------------------


async def _keep_reader_session(conn: asyncpg.Connection) -> None:
    """A reader's release to the pool. asyncpg still rolls back an open transaction first;
    its reset query (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL) is skipped: a second
    round trip per read, for session state that reads never create (they take no session
    advisory lock, LISTEN nor SET; their settings are the connection's startup ones)."""


async def _find_keys(conn: asyncpg.Connection, keys: list[str]) -> dict[str, StoredKey]:
    rows = await conn.fetch(FIND_KEYS_SQL, keys)
    return {key: (bytes(digest), response) for key, digest, response in rows}


def _frozen(day: str, horizon: datetime | None) -> bool:
    """``day`` (a key, maybe not a date) lies before the retention horizon (a UTC day's
    first instant): its raw events are gone, its rollups can no longer be recounted."""
    return horizon is not None and day < horizon.date().isoformat()


# A plan's parts as distinct ranges: ``{(lo, hi): [(part, sign), …]}`` (read once each).
_Ranges = dict[tuple[Any, Any], list[tuple[int, int]]]


def _distinct(parts: Iterable[tuple[int, Any, Any, int]]) -> _Ranges:
    ranges: _Ranges = {}
    for part, lo, hi, sign in parts:
        ranges.setdefault((lo, hi), []).append((part, sign))
    return ranges


def _columns(ranges: _Ranges) -> tuple[list[Any], list[Any]]:
    """The ranges' lower and upper bounds, as the two arrays ``COUNT_PLAN_SQL`` unnests."""
    return [lo for lo, _ in ranges], [hi for _, hi in ranges]


def _tally(
    rows: Iterable[asyncpg.Record], sources: list[_Ranges], wanted: tuple[str, ...]
) -> dict[tuple[int, str], int]:
    """``{(part, event_type): n}`` from ``COUNT_PLAN_SQL``'s rows (source, 1-based range
    number, the three types' totals)."""
    keys = [list(ranges) for ranges in sources]
    counts: dict[tuple[int, str], int] = {}
    for source, number, totals in rows:
        if not any(totals):
            continue
        for part, sign in sources[source][keys[source][number - 1]]:
            for event_type, n in zip(EVENT_TYPES, totals, strict=True):
                if n and event_type in wanted:
                    counts[(part, event_type)] = counts.get((part, event_type), 0) + sign * n
    return {key: n for key, n in counts.items() if n}


async def _days_to_check(
    conn: asyncpg.Connection, start: date | None, end: date | None
) -> list[str]:
    """Every day from the log's first timestamp to its last (two index descents, not a
    scan), and every day holding rollup rows; within ``[start, end]``."""

    horizon = await conn.fetchval(HORIZON_SQL)
    if horizon is not None:  # days before it are frozen: never listed
        live_from = horizon.date()
        start = live_from if start is None else max(start, live_from)

    def wanted(day: date) -> bool:
        return (start is None or day >= start) and (end is None or day <= end)

    days: set[date] = set()
    first, last = await conn.fetchrow(LOG_SPAN_SQL)
    if first is not None and last is not None:
        day, final = first.date(), last.date()
        if start is not None:
            day = max(day, start)
        if end is not None:
            final = min(final, end)
        while day <= final:
            days.add(day)
            if day == date.max:
                break
            day += timedelta(days=1)
    for (first_s,) in await conn.fetch(QUARTER_DAYS_SQL):
        days.add(_EPOCH_DAY + timedelta(seconds=first_s))
    for (day,) in await conn.fetch(ROLLUP_DAYS_SQL):
        days.add(day)
    return [day.isoformat() for day in sorted(d for d in days if wanted(d))]


@dataclass
class _DayLook(DayLook):
    """``DayLook`` with PostgreSQL's repair (slots summed on read, rewritten as one)."""

    async def rewrite(self, conn: asyncpg.Connection, day: str, parsed: date) -> None:
        """Replace the day's rollup rows, every slot, with the log's counts as slot 0
        (in the caller's transaction, under the rollup lock)."""
        first_s = (parsed - _EPOCH_DAY).days * 86400
        await conn.execute(DELETE_DAILY_SQL, day)
        if self.counted:
            await conn.execute(SET_DAILY_SQL, day, list(self.counted), list(self.counted.values()))
        await conn.execute(DELETE_QUARTERS_SQL, first_s, first_s + 86400)
        if self.counted_quarters:
            buckets, types = zip(*self.counted_quarters, strict=True)
            await conn.execute(
                SET_QUARTERS_SQL, list(buckets), list(types), list(self.counted_quarters.values())
            )


async def _count_and_read(conn: asyncpg.Connection, day: str, parsed: date | None) -> _DayLook:
    """The day's rollup rows and the log's counts, in the caller's transaction. A day key
    that is not a date has no rows here (the column is a date)."""
    if parsed is None:
        return _DayLook({}, {}, {}, {})
    stored = dict(await conn.fetch(DAILY_OF_DAY_SQL, day))
    following = next_day(parsed)
    hi = day_start(following) if following else "infinity"
    counted_quarters = {
        (bucket, event_type): n
        for bucket, event_type, n in await conn.fetch(
            COUNT_DAY_BY_QUARTER_SQL, day_start(parsed), hi, list(EVENT_TYPES)
        )
    }
    counted: dict[str, int] = {}
    for (_, event_type), n in counted_quarters.items():
        counted[event_type] = counted.get(event_type, 0) + n
    first_s = (parsed - _EPOCH_DAY).days * 86400
    stored_quarters = {
        (bucket, event_type): n
        for bucket, event_type, n in await conn.fetch(QUARTERS_OF_DAY_SQL, first_s, first_s + 86400)
    }
    return _DayLook(counted, stored, counted_quarters, stored_quarters)
