"""Retention: delete raw events older than a cut-off day, keep every rollup.

``expire(store, before)`` deletes the events timestamped before ``before`` (a UTC day; its
first instant is the new **horizon**) in short transactions (``Storage.expire_step``: at
most ``MOST_STEP`` rows of the table looked at per step, sized to
``rollup.steps.TARGET_MS``). The first step raises the horizon in the same transaction as
its first deletion, so every reader that misses an expired event also sees the horizon
that explains it:

- counts check it in the same snapshot: a question that needs raw events from before the
  horizon (a date-time bound cutting a 15-minute bucket there) is refused
  (``BeforeHorizonError``, a 409), never answered with a smaller number; whole buckets and
  days before it are still answered from the rollups, which retention never touches;
- reconcile and rebuild skip the days before it (frozen: they could no longer be
  recounted);
- an export that would include an expired event is refused the same way.

The horizon is always the first instant of a UTC day, so a day (and each of its 15-minute
buckets) is wholly frozen or wholly live. Scheduled with ``--retention-days N``: the
cut-off is N days before today (UTC), so at least the last N whole days stay raw.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, replace
from datetime import date

from rollup import passes
from rollup.steps import StepSize, percentiles
from schema.storage import AuditEntry, Storage
from schema.timestamps import day_start, format_ts, now

log = logging.getLogger(__name__)

# Rows looked at per transaction: from FIRST_STEP, sized to the time budget (rollup.steps).
FIRST_STEP, LEAST_STEP, MOST_STEP = 2_000, 200, 5_000


class CutoffInFutureError(ValueError):
    """Retention was asked to delete events of today or later."""


def cutoff(retention_days: int, today: date | None = None) -> date:
    """The first day kept when keeping ``retention_days`` whole days before today (UTC)."""
    today = today or now().date()
    return date.fromordinal(max(1, today.toordinal() - retention_days))


@dataclass
class RetentionReport:
    """What one retention pass did."""

    kind: str = "retention"
    trigger: str = "cli"  # "cli" or "schedule"
    before: str = ""  # the cut-off: events before this instant were deleted
    horizon: str | None = None  # the horizon after the pass
    started_at: str = ""
    finished_at: str = ""
    events_deleted: int = 0
    transactions: int = 0
    ms: float = 0.0
    longest_transaction_ms: float = 0.0
    median_transaction_ms: float = 0.0
    p99_transaction_ms: float = 0.0
    completed: bool = True  # False when stopped early by shutdown

    def to_dict(self) -> dict[str, object]:
        body = asdict(self)
        body["ms"] = round(self.ms, 1)
        body["longest_transaction_ms"] = round(self.longest_transaction_ms, 2)
        return body

    def summary(self) -> str:
        stopped = "" if self.completed else " (stopped early by shutdown)"
        return (
            f"retention: {self.events_deleted} events before {self.before} deleted in "
            f"{self.transactions} transaction{'' if self.transactions == 1 else 's'}, "
            f"{self.ms:.1f} ms (longest transaction "
            f"{self.longest_transaction_ms:.2f} ms); horizon {self.horizon or 'none'}{stopped}"
        )


async def expire(
    store: Storage,
    before: date,
    *,
    trigger: str = "cli",
    stop: asyncio.Event | None = None,
    most: int = MOST_STEP,
    wait: bool = True,
) -> RetentionReport:
    """Delete the raw events before the first instant of UTC day ``before`` (at most
    today); stops between two steps once ``stop`` is set (``completed`` False; the
    horizon is already raised, and the next pass continues). Raises
    ``CutoffInFutureError`` for a day after today. While another instance runs a pass,
    waits for it (``stop`` ends the wait: nothing is deleted) or, without ``wait``,
    raises ``PassBusyError`` (``rollup.passes``)."""
    async with passes.one_at_a_time(store, stop=stop, wait=wait):
        return await _expire(store, before, trigger, stop, most)


async def _expire(
    store: Storage, before: date, trigger: str, stop: asyncio.Event | None, most: int
) -> RetentionReport:
    if before > now().date():
        raise CutoffInFutureError(f"{before} is after today (UTC): today's events are kept")
    began = time.perf_counter()
    cut = day_start(before)
    report = RetentionReport(trigger=trigger, before=cut, started_at=format_ts(now()))
    oldest = await store.oldest_timestamp()
    if oldest is not None and oldest < cut:
        audit = AuditEntry("retention", report.started_at, report.started_at, before=cut)
        size = StepSize(min(FIRST_STEP, most), min(LEAST_STEP, most), most)
        resume = 0
        held: list[float] = []
        while True:
            if stop is not None and stop.is_set():
                report.completed = False
                break
            audit = replace(audit, at=format_ts(now()))
            step = await store.expire_step(cut, resume=resume, limit=size.rows, audit=audit)
            audit = replace(audit, id=step.audit_id)
            report.events_deleted += step.deleted
            report.transactions += 1
            report.longest_transaction_ms = max(report.longest_transaction_ms, step.held_ms)
            held.append(step.held_ms)
            if step.done:
                break
            resume = step.resume
            size.after(step.held_ms)
        report.median_transaction_ms, report.p99_transaction_ms = percentiles(held)
    report.horizon = await store.horizon()
    report.ms = (time.perf_counter() - began) * 1000
    report.finished_at = format_ts(now())
    log.info("%s", report.summary())
    return report
