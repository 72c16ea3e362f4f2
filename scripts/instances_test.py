#!/usr/bin/env python3
"""Several instances of the service on one database, one of them killed under load.

Starts ``--instances`` processes of ``python -m app serve`` on one database (a
``postgresql://`` URL; a SQLite file works too), drives concurrent POSTs (single events and
batches) at every one of them, ``kill -9``s one at a random moment while the others go on,
restarts it, and checks:

* every acknowledged (202) event is in the log, none twice (lost == 0);
* both rollups (daily, 15-minute, summed over their slots) equal ``GROUP BY`` on the log,
  and ``python -m app reconcile --dry-run`` finds no day to repair;
* every instance, the restarted one included, gives the same answers, equal to
  ``COUNT(*)`` on the log.

    .venv/bin/python scripts/instances_test.py --db postgresql://localhost/analytics \\
        --instances 3 --duration 3 --seed 1

Everything runs on 127.0.0.1 and every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.crash_test import PYTHON, ROOT, Load, Service, drive

LOG_SQL = "SELECT event_id, user_id, event_type, timestamp FROM events"
DAILY_SQL = "SELECT day, event_type, SUM(count) FROM daily_event_counts GROUP BY 1, 2"
QUARTERS_SQL = "SELECT bucket, event_type, SUM(count) FROM quarter_hour_event_counts GROUP BY 1, 2"


@dataclass
class Contents:
    """The log and the rollups as read straight from the database."""

    event_ids: list[str]
    user_ids: set[str]
    log_daily: dict[tuple[str, str], int]
    log_quarters: dict[tuple[int, str], int]
    daily: dict[tuple[str, str], int]
    quarters: dict[tuple[int, str], int]
    slots: int = 1  # rollup slots in use (PostgreSQL: one per writer connection)


def read_database(db: str) -> Contents:
    if "://" in db:
        return asyncio.run(_read_postgres(db))
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT event_id, user_id, event_type, timestamp FROM events"
        ).fetchall()
        daily = {(d, t): n for d, t, n in conn.execute(DAILY_SQL)}
        quarters = {(b, t): n for b, t, n in conn.execute(QUARTERS_SQL)}
    finally:
        conn.close()
    stamped = [(i, u, t, datetime.fromisoformat(ts.replace("Z", "+00:00"))) for i, u, t, ts in rows]
    return _contents(stamped, daily, quarters)


async def _read_postgres(url: str) -> Contents:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(LOG_SQL)
        daily = {(d.isoformat(), t): int(n) for d, t, n in await conn.fetch(DAILY_SQL)}
        quarters = {(b, t): int(n) for b, t, n in await conn.fetch(QUARTERS_SQL)}
        slots = await conn.fetchval("SELECT COUNT(DISTINCT slot) FROM daily_event_counts")
    finally:
        await conn.close()
    contents = _contents([(str(i), u, t, ts) for i, u, t, ts in rows], daily, quarters)
    contents.slots = slots
    return contents


def _contents(
    rows: list[tuple[str, str, str, datetime]],
    daily: dict[tuple[str, str], int],
    quarters: dict[tuple[int, str], int],
) -> Contents:
    log_daily: dict[tuple[str, str], int] = {}
    log_quarters: dict[tuple[int, str], int] = {}
    for _, _, kind, moment in rows:
        day = moment.astimezone(UTC).date().isoformat()
        log_daily[(day, kind)] = log_daily.get((day, kind), 0) + 1
        bucket = math.floor(moment.timestamp()) // 900 * 900
        log_quarters[(bucket, kind)] = log_quarters.get((bucket, kind), 0) + 1
    return Contents(
        [i for i, _, _, _ in rows],
        {u for _, u, _, _ in rows},
        log_daily,
        log_quarters,
        daily,
        quarters,
    )


async def answers(url: str) -> dict[str, object]:
    """What one instance answers to a few analytics questions about today and yesterday."""
    today = datetime.now(UTC).date()
    window = {"start_date": (today - timedelta(days=1)).isoformat(), "end_date": today.isoformat()}
    async with aiohttp.ClientSession() as session:
        result: dict[str, object] = {}
        for path in ("event-counts", "event-counts-by-type", "event-counts-by-day"):
            async with session.get(f"{url}/analytics/{path}", params=window) as response:
                assert response.status == 200, await response.text()
                result[path] = await response.json()
    return result


def reconcile_dry_run(db: str) -> list[object]:
    result = subprocess.run(
        [PYTHON, "-m", "app", "reconcile", "--db", db, "--dry-run", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)["days_changed"]


@dataclass
class Outcome:
    instances: int
    acknowledged: int
    in_log: int
    lost: int
    stored_unanswered: int  # events of requests cut off by the kill that made it anyway
    statuses: dict[int, int] = field(default_factory=dict)
    killed_after_s: float = 0.0
    answers_per_instance: int = 0
    rollup_slots: int = 1


def run(
    db: str, workdir: Path, *, instances: int = 3, duration: float = 3.0, seed: int | None = None
) -> Outcome:
    """One round: load on every instance, SIGKILL one mid-load, restart it, check."""
    rng = random.Random(seed)
    services = [Service(db, log_path=workdir / f"instance-{i}.log") for i in range(instances)]
    for service in services:
        service.start()
    victim = rng.randrange(instances)
    kill_after = rng.uniform(0.3 * duration, 0.7 * duration)
    try:

        async def load() -> list[Load]:
            runs = [
                asyncio.ensure_future(
                    drive(
                        s.url,
                        tag=f"i{i}",
                        seconds=duration,
                        workers=8,
                        seed=rng.randrange(10**9),
                        until_refused=i == victim,
                    )
                )
                for i, s in enumerate(services)
            ]
            await asyncio.sleep(kill_after)
            services[victim].kill()  # SIGKILL: whatever it had in flight is cut off
            return await asyncio.gather(*runs)

        loads = asyncio.run(load())
        services[victim] = Service(db, log_path=workdir / f"instance-{victim}-restarted.log")
        services[victim].start()  # the restart, on the same database

        contents = read_database(db)
        acknowledged = set().union(*(load.acknowledged for load in loads))
        assert len(contents.event_ids) == len(set(contents.event_ids)), "an event is stored twice"
        lost = acknowledged - set(contents.event_ids)
        assert not lost, f"{len(lost)} acknowledged events are not in the log"
        assert contents.daily == contents.log_daily, "the daily rollup differs from the log"
        assert contents.quarters == contents.log_quarters, "the 15-minute rollup differs"
        seen = [asyncio.run(answers(s.url)) for s in services]
        assert all(a == seen[0] for a in seen), f"instances disagree: {seen}"
        total = seen[0]["event-counts"]["total_events"]  # type: ignore[index]
        assert total == len(contents.event_ids), (total, len(contents.event_ids))
    finally:
        for service in services:
            if service.proc is not None and service.proc.poll() is None:
                service.terminate()
    days = reconcile_dry_run(db)
    assert not days, f"reconcile found differences: {days}"
    statuses: dict[int, int] = {}
    for load in loads:
        for status, n in load.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    unanswered = set().union(*(load.unanswered_users for load in loads))
    return Outcome(
        instances=instances,
        acknowledged=len(acknowledged),
        in_log=len(contents.event_ids),
        lost=len(lost),
        stored_unanswered=len(unanswered & contents.user_ids),
        statuses=statuses,
        killed_after_s=round(kill_after, 3),
        answers_per_instance=len(seen[0]),
        rollup_slots=contents.slots,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="a postgresql:// URL (or a SQLite file)")
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of load")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        outcome = run(
            args.db, Path(workdir), instances=args.instances, duration=args.duration, seed=args.seed
        )
    print(outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main())
