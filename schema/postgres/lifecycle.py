"""The data lifecycle on PostgreSQL: log positions, export pages, erasure and retention
steps. All of its SQL, and the functions that run it on one connection (the store picks
the connection and holds its lock).

**Positions.** An event's ``seq`` is ``xid8 × 65,536 + ordinal``: the id of the
transaction that appended it and its place in that transaction's one INSERT (1..65,535;
``APPEND_SQL`` sets it). Instances commit in any order, but a transaction id is taken
before the transaction writes and never reused, so once every transaction below some id
``x`` has ended, no event can appear any more at a position below ``x × 65,536``.
``settled_position`` returns such a bound: the snapshot's ``xmax`` (every transaction
that had begun writing when it was called, and none that began after), once the
snapshots' ``xmin`` has passed it (those transactions all ended). So an export's cursor
covers every event committed before the export began, and a resumed export can never
miss one that committed late: no counter row that every group commit would update.

**Erasure** deletes a range of the user's positions and subtracts exactly the deleted
events from both rollups, locking only the rollup rows of the keys it changes (in key
order, as writers do) and rewriting each such key into one of its slots.

**Retention** detaches a whole monthly partition where the month ends by the cut-off
(dropping it after the step commits), and deletes rows in ``(timestamp, event_id)``
order otherwise, raising the horizon first.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from schema.storage import (
    AuditEntry,
    ExportFilter,
    ExportPage,
    ExportRow,
    LifecycleStep,
    StorageBusyError,
)
from schema.timestamps import format_ts

log = logging.getLogger(__name__)

POSITIONS_PER_TRANSACTION = 65_536  # seq = xid8 × this + ordinal
MOST_ROWS_PER_APPEND = POSITIONS_PER_TRANSACTION - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# --- positions ----------------------------------------------------------------------------

SNAPSHOT_SQL = """
SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint, xid_offset
FROM pg_current_snapshot() AS s, log_state
"""
SETTLE_FIRST_PAUSE_S, SETTLE_MOST_PAUSE_S = 0.001, 0.05


async def settled_position(
    snapshot: Callable[[], Awaitable[tuple[int, int]]], timeout_s: float
) -> int:
    """A position at or above every event committed before this call, below which no
    event can appear any more: ``xmax × 65,536`` of a snapshot taken now, once every
    transaction below ``xmax`` has ended (``snapshot()`` returns a fresh ``(xmin,
    xmax)``; group commits last milliseconds). Raises ``StorageBusyError`` when a
    transaction stays open longer than ``timeout_s`` (say a session left idle in a
    transaction): its events could still appear below the position."""
    xmin, xmax = await snapshot()
    deadline = time.monotonic() + timeout_s
    pause = SETTLE_FIRST_PAUSE_S
    while xmin < xmax:
        if time.monotonic() > deadline:
            raise StorageBusyError(
                f"a transaction has stayed open for over {timeout_s:g} s (transaction id "
                f"{xmin}); log positions wait for it to end"
            )
        await asyncio.sleep(pause)
        pause = min(pause * 2, SETTLE_MOST_PAUSE_S)
        xmin, _ = await snapshot()
    return xmax * POSITIONS_PER_TRANSACTION


# --- export ---------------------------------------------------------------------------

# One page in log order: a keyset range of the "events#seq" index of each partition the
# time bounds leave (pruned when the statement starts), merged in order. The page is the
# next ``limit`` matching rows (no window of positions as on SQLite: a snapshot here
# blocks no writer). The timestamp is formatted by the server, in the log's one format.
EXPORT_PAGE_SQL = """
SELECT seq, event_id::text, user_id, event_type,
    to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), payload::text
FROM events
WHERE seq > $1 AND seq <= $2 AND event_type = ANY($3::text[])
    AND timestamp >= $4::text::timestamptz AND timestamp < $5::text::timestamptz
