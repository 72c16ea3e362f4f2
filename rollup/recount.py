"""The one recount primitive, and reconcile/rebuild as loops over it.

``recount_day()`` counts one UTC day of the log per ``event_type`` (through the
``(event_type, timestamp)`` index) and reads that day's rollup rows in one read snapshot.
A day that agrees is done (commits change log and rollup together, so it stays right).
A day that differs is — unless it is a dry run — recounted and repaired inside one
``BEGIN IMMEDIATE`` transaction: the ingest writer cannot commit between that count and
the repair (SQLite has one write lock), so the result is exact even while the service
ingests; and since a transaction covers one day, with a cache the snapshot read warmed,
ingestion waits milliseconds, never the whole rebuild.

A dry run reads in a plain (deferred) transaction instead: one WAL snapshot holds both
the log and the rollup, so the difference it reports is exact too, and it never takes
the write lock.

Everything here is synchronous ``sqlite3`` on a connection of its own: the CLI calls it
directly, the service runs a whole pass in a worker thread (``rollup.service``).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta

from schema.events import EVENT_TYPES
from schema.store import COUNT_LOG_SQL, HIGHEST, connection_pragmas, is_busy
from schema.timestamps import day_start, format_ts, next_day, now

log = logging.getLogger(__name__)

# The log's own counting query (schema.store), for the three types.
COUNT_DAY_SQL = COUNT_LOG_SQL.format(marks=", ".join("?" * len(EVENT_TYPES)))
# Each is one descent of the (event_type, timestamp) index: O(log n), never a scan.
FIRST_TIMESTAMP_SQL = "SELECT MIN(timestamp) FROM events WHERE event_type = ?"
LAST_TIMESTAMP_SQL = "SELECT MAX(timestamp) FROM events WHERE event_type = ?"
ROLLUP_DAYS_SQL = "SELECT DISTINCT day FROM daily_event_counts ORDER BY day"
ROLLUP_OF_DAY_SQL = "SELECT event_type, count FROM daily_event_counts WHERE day = ?"
SET_ROLLUP_SQL = """
INSERT INTO daily_event_counts (day, event_type, count) VALUES (?, ?, ?)
ON CONFLICT (day, event_type) DO UPDATE SET count = excluded.count
"""
DELETE_ROLLUP_SQL = "DELETE FROM daily_event_counts WHERE day = ? AND event_type = ?"

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
BUSY_ATTEMPTS = 3  # each attempt already waits busy_timeout for the write lock


def parse_day(text: str) -> date | None:
    """A ``YYYY-MM-DD`` calendar date, or None (also for ``2025-02-30``)."""
    if not _DAY.match(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class DayChange:
    """One day whose rollup differed from the log: ``{event_type: count}`` on each side
    (a type with no events is absent; ``before`` may hold stray types)."""

    date: str
    before: dict[str, int]
    after: dict[str, int]

    def describe(self) -> str:
        types = [t for t in EVENT_TYPES if t in self.before or t in self.after]
        types += sorted(t for t in self.before if t not in EVENT_TYPES)
        parts = []
        for t in types:
            old, new = self.before.get(t), self.after.get(t)
            if old != new:
                parts.append(f"{t} {_n(old)} -> {_n(new)}")
        return ", ".join(parts)


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


@dataclass
class Report:
    """What one reconcile or rebuild pass found (and, unless a dry run, repaired)."""

    kind: str  # "reconcile" or "rebuild"
    dry_run: bool
    start_date: str | None = None
    end_date: str | None = None
    trigger: str = "cli"  # "cli", "http" or "schedule"
    started_at: str = ""
    finished_at: str = ""
    days_checked: int = 0
    days_changed: list[DayChange] = field(default_factory=list)
    events_counted: int = 0
    ms: float = 0.0
    longest_transaction_ms: float = 0.0
    completed: bool = True  # False when stopped early by shutdown

    def to_dict(self) -> dict[str, object]:
        body = asdict(self)
        body["ms"] = round(self.ms, 1)
        body["longest_transaction_ms"] = round(self.longest_transaction_ms, 2)
        return body

    def summary(self) -> str:
        verb = "differ (dry run, not repaired)" if self.dry_run else "repaired"
        stopped = "" if self.completed else " (stopped early by shutdown)"
        return (
            f"rollup {self.kind}: {self.days_checked} days checked, "
            f"{len(self.days_changed)} {verb}, {self.events_counted} events counted, "
            f"{self.ms:.1f} ms (longest transaction {self.longest_transaction_ms:.2f} ms){stopped}"
        )

    def to_text(self) -> str:
        lines = [self.summary()]
        if self.start_date or self.end_date:
            lines.append(f"  range: {self.start_date or '…'} .. {self.end_date or '…'}")
        for change in self.days_changed:
            lines.append(f"  {change.date}: {change.describe()}")
        return "\n".join(lines)


def connect(
    path: str, *, synchronous: str = "FULL", busy_timeout_ms: int = 5000
) -> sqlite3.Connection:
    """A connection of its own, with the store's pragmas (busy_timeout, synchronous)."""
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in connection_pragmas(synchronous, busy_timeout_ms, cache_mib=32):
        conn.execute(pragma)
    return conn


