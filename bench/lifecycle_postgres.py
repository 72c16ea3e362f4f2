"""The data lifecycle on PostgreSQL (issue 12): ``bench/lifecycle.py``'s erasure, export and
retention figures, measured on a throwaway cluster.

    python bench/lifecycle_postgres.py                        # max(BENCH_SIZES): 1M by default
    BENCH_SIZES=10000000 python bench/lifecycle_postgres.py   # the 10M run of the README
    python bench/lifecycle_postgres.py export erasure         # some sections (load always runs)
    BENCH_PG_URL=postgresql://… python bench/lifecycle_postgres.py   # an existing database

``make bench`` runs it (bounded by ``timeout``; BENCH_ONLY without ``lifecycle_postgres``
skips it). Results: ``bench/results/lifecycle_postgres.json``.

- cluster: ``tests/postgres_cluster.py`` on a free port of 127.0.0.1, ``fsync`` and
  ``synchronous_commit`` on (the service's default ``--synchronous FULL``), shared_buffers
  1 GB; stopped and deleted at the end (also on SIGTERM/SIGINT). ``BENCH_PG_URL`` uses a
  database of yours instead (loaded when empty; erasure and retention change it).
- load: ``generate_events.py --db <url>`` (``Storage.append`` in 25,000-event transactions,
  the same seed and year as ``bench/run.py``'s SQLite databases), then ``VACUUM ANALYZE``
  (what autovacuum would have done to a log this old).
- export: ``GET /admin/export`` of the whole log, NDJSON and CSV alternating, from a served
  process; the client reads in this process. Events/s and the growth of the service's
  VmRSS (sampled every 20 ms). Targets: >= 100,000 events/s, <= 60 MB.
- erasure: three users of 10,000 events each, spread over the whole log (the busiest real
  users' events renamed, with the append-only trigger off for that one session), each
  erased with ``rollup.erasure.erase``. Targets: <= 1 s, no transaction > 100 ms.
- retention: ``python -m app retention --before 2025-07-02 --json`` (half a year: six
  month partitions dropped, then the rows of 1 July). Target: seconds, no transaction
  > 100 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import asyncpg
import harness as h
from lifecycle import HEAVY, TOKEN, measure_exports
from run import generate

from rollup import erasure
from schema.backends import open_storage
from tests.postgres_cluster import postgres_cluster

SECTION = "lifecycle_postgres"
RETENTION_BEFORE = "2025-07-02"
CLUSTER_SETTINGS = {
    "shared_buffers": "1GB",  # a quarter of a small server's memory
    "max_wal_size": "8GB",  # the load's checkpoints by time, not by WAL volume
    "checkpoint_timeout": "15min",
}


def _sql(url: str, query: str, *args: Any) -> Any:
    """One value of ``query`` (a fresh connection: this script is synchronous)."""

    async def run() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def _counts(url: str) -> dict[str, int]:
    """The log's events and both rollups' sums (equal when exact)."""
    return {
        "events": _sql(url, "SELECT COUNT(*) FROM events"),
        "daily": _sql(url, "SELECT COALESCE(SUM(count), 0) FROM daily_event_counts"),
        "quarters": _sql(url, "SELECT COALESCE(SUM(count), 0) FROM quarter_hour_event_counts"),
    }


# --- load -------------------------------------------------------------------------------


def load(url: str, count: int) -> dict[str, Any]:
    have = _sql(url, "SELECT COUNT(*) FROM events") if _has_schema(url) else 0
    if have:
        h.say(f"  {have:,} events already there: not loading")
        return {"events": have, "loaded": False}
    generated = generate(url, count)
    seconds = generated["seconds"]
    h.say(f"  generated {count:,} events in {seconds:.0f} s ({count / seconds:,.0f}/s)")
    began = time.perf_counter()
    _sql(url, "VACUUM ANALYZE")
    vacuum = time.perf_counter() - began
    size = _sql(url, "SELECT pg_database_size(current_database())")
    h.say(f"  VACUUM ANALYZE in {vacuum:.0f} s; database {size / 2**30:.2f} GiB")
    return {
        "events": count,
        "loaded": True,
        "command": generated["command"].replace(url, "<url>"),
        "generate_seconds": round(seconds, 1),
        "events_per_s": round(count / seconds),
        "vacuum_analyze_seconds": round(vacuum, 1),
        "database_bytes": size,
    }


def _has_schema(url: str) -> bool:
    return bool(_sql(url, "SELECT to_regclass('events') IS NOT NULL"))


# --- export -----------------------------------------------------------------------------


EXPORT_EVENTS = 1_000_000  # issue 12's export target is about this many
# The first UTC day by which the log holds EXPORT_EVENTS events (None: it holds fewer).
EXPORT_LAST_DAY_SQL = """
SELECT day::text FROM (
    SELECT day, SUM(SUM(count)) OVER (ORDER BY day) AS upto FROM daily_event_counts GROUP BY day
) AS d WHERE upto >= $1 ORDER BY day LIMIT 1
"""


def _export_range(url: str) -> tuple[str, int]:
    """The export's query (the log's first days holding about a million events, or the
    whole log when it is smaller) and the number of events it holds."""
    last = _sql(url, EXPORT_LAST_DAY_SQL, EXPORT_EVENTS)
    if last is None:
        return "", _sql(url, "SELECT COUNT(*) FROM events")
    first = _sql(url, "SELECT MIN(day)::text FROM daily_event_counts")
    held = _sql(
        url,
        "SELECT COUNT(*) FROM events WHERE timestamp >= $1::date AND timestamp < $2::date + 1",
        date.fromisoformat(first),
        date.fromisoformat(last),
    )
    return f"&start_date={first}&end_date={last}", held


def bench_export(url: str, s: h.Settings) -> dict[str, Any]:
    query, events = _export_range(url)
    h.say(f"  exporting {events:,} events ({query or 'the whole log'})")
    with h.service("export-postgres", url, extra=["--admin-token", TOKEN]) as server:  # type: ignore[arg-type]
        runs, summary = measure_exports(server, events, s.repeats, query)
        peak = server.rss()
    return {
        "events": events,
        "log_events": _sql(url, "SELECT COUNT(*) FROM events"),
        "command": f"GET /admin/export?format=ndjson|csv{query} (client in another process)",
        "summary": summary,
        "server_peak_rss_mib": peak,
        "runs": runs,
    }


# --- erasure ----------------------------------------------------------------------------

BUSIEST_SQL = "SELECT user_id FROM events GROUP BY 1 ORDER BY COUNT(*) DESC LIMIT 500"
RENAME_SQL = """
UPDATE events SET user_id = $1 WHERE seq IN
    (SELECT seq FROM events WHERE user_id = $2 ORDER BY seq LIMIT $3)
