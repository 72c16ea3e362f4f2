"""Reconcile and rebuild: loops over the storage's one recount primitive.

``Storage.recount_day`` counts one UTC day of the log per ``event_type`` and reads that
day's rollup rows in one read snapshot. A day that agrees is done (commits change log and
rollup together, so it stays right). A day that differs is — unless it is a dry run —
recounted and repaired under the backend's write exclusion (SQLite's write lock; a row
lock on PostgreSQL), so no commit can interleave and the result is exact even while the
service ingests. One transaction covers one day, so ingestion waits milliseconds, never
the whole pass.

The same loop serves the scheduled job, the admin API and the command line, on any
backend. A pass holds the storage's job lock throughout (``rollup.passes``), so one
instance at a time runs one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import date

from rollup import passes
from schema.events import EVENT_TYPES
from schema.storage import Storage
from schema.timestamps import format_ts, now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DayChange:
    """One day whose rollups differed from the log: the daily ``{event_type: count}`` on
    each side (a type with no events is absent; ``before`` may hold stray types), and how
    many of its 15-minute ``(bucket, event_type)`` rows differed."""

    date: str
    before: dict[str, int]
    after: dict[str, int]
    quarter_buckets: int = 0

    def describe(self) -> str:
        types = [t for t in EVENT_TYPES if t in self.before or t in self.after]
        types += sorted(t for t in self.before if t not in EVENT_TYPES)
        parts = []
        for t in types:
            old, new = self.before.get(t), self.after.get(t)
            if old != new:
                parts.append(f"{t} {_n(old)} -> {_n(new)}")
        if self.quarter_buckets:
            parts.append(f"{self.quarter_buckets} of its 15-minute rows")
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


async def run(
    store: Storage,
    kind: str,
    *,
    start: date | None = None,
    end: date | None = None,
    dry_run: bool = False,
    trigger: str = "cli",
    stop: asyncio.Event | None = None,
    wait: bool = True,
) -> Report:
    """One reconcile or rebuild pass: ``recount_day`` for every day to check, one
    transaction per day. Logs one INFO summary and a WARNING per differing day; stops
    between two days once ``stop`` is set (``completed`` is then False).

    While another instance runs a pass, this one waits for it (``wait``; ``stop`` ends
    the wait, with ``completed`` False) or raises ``PassBusyError`` at once."""
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
        async with passes.one_at_a_time(store, stop=stop, wait=wait) as held:
            if not held:  # stopped while another instance's pass ran
                report.completed = False
            else:
                await _check_days(store, report, start, end, dry_run, stop)
    finally:
        report.ms = (time.perf_counter() - began) * 1000
        report.finished_at = format_ts(now())
    log.info("%s", report.summary())
    return report


async def _check_days(
    store: Storage,
    report: Report,
    start: date | None,
    end: date | None,
    dry_run: bool,
    stop: asyncio.Event | None,
) -> None:
    for day in await store.days_to_check(start, end):
        if stop is not None and stop.is_set():
            report.completed = False
            break
        result = await store.recount_day(day, repair=not dry_run)
        report.days_checked += 1
        report.events_counted += sum(result.counted.values())
        report.longest_transaction_ms = max(report.longest_transaction_ms, result.held_ms)
        if result.differs:
            change = DayChange(day, result.stored, result.counted, result.quarters_differing)
            report.days_changed.append(change)
            log.warning(
                "rollup %s: %s %s: %s",
                report.kind,
                change.date,
                "differs from the log (dry run, not repaired)" if report.dry_run else "repaired",
                change.describe(),
            )
