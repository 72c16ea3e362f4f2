"""Rollup and data lifecycle inside the service: one runner for reconcile/rebuild passes,
erasures and retention passes, and the APScheduler jobs that reconcile and expire on an
interval.

A pass runs as a task over the store's maintenance calls (``rollup.recount``), each day one
short transaction on a connection of its own, so the event loop keeps serving while it
works and the ingest writer's commits interleave with it. Erasure and retention steps are
short transactions on the writer lane, between group commits. Passes of any kind never
overlap, in this process or (on PostgreSQL, through the storage's job lock) in another
instance: a second request waits for the first; a scheduled pass skips its turn. On
shutdown the scheduler stops, and a running pass ends after the day (or step) it is on:
each is its own transaction, so stopping between two loses nothing. An erasure always runs
to its end.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from app.config import Config
from rollup import erasure, recount, retention
from rollup.erasure import Erasure
from rollup.passes import PassBusyError
from rollup.recount import Report
from rollup.retention import RetentionReport
from schema.storage import Storage
from schema.timestamps import UTC, format_ts, now

log = logging.getLogger(__name__)
T = TypeVar("T")

JOB_ID = "rollup-reconcile"
RETENTION_JOB_ID = "retention"
RETENTION_EVERY_S = 3600.0  # the cut-off moves by a day a day: hourly is prompt enough
RETENTION_FIRST_S = 60.0  # the first pass, a minute after startup


class RunnerClosedError(Exception):
    """The service is shutting down and starts no new pass."""


class RollupRunner:
    """Runs reconcile/rebuild passes one at a time and keeps the last report."""

    def __init__(
        self,
        config: Config,
        on_repaired: Callable[[int], None] | None = None,
        on_erased: Callable[[int], None] | None = None,
        on_expired: Callable[[int], None] | None = None,
    ):
        self.config = config
        self.store: Storage | None = None  # attached when the storage opens
        # For metrics: days repaired by each pass (not a dry run), events erased, events
        # deleted by retention.
        self.on_repaired = on_repaired
        self.on_erased = on_erased
        self.on_expired = on_expired
        self.last_report: dict[str, Any] | None = None
        self.last_error: dict[str, str] | None = None
        self.scheduled_runs = 0
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._current: asyncio.Future[Report] | None = None
        self._scheduler: AsyncIOScheduler | None = None

    @property
    def interval_minutes(self) -> float:
        minutes = self.config.reconcile_minutes
        return minutes if math.isfinite(minutes) and minutes > 0 else 0.0

    @property
    def running(self) -> bool:
        return self._current is not None and not self._current.done()

    async def run(
        self,
        kind: str,
        *,
        start: date | None = None,
        end: date | None = None,
        dry_run: bool = False,
        trigger: str = "http",
    ) -> Report:
        """One reconcile or rebuild pass; waits for any pass already running."""

        def work(store: Storage) -> Awaitable[Report]:
            return recount.run(
                store,
                kind,
                start=start,
                end=end,
                dry_run=dry_run,
                trigger=trigger,
                stop=self._stop,
                # A scheduled pass is not needed while another instance runs one.
                wait=trigger != "schedule",
            )

        report = await self._exclusive(kind, work)
        self.last_report = report.to_dict()
        if self.on_repaired is not None and not dry_run:
            self.on_repaired(len(report.days_changed))
        return report

    async def erase(self, user_id: str) -> Erasure:
        """Erase every event of ``user_id`` (``rollup.erasure``); waits for any pass
        already running. The status keeps only a redacted report (no user id)."""
        result = await self._exclusive("erasure", lambda store: erasure.erase(store, user_id))
        self.last_report = result.redacted()
        if self.on_erased is not None:
            self.on_erased(result.events_deleted)
        return result

    async def expire(self, before: date, *, trigger: str = "http") -> RetentionReport:
        """One retention pass (``rollup.retention``); waits for any pass already running."""

        def work(store: Storage) -> Awaitable[RetentionReport]:
            return retention.expire(
                store, before, trigger=trigger, stop=self._stop, wait=trigger != "schedule"
            )

        report = await self._exclusive("retention", work)
        self.last_report = report.to_dict()
        if self.on_expired is not None:
            self.on_expired(report.events_deleted)
        return report

    async def _exclusive(self, kind: str, work: Callable[[Storage], Awaitable[T]]) -> T:
        """Run ``work(store)`` once no other pass runs; failures go into the status."""
        async with self._lock:
            if self._stop.is_set() or self.store is None:
                raise RunnerClosedError()
            current = self._current = asyncio.ensure_future(work(self.store))
            try:
                # Shielded: if the caller is cancelled, the pass still finishes its day
                # and close() waits for it.
                return await asyncio.shield(current)
            except PassBusyError:  # a scheduled pass another instance is running
                raise
            except Exception:
                self.last_error = {
                    "at": format_ts(now()),
                    "kind": kind,
                    "detail": "the pass failed; the cause is in the server log",
                }
                raise

    async def reconcile_job(self) -> None:
        """The scheduled job: never raises (a failure is logged and shown in status)."""
        self.scheduled_runs += 1
        await _scheduled("rollup reconcile", self.run("reconcile", trigger="schedule"))

    async def retention_job(self) -> None:
        """The scheduled retention pass: never raises (a failure is logged and shown)."""
        cutoff = retention.cutoff(self.config.retention_days)
        await _scheduled("retention pass", self.expire(cutoff, trigger="schedule"))

    def next_run_at(self, job_id: str = JOB_ID) -> str | None:
        if self._scheduler is None or not self._scheduler.running:
            return None
        job = self._scheduler.get_job(job_id)
        when: datetime | None = job.next_run_time if job is not None else None
        return format_ts(when) if when is not None else None

    async def status(self) -> dict[str, Any]:
        """The status page: schedules, the last report and failure, and the horizon."""
        horizon = await self.store.horizon() if self.store is not None else None
        return {
            "reconcile_minutes": self.interval_minutes,
            "next_run_at": self.next_run_at(),
            "running": self.running,
            "last_report": self.last_report,
            "last_error": self.last_error,
            "retention_days": self.config.retention_days,
            "next_retention_at": self.next_run_at(RETENTION_JOB_ID),
            "horizon": horizon,
        }

    def start_scheduler(self) -> None:
        minutes = self.interval_minutes
        days = self.config.retention_days
        if not minutes:
            log.info("scheduled rollup reconciliation is disabled (reconcile_minutes=0)")
        if not days:
            log.info("retention is off (retention_days=0): raw events are kept")
        if not minutes and not days:
            return
        scheduler = AsyncIOScheduler(timezone=UTC)
        if minutes:
            scheduler.add_job(
                self.reconcile_job,
                IntervalTrigger(seconds=minutes * 60, timezone=UTC),
                id=JOB_ID,
                name="rollup reconcile",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
            log.info("rollup reconciliation every %g minutes", minutes)
        if days:
            scheduler.add_job(
                self.retention_job,
                IntervalTrigger(seconds=RETENTION_EVERY_S, timezone=UTC),
                id=RETENTION_JOB_ID,
                name="retention",
                next_run_time=now() + timedelta(seconds=RETENTION_FIRST_S),
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
            log.info("retention: raw events older than %d days are deleted, hourly", days)
        scheduler.start()
        self._scheduler = scheduler

    def stop(self) -> None:
        """Start no new pass, scheduled or requested; a running pass ends after its current
        day. Called when the service starts draining; ``close()`` waits for that day."""
        self._stop.set()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)  # takes effect on the next loop turn

    async def close(self) -> None:
        """Stop the scheduler, then let a running pass finish its current day."""
        self.stop()
        await asyncio.sleep(0)  # AsyncIOScheduler shuts down on the next loop turn
        self._scheduler = None
        current = self._current
        if current is not None and not current.done():
            await asyncio.wait([current])
        if current is not None and current.done() and not current.cancelled():
            current.exception()  # retrieved, so asyncio does not warn about it


async def _scheduled(name: str, job: Awaitable[object]) -> None:
    """Run a scheduled pass; never raise (a failure is logged, and shown in status)."""
    try:
        await job
    except RunnerClosedError:
        pass
    except PassBusyError:
        log.info("scheduled %s skipped: another instance is running a pass", name)
    except asyncio.CancelledError:
        # The scheduler was shut down (the service is draining) while this pass ran:
        # the pass itself is shielded, ends after its current step, and close() waits.
        log.info("scheduled %s: the scheduler stopped during the pass", name)
    except Exception:
        log.exception("scheduled %s failed", name)