"""


async def _make_heavy_users(url: str, names: list[str]) -> list[int]:
    """On a bench database only: give each name ``HEAVY`` real events of the busiest
    users, so they lie scattered over the whole log as a real heavy user's do. The
    append-only trigger is skipped for this session (``session_replication_role``)."""
    conn = await asyncpg.connect(url)
    try:
        busiest = [u for (u,) in await conn.fetch(BUSIEST_SQL)]
        await conn.execute("SET session_replication_role = replica")
        counts, taken = [], 0
        for name in names:
            have = 0
            while have < HEAVY:
                user = busiest[taken]
                taken += 1
                n = await conn.fetchval("SELECT COUNT(*) FROM events WHERE user_id = $1", user)
                limit = min(n, HEAVY - have)
                await conn.execute(RENAME_SQL, name, user, limit)
                have += limit
            counts.append(have)
        await conn.execute("VACUUM ANALYZE events")  # as autovacuum would after the renames
    finally:
        await conn.close()
    return counts


def _record_steps(store: Any, steps: list[tuple[int, int, float]]) -> None:
    """Note each erasure step's ``(limit, deleted, held_ms)`` (a wrapper on this one store
    instance: where a long transaction happened, and at what size)."""
    erase_step = store.erase_step

    async def recorded(*args: Any, **kwargs: Any) -> Any:
        step = await erase_step(*args, **kwargs)
        steps.append((kwargs["limit"], step.deleted, round(step.held_ms, 1)))
        return step

    store.erase_step = recorded


async def _erase_all(url: str, names: list[str]) -> list[dict[str, Any]]:
    store = open_storage(url)
    await store.open()
    out = []
    try:
        for name in names:
            steps: list[tuple[int, int, float]] = []
            _record_steps(store, steps)
            result = await erasure.erase(store, name)
            del store.erase_step  # the class's method again
            out.append(
                {
                    "events": result.events_deleted,
                    "seconds": round(result.ms / 1000, 3),
                    "transactions": result.transactions,
                    "longest_transaction_ms": round(result.longest_transaction_ms, 2),
                    "median_transaction_ms": result.median_transaction_ms,
                    "p99_transaction_ms": result.p99_transaction_ms,
                    "steps_limit_deleted_ms": steps,
                }
            )
            h.say(f"    steps (limit, deleted, ms): {steps}")
            h.say(
                f"  erase {result.events_deleted:,} events: {result.ms / 1000:.3f} s, "
                f"{result.transactions} transactions, longest "
                f"{result.longest_transaction_ms:.1f} ms, median "
                f"{result.median_transaction_ms:.1f} ms, p99 {result.p99_transaction_ms:.1f} ms"
            )
    finally:
        await store.close()
    return out


def bench_erasure(url: str, s: h.Settings) -> dict[str, Any]:
    names = [f"bench-heavy-{i}" for i in range(1, 4)]
    began = time.perf_counter()
    counts = asyncio.run(_make_heavy_users(url, names))
    h.say(f"  users {names}: {counts} events each, spread over the log "
          f"({time.perf_counter() - began:.0f} s)")  # fmt: skip
    before = _sql(url, "SELECT COUNT(*) FROM events")
    runs = asyncio.run(_erase_all(url, names))
    after = _counts(url)
    return {
        "log_events": before,
        "command": "rollup.erasure.erase(store, user) per user, as python -m app erase",
        "runs": runs,
        "seconds_max": max(r["seconds"] for r in runs),
        "longest_transaction_ms": max(r["longest_transaction_ms"] for r in runs),
        "rollups_equal_log": after["events"] == after["daily"] == after["quarters"],
    }


# --- retention --------------------------------------------------------------------------


def _copy_database(url: str, name: str) -> str:
    """A copy of ``url``'s database on the same cluster (``STRATEGY FILE_COPY``: ~10 s for
    10M events); ``url`` must have no connection open."""
    source = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    _sql(admin, f"DROP DATABASE IF EXISTS {name}")
    began = time.perf_counter()
    _sql(admin, f"CREATE DATABASE {name} TEMPLATE {source} STRATEGY FILE_COPY")
    h.say(f"  copied {source} -> {name} in {time.perf_counter() - began:.0f} s")
    return admin.rsplit("/", 1)[0] + f"/{name}"


def bench_retention(url: str, s: h.Settings) -> dict[str, Any]:
    """On copies of the database (two runs) when this script owns the cluster, on the
    database itself (one run) with ``BENCH_PG_URL``."""
    own = not os.environ.get("BENCH_PG_URL")
    runs = []
    for repeat in range(max(1, min(s.repeats, 2)) if own else 1):
        target = _copy_database(url, "lifecycle_retention") if own else url
        runs.append(_one_retention(target, repeat))
        if own:
            _sql(url.rsplit("/", 1)[0] + "/postgres", "DROP DATABASE lifecycle_retention")
    return {
        "command": f"python -m app retention --db <url> --before {RETENTION_BEFORE} --json",
        "runs": runs,
    }


def _one_retention(url: str, repeat: int) -> dict[str, Any]:
    before = _counts(url)
    argv = [h.PY, "-m", "app", "retention", "--db", url, "--before", RETENTION_BEFORE, "--json"]
    began = time.perf_counter()
    out = subprocess.run(argv, cwd=h.ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    if out.returncode != 0:
        raise RuntimeError(f"retention failed:\n{out.stdout}\n{out.stderr}")
    report = json.loads(out.stdout)
    after = _counts(url)
    run = {
        "events_before": before["events"],
        "events_deleted": report["events_deleted"],
        "events_left": after["events"],
        "wall_seconds": round(wall, 2),
        "pass_seconds": round(report["ms"] / 1000, 2),
        "transactions": report["transactions"],
        "longest_transaction_ms": report["longest_transaction_ms"],
        "median_transaction_ms": report["median_transaction_ms"],
        "p99_transaction_ms": report["p99_transaction_ms"],
        "rollups_kept": after["daily"] == before["daily"]
        and after["quarters"] == before["quarters"],
        "report": report,
    }
    h.say(
        f"  retention #{repeat + 1}: {run['events_deleted']:,} of {before['events']:,} events "
        f"in {run['pass_seconds']:.2f} s ({run['transactions']} transactions, longest "
        f"{run['longest_transaction_ms']:.1f} ms, median {run['median_transaction_ms']} ms, "
        f"p99 {run['p99_transaction_ms']} ms), rollups kept: {run['rollups_kept']}"
    )
    return run


# --- the run ----------------------------------------------------------------------------

SECTIONS = {"export": bench_export, "erasure": bench_erasure, "retention": bench_retention}


@contextlib.contextmanager
def _database() -> Iterator[tuple[str, dict[str, Any]]]:
    """``BENCH_PG_URL``, or a throwaway cluster's database (stopped and deleted after)."""
    if os.environ.get("BENCH_PG_URL"):
        yield os.environ["BENCH_PG_URL"], {"cluster": "BENCH_PG_URL"}
        return
    with postgres_cluster(dbname="lifecycle", settings=CLUSTER_SETTINGS) as pg:
        version = pg.psql("SHOW server_version").strip()
        h.say(f"  PostgreSQL {version} on 127.0.0.1:{pg.port} ({pg.base}), {CLUSTER_SETTINGS}")
        yield pg.url, {"postgres": version, "settings": CLUSTER_SETTINGS, "fsync": True}


def _stop_on_sigterm() -> None:
    """``timeout`` sends SIGTERM: unwind, so the cluster is stopped and deleted."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str]) -> int:
    only = os.environ.get("BENCH_ONLY")
    if only and SECTION not in h.env_list("BENCH_ONLY", ""):
        return 0  # make bench with BENCH_ONLY naming other sections
    _stop_on_sigterm()
    s = h.Settings()
    count = max(s.sizes)
    names = argv or list(SECTIONS)
    h.WORK.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"events": count, "sections": {}}
    began = time.perf_counter()
    with _database() as (url, facts):
        data["cluster"] = facts
        h.say(f"== {SECTION}: load {count:,} events")
        data["load"] = load(url, count)
        for name in names:
            h.say(f"== {SECTION}: {name}")
            started = time.perf_counter()
            data["sections"][name] = SECTIONS[name](url, s)
            data["sections"][name]["section_seconds"] = round(time.perf_counter() - started, 1)
    data["seconds"] = round(time.perf_counter() - began, 1)
    path = h.save(SECTION, data, s)
    h.say(f"  wrote {path.relative_to(h.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
