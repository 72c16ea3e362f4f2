"""Rollup lifecycle inside the service: one runner for reconcile/rebuild passes, and the
APScheduler job that reconciles on an interval.

A pass runs as a task over the store's maintenance calls (``rollup.recount``), each day one
short transaction on a connection of its own, so the event loop keeps serving while it
works and the ingest writer's commits interleave with it. Passes never overlap: a second request
waits for the first. On shutdown the scheduler stops, and a running pass ends after the
day it is on (each day is its own transaction, so stopping between days loses nothing).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from app.config import Config
from rollup import recount
from rollup.recount import Report
from schema.storage import Storage
from schema.timestamps import UTC, format_ts, now

log = logging.getLogger(__name__)

JOB_ID = "rollup-reconcile"


class RunnerClosedError(Exception):
    """The service is shutting down and starts no new pass."""


class RollupRunner:
    """Runs reconcile/rebuild passes one at a time and keeps the last report."""

    def __init__(self, config: Config, on_repaired: Callable[[int], None] | None = None):
        self.config = config
        self.store: Storage | None = None  # attached when the storage opens
        self.on_repaired = on_repaired  # days repaired by each pass (not a dry run), for metrics
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
        """One pass; waits for any pass already running."""
        async with self._lock:
            if self._stop.is_set() or self.store is None:
                raise RunnerClosedError()
            self._current = asyncio.ensure_future(
                recount.run(
                    self.store,
                    kind,
                    start=start,
                    end=end,
                    dry_run=dry_run,
                    trigger=trigger,
                    stop=self._stop,
                )
            )
            try:
                # Shielded: if the caller is cancelled, the pass still finishes its day
                # and close() waits for it.
                report = await asyncio.shield(self._current)
            except Exception:
                self.last_error = {
                    "at": format_ts(now()),
                    "kind": kind,
                    "detail": "the pass failed; the cause is in the server log",
                }
                raise
            self.last_report = report.to_dict()
            if self.on_repaired is not None and not dry_run:
                self.on_repaired(len(report.days_changed))
            return report

    async def reconcile_job(self) -> None:
        """The scheduled job: never raises (a failure is logged and shown in status)."""
        self.scheduled_runs += 1
        try:
            await self.run("reconcile", trigger="schedule")
        except RunnerClosedError:
            pass
        except Exception:
            log.exception("scheduled rollup reconcile failed")

    def next_run_at(self) -> str | None:
        if self._scheduler is None or not self._scheduler.running:
            return None
        job = self._scheduler.get_job(JOB_ID)
        when: datetime | None = job.next_run_time if job is not None else None
        return format_ts(when) if when is not None else None

    def status(self) -> dict[str, Any]:
        return {
            "reconcile_minutes": self.interval_minutes,
            "next_run_at": self.next_run_at(),
            "running": self.running,
            "last_report": self.last_report,
            "last_error": self.last_error,
        }

    def start_scheduler(self) -> None:
        minutes = self.interval_minutes
        if not minutes:
            log.info("scheduled rollup reconciliation is disabled (reconcile_minutes=0)")
            return
        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_job(
            self.reconcile_job,
            IntervalTrigger(seconds=minutes * 60, timezone=UTC),
            id=JOB_ID,
            name="rollup reconcile",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        scheduler.start()
        self._scheduler = scheduler
        log.info("rollup reconciliation every %g minutes", minutes)

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