ORDER BY seq
LIMIT $6
"""
LIFECYCLE_STATE_SQL = "SELECT horizon, expired_seq FROM log_state"


async def export_page(
    conn: asyncpg.Connection, spec: ExportFilter, after: int, limit: int
) -> tuple[ExportPage, str | None]:
    """One page, and the horizon when retention deleted an event this export would
    include (the caller raises). The state is read after the page, on the same
    connection: a deletion the page missed rows to had committed before the page's
    snapshot, so the later read sees its horizon."""
    if after >= spec.upto or (spec.lo is not None and spec.hi is not None and spec.lo >= spec.hi):
        rows: list[ExportRow] = []
    else:
        args = (spec.lo or "-infinity", spec.hi or "infinity", limit)
        rows = await conn.fetch(EXPORT_PAGE_SQL, after, spec.upto, list(spec.types), *args)
    horizon, expired_seq = await conn.fetchrow(LIFECYCLE_STATE_SQL)
    refused = None
    if horizon is not None:
        text = format_ts(horizon)
        if after < expired_seq and (spec.lo is None or spec.lo < text):
            refused = text
    reached = rows[-1][0] if len(rows) == limit else max(after, spec.upto)
    return ExportPage(rows, reached), refused


# --- the audit and the sanctioned delete ----------------------------------------------

# The append-only trigger lets a DELETE through only in a transaction that set this (SET
# LOCAL: it ends with the transaction and no other session ever sees it).
SANCTION_SQL = "SELECT set_config('analytics.sanctioned_delete', $1, true)"
START_AUDIT_SQL = """
INSERT INTO lifecycle_audit (operation, started_at, user_id_sha256, before)
VALUES ($1, $2::text::timestamptz, $3, $4::text::timestamptz)
RETURNING id
"""
ADD_TO_AUDIT_SQL = """
UPDATE lifecycle_audit SET events_deleted = events_deleted + $1,
    finished_at = CASE WHEN $2 THEN $3::text::timestamptz ELSE finished_at END
WHERE id = $4
"""


async def _audit(conn: asyncpg.Connection, audit: AuditEntry, deleted: int, done: bool) -> int:
    """Add this step's deletions to the pass's audit record (its first step creates it)."""
    audit_id = audit.id
    if audit_id is None:
        audit_id = await conn.fetchval(
            START_AUDIT_SQL, audit.operation, audit.started_at, audit.user_id_sha256, audit.before
        )
    await conn.execute(ADD_TO_AUDIT_SQL, deleted, done, audit.at, audit_id)
    return int(audit_id)


# --- erasure ----------------------------------------------------------------------------

# The position of the user's ``limit``-th next event (None: fewer are left), then the
# user's events up to it leave the log, counted per (UTC day, 15-minute bucket, type).
STEP_END_SQL = """
SELECT seq FROM events WHERE user_id = $1 AND seq > $2 AND seq <= $3
ORDER BY seq OFFSET $4 - 1 LIMIT 1
"""
ERASE_SQL = """
WITH gone AS (
    DELETE FROM events WHERE user_id = $1 AND seq > $2 AND seq <= $3
    RETURNING timestamp, event_type
)
SELECT (timestamp AT TIME ZONE 'UTC')::date::text, quarter_hour_of(timestamp), event_type, COUNT(*)
FROM gone GROUP BY 1, 2, 3
"""


class _Rollup:
    """The SQL that subtracts counts from one rollup table whose key is ``key``; keys
    travel as ``kind`` (days as text: asyncpg would send the first and last days of the
    calendar as infinities)."""

    def __init__(self, table: str, key: str, kind: str, cast: str = ""):
        keys = f"unnest($1::{kind}[], $2::text[])"
        match = f"c.{key} = k.{key}{cast} AND c.event_type = k.event_type"
        # Every slot row of the touched keys, locked in key order (writers lock theirs in
        # the same order, so no deadlock), with the count it holds now.
        self.lock = f"""