def recount_day(
    conn: sqlite3.Connection, day: str, *, repair: bool
) -> tuple[dict[str, int], DayChange | None, float]:
    """Recount ``day`` from the log and compare it with the rollup; with ``repair``,
    write the log's numbers in a write transaction that recounts first.

    Returns ``(log counts, change or None, ms a write transaction held)``. A ``day`` that
    is not a real date (a stray rollup key) has no events, so its rows are removed.

    The first look is a read snapshot, without the write lock: commits change the log and
    the rollup together, so a day that agrees in a snapshot stays right, and only a day
    that differs is recounted and repaired under the lock — with the cache already warm,
    so ingestion waits for a warm count, never a cold one.
    """
    parsed = parse_day(day)
    conn.execute("BEGIN")
    try:
        counted, stored = _count_and_read(conn, day, parsed)
    finally:
        conn.execute("COMMIT")
    if stored == counted:
        return counted, None, 0.0
    if not repair:
        return counted, DayChange(day, stored, counted), 0.0

    for attempt in range(1, BUSY_ATTEMPTS + 1):
        try:
            conn.execute("BEGIN IMMEDIATE")
            break
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or attempt == BUSY_ATTEMPTS:
                raise
            log.warning("rollup recount of %s: database busy, retrying", day)
    began = time.perf_counter()
    try:
        counted, stored = _count_and_read(conn, day, parsed)  # exact: no commit can interleave
        change = None
        if stored != counted:
            change = DayChange(day, stored, counted)
            gone = [(day, t) for t in stored if t not in counted]
            if gone:
                conn.executemany(DELETE_ROLLUP_SQL, gone)
            fixed = [(day, t, n) for t, n in counted.items() if stored.get(t) != n]
            if fixed:
                conn.executemany(SET_ROLLUP_SQL, fixed)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return counted, change, (time.perf_counter() - began) * 1000


def _count_and_read(
    conn: sqlite3.Connection, day: str, parsed: date | None
) -> tuple[dict[str, int], dict[str, int]]:
    """``(log counts per type, rollup rows)`` of one day, in the caller's transaction."""
    counted: dict[str, int] = {}
    if parsed is not None:
        following = next_day(parsed)
        hi = day_start(following) if following else HIGHEST
        for event_type, n in conn.execute(COUNT_DAY_SQL, (*EVENT_TYPES, day_start(parsed), hi)):
            if n:
                counted[event_type] = n
    stored = dict(conn.execute(ROLLUP_OF_DAY_SQL, (day,)).fetchall())
    return counted, stored


def days_to_check(
    conn: sqlite3.Connection, start: date | None = None, end: date | None = None
) -> list[str]:
    """Every day in ``[start, end]`` (both optional) that has events or rollup rows.

    Days with events are every day from the log's first timestamp to its last (found
    through the index, not by scanning it); days in between without events cost one
    empty index probe each. Rollup keys that are not real dates are included when no
    range is given: they are stray by definition.
    """
    days: set[str] = set()
    strays: list[str] = []
    first = last = None
    for event_type in EVENT_TYPES:
        (lo,) = conn.execute(FIRST_TIMESTAMP_SQL, (event_type,)).fetchone()
        (hi,) = conn.execute(LAST_TIMESTAMP_SQL, (event_type,)).fetchone()
        if lo is not None:
            first = lo if first is None else min(first, lo)
            last = hi if last is None else max(last, hi)
    if first is not None and last is not None:
        day, final = date.fromisoformat(first[:10]), date.fromisoformat(last[:10])
        if start is not None:
            day = max(day, start)
        if end is not None:
            final = min(final, end)
        while day <= final:
            days.add(day.isoformat())
            if day == date.max:
                break
            day += timedelta(days=1)
    for (key,) in conn.execute(ROLLUP_DAYS_SQL):
        parsed = parse_day(key)
        if parsed is None:
            if start is None and end is None:
                strays.append(key)
        elif (start is None or parsed >= start) and (end is None or parsed <= end):
            days.add(key)
    return sorted(days) + strays


def run(
    conn: sqlite3.Connection,
    kind: str,
    *,
    start: date | None = None,
    end: date | None = None,
    dry_run: bool = False,
    trigger: str = "cli",
    stop: threading.Event | None = None,
) -> Report:
    """One reconcile or rebuild pass: ``recount_day`` for every day to check, one
    transaction per day. Logs one INFO summary and a WARNING per differing day."""
    report = Report(
        kind=kind,
        dry_run=dry_run,
        start_date=start.isoformat() if start else None,
        end_date=end.isoformat() if end else None,
        trigger=trigger,
        started_at=format_ts(now()),
    )
    began = time.perf_counter()
    try:
        for day in days_to_check(conn, start, end):
            if stop is not None and stop.is_set():
                report.completed = False
                break
            counted, change, held_ms = recount_day(conn, day, repair=not dry_run)
            report.days_checked += 1
            report.events_counted += sum(counted.values())
            report.longest_transaction_ms = max(report.longest_transaction_ms, held_ms)
            if change is not None:
                report.days_changed.append(change)
                log.warning(
                    "rollup %s: %s %s: %s",
                    kind,
                    change.date,
                    "differs from the log (dry run, not repaired)" if dry_run else "repaired",
                    change.describe(),
                )
    finally:
        report.ms = (time.perf_counter() - began) * 1000
        report.finished_at = format_ts(now())
    log.info("%s", report.summary())
    return report


def run_on_path(
    path: str,
    kind: str,
    *,
    synchronous: str = "FULL",
    busy_timeout_ms: int = 5000,
    start: date | None = None,
    end: date | None = None,
    dry_run: bool = False,
    trigger: str = "cli",
    stop: threading.Event | None = None,
) -> Report:
    """``run()`` on a fresh connection to ``path``, closed afterwards."""
    conn = connect(path, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms)
    try:
        return run(conn, kind, start=start, end=end, dry_run=dry_run, trigger=trigger, stop=stop)
    finally:
        conn.close()