SELECT c.{key}::{kind}, c.event_type, c.slot, c.count FROM {table} AS c
JOIN {keys} AS k({key}, event_type) ON {match}
ORDER BY c.{key}, c.event_type, c.slot FOR UPDATE OF c
"""
        self.set = f"""
UPDATE {table} AS c SET count = k.count
FROM unnest($1::{kind}[], $2::text[], $3::smallint[], $4::bigint[])
    AS k({key}, event_type, slot, count)
WHERE {match} AND c.slot = k.slot
"""
        self.delete = f"""
DELETE FROM {table} AS c USING unnest($1::{kind}[], $2::text[], $3::smallint[])
    AS k({key}, event_type, slot)
WHERE {match} AND c.slot = k.slot
"""

    async def subtract(self, conn: asyncpg.Connection, gone: Counter[tuple[Any, str]]) -> None:
        """Take ``gone[(key, event_type)]`` events off each key, in the caller's
        transaction: the key's slot rows are locked, their sum minus the deleted events
        goes into the first of them, and the others are deleted (all of them when
        nothing is left). Rows only this transaction locked change, so a writer adding
        to the key meanwhile either waits for the commit or adds to a new slot row."""
        touched = sorted(gone)
        locked = await conn.fetch(self.lock, [k for k, _ in touched], [t for _, t in touched])
        kept: list[tuple[Any, str, int, int]] = []
        dropped: list[tuple[Any, str, int]] = []
        rows_of: dict[tuple[Any, str], list[tuple[int, int]]] = {}
        for key, event_type, slot, count in locked:
            rows_of.setdefault((key, event_type), []).append((slot, count))
        for key, rows in rows_of.items():
            left = sum(count for _, count in rows) - gone[key]
            if left < 0:  # the rollup had drifted: reconcile recounts the day
                log.warning("rollup key %s counted %d fewer events than were erased", key, -left)
            first = rows[0][0] if left > 0 else None
            if first is not None:
                kept.append((*key, first, left))
            dropped += [(*key, slot) for slot, _ in rows if slot != first]
        if kept:
            await conn.execute(self.set, *(list(column) for column in zip(*kept, strict=True)))
        if dropped:
            await conn.execute(
                self.delete, *(list(column) for column in zip(*dropped, strict=True))
            )


DAILY = _Rollup("daily_event_counts", "day", "text", "::date")
QUARTERS = _Rollup("quarter_hour_event_counts", "bucket", "bigint")


async def erase_step(
    conn: asyncpg.Connection,
    user_id: str,
    *,
    upto: int,
    limit: int,
    audit: AuditEntry,
    resume: int,
) -> LifecycleStep:
    """The user's next ``limit`` events at positions in ``(resume, upto]`` leave the log
    and both rollups, with the audit update, in one READ COMMITTED transaction.
    ``held_ms`` is the whole transaction.

    The step's end is read before the transaction: nothing can add an event of the user
    below ``upto`` (a settled position) and passes run one at a time, so the range holds
    the same events inside it (fewer only if retention took some: the counts come from
    the rows deleted). On a new connection that read also pays the first planning of the
    log's partitions, which would otherwise hold the first step's locks."""
    end = await conn.fetchval(STEP_END_SQL, user_id, resume, upto, limit)
    async with conn.transaction():
        began = time.perf_counter()
        await conn.execute(SANCTION_SQL, "erasure")
        until = upto if end is None else end
        days: Counter[tuple[str, str]] = Counter()
        quarters: Counter[tuple[int, str]] = Counter()
        for day, bucket, event_type, n in await conn.fetch(ERASE_SQL, user_id, resume, until):
            days[(day, event_type)] += n
            quarters[(bucket, event_type)] += n
        deleted = sum(days.values())
        if deleted:
            # quarters first, then daily: as writers do (APPEND_SQL's main statement
            # upserts the 15-minute rows; its `daily` CTE runs after it)
            await QUARTERS.subtract(conn, quarters)
            await DAILY.subtract(conn, days)
        done = end is None
        audit_id = await _audit(conn, audit, deleted, done)
    held_ms = (time.perf_counter() - began) * 1000
    return LifecycleStep(deleted, done, audit_id, resume=until, held_ms=held_ms)


# --- retention --------------------------------------------------------------------------

RAISE_HORIZON_SQL = """
UPDATE log_state SET horizon = $1::text::timestamptz
WHERE horizon IS NULL OR horizon < $1::text::timestamptz
"""
MONTH_PARTITIONS_SQL = """
SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
WHERE i.inhparent = 'events'::regclass AND c.relname ~ '^events_[0-9]{4}_[0-9]{2}$'
ORDER BY 1
"""
_MONTH_PARTITION = re.compile(r"events_([0-9]{4})_([0-9]{2})", re.ASCII)
# A whole month before the cut-off leaves the log as one partition: no insert may reach
# it while it is counted (SHARE), then DETACH takes ACCESS EXCLUSIVE on the log until the
# step commits. Both wait at most DROP_LOCK_TIMEOUT (readers and writers queue behind a
# waiting DETACH); otherwise the step deletes rows instead. The detached table is renamed
# "expired_…" and dropped after the commit, in a transaction of its own: deleting a
# month's files at commit takes ~100 ms on a 10M-event log (measured), which would hold
# every reader and writer of the log if the step dropped the partition itself. A table a
# stopped pass left behind is dropped by the next step.
DROP_LOCK_TIMEOUT = "100ms"
SET_LOCK_TIMEOUT_SQL = "SELECT set_config('lock_timeout', $1, true)"
LOCK_PARTITION_SQL = 'LOCK TABLE "{name}" IN SHARE MODE'
PARTITION_SPAN_SQL = 'SELECT COUNT(*), MAX(seq) FROM "{name}"'
DETACH_PARTITION_SQL = 'ALTER TABLE events DETACH PARTITION "{name}"'
RENAME_DETACHED_SQL = 'ALTER TABLE "{name}" RENAME TO "{expired}"'
EXPIRED_TABLES_SQL = """
SELECT relname FROM pg_class WHERE relkind = 'r' AND relname ~ '^expired_events_[0-9]{4}_[0-9]{2}$'
    AND relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'events'::regclass)
ORDER BY 1
"""
DROP_EXPIRED_SQL = 'DROP TABLE IF EXISTS "{name}"'
# Otherwise rows, oldest first: the key of the ``limit``-th oldest (None: fewer are
# left), then every row up to it (the primary key's order, so ties of a timestamp
# split cleanly).
EXPIRE_END_SQL = """
SELECT timestamp, event_id FROM events WHERE timestamp < $1::text::timestamptz
ORDER BY timestamp, event_id OFFSET $2 - 1 LIMIT 1
"""
EXPIRE_ROWS_SQL = """
WITH gone AS (
    DELETE FROM events WHERE timestamp < $1::text::timestamptz
        AND ($2::timestamptz IS NULL OR (timestamp, event_id) <= ($2, $3::uuid))
    RETURNING seq
)
SELECT COUNT(*), MAX(seq) FROM gone
"""
RAISE_EXPIRED_SEQ_SQL = "UPDATE log_state SET expired_seq = greatest(expired_seq, $1)"
ANY_BEFORE_SQL = "SELECT EXISTS (SELECT FROM events WHERE timestamp < $1::text::timestamptz)"


def _month_of(name: str) -> date | None:
    """The first day of the month a partition ``events_YYYY_MM`` holds."""
    match = _MONTH_PARTITION.fullmatch(name)
    return date(int(match.group(1)), int(match.group(2)), 1) if match else None


def _after(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


async def expire_step(
    conn: asyncpg.Connection,
    before: str,
    *,
    limit: int,
    audit: AuditEntry,
    lock_timeout: str,
) -> tuple[LifecycleStep, date | None]:
    """Raise the horizon to ``before``, then drop the oldest month partition that ends
    by it, or delete up to ``limit`` rows before it, with the audit update, in one
    transaction; returns the step and the month whose partition it dropped (if any).
    ``lock_timeout`` is the connection's own, restored after the detach's shorter one."""
    cut = date.fromisoformat(before[:10])
    await _drop_expired(conn)  # a month a stopped pass detached but did not drop
    async with conn.transaction():
        began = time.perf_counter()
        await conn.execute(SANCTION_SQL, "retention")
        await conn.execute(RAISE_HORIZON_SQL, before)
        dropped, deleted, top = None, 0, None
        for (name,) in await conn.fetch(MONTH_PARTITIONS_SQL):
            month = _month_of(name)
            if month is not None and _after(month) <= cut:
                span = await _detach_partition(conn, name, lock_timeout)
                if span is not None:
                    dropped, (deleted, top) = month, span
                break  # one partition per step (the oldest); rows if it is busy
        if dropped is None:
            last = await conn.fetchrow(EXPIRE_END_SQL, before, limit)
            # None: fewer than ``limit`` are left, all of them go
            deleted, top = await conn.fetchrow(EXPIRE_ROWS_SQL, before, *(last or (None, None)))
        if top is not None:
            await conn.execute(RAISE_EXPIRED_SEQ_SQL, top)
        done = not await conn.fetchval(ANY_BEFORE_SQL, before)
        audit_id = await _audit(conn, audit, deleted, done)
    held_ms = (time.perf_counter() - began) * 1000
    if dropped is not None:
        await _drop_expired(conn)
    return LifecycleStep(deleted, done, audit_id, held_ms=held_ms), dropped


async def _detach_partition(
    conn: asyncpg.Connection, name: str, lock_timeout: str
) -> tuple[int, int | None] | None:
    """Count a month partition's rows, detach it from the log and rename it
    ``expired_<name>``, in a savepoint of the caller's transaction: ``(rows, highest
    seq)``, or None when its locks were not granted in time (nothing changed)."""
    try:
        async with conn.transaction():  # a savepoint: a lock timeout undoes only this
            await conn.execute(SET_LOCK_TIMEOUT_SQL, DROP_LOCK_TIMEOUT)
            await conn.execute(LOCK_PARTITION_SQL.format(name=name))
            count, top = await conn.fetchrow(PARTITION_SPAN_SQL.format(name=name))
            await conn.execute(DETACH_PARTITION_SQL.format(name=name))
            await conn.execute(RENAME_DETACHED_SQL.format(name=name, expired=f"expired_{name}"))
            await conn.execute(SET_LOCK_TIMEOUT_SQL, lock_timeout)
    except asyncpg.LockNotAvailableError:
        log.info("retention: partition %s is busy; deleting its rows instead", name)
        return None
    except asyncpg.DuplicateTableError:  # expired_<name> from an earlier detach not dropped yet
        log.warning("retention: expired_%s is still there; deleting %s's rows instead", name, name)
        return None
    log.info("retention: detached partition %s (%d events)", name, count)
    return int(count), top


async def _drop_expired(conn: asyncpg.Connection) -> None:
    """Drop the month tables retention detached from the log (outside any transaction of
    the log: their files go at this commit). One that cannot be dropped now stays for
    the next step; it is no longer part of the log."""
    for (name,) in await conn.fetch(EXPIRED_TABLES_SQL):
        try:
            await conn.execute(DROP_EXPIRED_SQL.format(name=name))
        except asyncpg.PostgresError as exc:
            log.warning("retention: could not drop the detached table %s yet: %s", name, exc)
            continue
        log.info("retention: dropped the detached table %s", name)


def horizon_of_micros(micros: int) -> str:
    """A horizon read as microseconds since the epoch (in a count's bigint row)."""
    return format_ts(_EPOCH + timedelta(microseconds=micros))
