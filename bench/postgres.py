"""PostgreSQL against SQLite, in the same run (issue 14); ``bench/results/postgres.json``.

    make bench                                  # runs this after bench/run.py
    BENCH_ONLY=postgres make bench              # this section alone
    .venv/bin/python bench/postgres.py          # the same, without make

A throwaway PostgreSQL cluster (``tests/postgres_cluster.py``: Debian's binaries, initdb in
a temp dir on the same disk as ``bench/work``, a free port of 127.0.0.1, ``fsync`` and
``synchronous_commit`` on, every other setting PostgreSQL's default) serves every
PostgreSQL run; the service runs with its defaults (``--synchronous FULL``: a 202 only
after the commit is flushed, on both backends).

- **ingest**: in each repeat (order alternating), three configurations on a fresh database:
  ``sqlite`` (one service on a file), ``postgres`` (one service) and ``postgres, 2
  instances`` (two services on one database, each driven by its own wrk with half the
  connections). Each gets single-event ``POST /events`` (64 connections; warmup, then the
  measured run) and ``POST /events/batch`` of 100 and 1000 events (8 connections). The
  ratios to SQLite are taken within a repeat; medians of the repeats. After each
  configuration the database is checked: stored ≥ acknowledged, the surplus at most what
  was in flight, and both rollups (summed over their slots) equal to the log. The CPU
  seconds of the service processes (event-loop thread, other threads) and of the
  PostgreSQL server's processes during each measured run, per event, show where it went.
- **queries**: the same 1M generated events (``generate_events.py``, the same seed as
  the SQLite query bench) in a SQLite file and in a PostgreSQL database, a service on
  each; every query over HTTP (wrk, 1 connection), ``ROUNDS`` passes alternating the
  order of queries and of backends; each p50/p99 is the median of the passes'. The two
  services' answers must be equal. The queries and targets are the SQLite query bench's
  (issues 6 and 11).

Settings (``bench/harness.py``): BENCH_DURATION, BENCH_WARMUP, BENCH_REPEATS,
BENCH_BATCH_SIZES, BENCH_BATCH_CONNECTIONS, BENCH_QUERY_SECONDS; BENCH_PG_CONNECTIONS
(single-event connections, default 64), BENCH_PG_EVENTS (query database size, default
1000000).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harness as h

from tests.postgres_cluster import PostgresCluster, postgres_cluster

KINDS = ("sqlite", "postgres", "postgres, 2 instances")
PING = "store.ping() (SELECT 1)"
# py-spy (bench/requirements.txt) sits beside the interpreter, not necessarily on PATH.
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
ROUNDS = 3  # passes over the queries; a p99 is the median of the passes' p99s
GEN_START, GEN_END, GEN_SEED = "2025-01-01", "2025-12-31", "1"  # as bench/run.py

KTM = "Asia/Kathmandu"
CUT_START, CUT_END = "2025-06-10T09:37:12.345678+02:00", "2025-06-16T17:52:48.5Z"
# (name, endpoint, parameters, p99 target in ms or None): the SQLite query bench's queries
# of issue 6 (UTC days) and issue 11 (local days and hours, bounds inside 15-minute buckets).
QUERIES: list[tuple[str, str, dict[str, str], float | None]] = [
    ("all time", "event-counts", {}, None),
    ("30 days", "event-counts", {"start_date": "2025-06-01", "end_date": "2025-06-30"}, 5.0),
    ("cut days (date-times)", "event-counts",
     {"start_date": "2025-06-10T09:30:00+02:00", "end_date": "2025-06-16T17:45:00Z"}, 25.0),
    ("by day, 30 days", "event-counts-by-day",
     {"start_date": "2025-06-01", "end_date": "2025-06-30"}, 5.0),
    ("30 local days, Kathmandu", "event-counts",
     {"start_date": "2025-06-01", "end_date": "2025-06-30", "tz": KTM}, 5.0),
    ("cut buckets (date-times)", "event-counts",
     {"start_date": CUT_START, "end_date": CUT_END}, 2.0),
    ("by type, cut buckets", "event-counts-by-type",
     {"start_date": CUT_START, "end_date": CUT_END}, 2.0),
    ("by day, 365 local days, Kathmandu", "event-counts-by-day",
     {"start_date": "2025-01-01", "end_date": "2025-12-31", "tz": KTM}, 25.0),
    ("hourly, 7 local days, Kathmandu", "timeseries",
     {"interval": "hour", "start_date": "2025-06-10", "end_date": "2025-06-16", "tz": KTM}, 25.0),
]  # fmt: skip


def path_of(endpoint: str, params: dict[str, str]) -> str:
    path = f"/analytics/{endpoint}"
    return path + ("?" + urllib.parse.urlencode(params) if params else "")


# --- the PostgreSQL server's side ------------------------------------------------------


def pg_cpu_seconds(pg: PostgresCluster) -> float:
    """User + system CPU seconds of the postmaster and its children so far (children that
    exited are lost, so take it around runs whose connections stay open)."""
    try:
        postmaster = int((pg.datadir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(entry) == postmaster or int(fields[1]) == postmaster:  # fields[1]: ppid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def pg_counts(pg: PostgresCluster, dbname: str) -> tuple[int, int, int]:
    """``(events, SUM of the daily rollup, SUM of the 15-minute rollup)``."""
    out = pg.psql(
        "SELECT (SELECT COUNT(*) FROM events), "
        "(SELECT COALESCE(SUM(count), 0) FROM daily_event_counts), "
        "(SELECT COALESCE(SUM(count), 0) FROM quarter_hour_event_counts)",
        dbname=dbname,
    )
    events, daily, quarters = (int(x) for x in out.strip().split("|"))
    return events, daily, quarters


def sqlite_counts(db: Path) -> tuple[int, int, int]:
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT (SELECT COUNT(*) FROM events), "
            "(SELECT COALESCE(SUM(count), 0) FROM daily_event_counts), "
            "(SELECT COALESCE(SUM(count), 0) FROM quarter_hour_event_counts)"
        ).fetchone()
    finally:
        conn.close()


def pg_version(pg: PostgresCluster) -> str:
    return pg.psql("SHOW server_version").strip()


def pg_settings(pg: PostgresCluster) -> dict[str, str]:
    names = ("fsync", "synchronous_commit", "wal_sync_method", "full_page_writes",
             "shared_buffers", "max_connections", "wal_level")  # fmt: skip
    return {n: pg.psql(f"SHOW {n}").strip() for n in names}


# --- ingest ------------------------------------------------------------------------------


class Fleet:
    """One or two services on one database; wrk drives each with its share of the
    connections, at the same time."""

    def __init__(self, servers: list[h.Server], pg: PostgresCluster | None):
        self.servers = servers
        self.pg = pg

    def cpu(self) -> dict[str, float]:
        out = {"loop": 0.0, "other": 0.0, "postgres": 0.0}
        for server in self.servers:
            for part, seconds in server.cpu_seconds().items():
                out[part] += seconds
        if self.pg is not None:
            out["postgres"] = pg_cpu_seconds(self.pg)
        return out

    def wrk(self, path: str, script: str, *, connections: int, seconds: int,
            env: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
        n = len(self.servers)
        with ThreadPoolExecutor(n) as pool:
            runs = list(
                pool.map(
                    lambda server: h.wrk(
                        server.url + path,
                        script,
                        connections=connections // n,
                        threads=2 // n or 1,
                        seconds=seconds,
                        env=env,
                    ),
                    self.servers,
                )
            )
        total = {
            "requests": sum(r["requests"] for r in runs),
            "ok": sum(r["ok"] for r in runs),
            "rps": sum(r["rps"] for r in runs),
            "non_2xx": sum(r["non_2xx"] for r in runs),
            "socket_errors": sum(r["socket_errors"] for r in runs),
            "timeouts": sum(r["timeouts"] for r in runs),
            # several wrk: the median of their p50s, the worst of their p99s
            "p50_ms": h.median([r["p50_ms"] for r in runs]),
            "p99_ms": max(r["p99_ms"] for r in runs),
            "connections": connections,
        }
        if n > 1:
            total["per_instance_rps"] = [round(r["rps"]) for r in runs]
        return total


def start_fleet(kind: str, pg: PostgresCluster, number: int, stack: ExitStack) -> tuple[Fleet, Any]:
    """The servers of ``kind`` on a fresh database; returns the fleet and a counter of
    the database's ``(events, daily sum, quarter sum)``."""
    slug = f"pg-ingest-{number}"
    if kind == "sqlite":
        db = h.WORK / f"{slug}.db"
        h.remove_db(db)
        stack.callback(h.remove_db, db)
        server = stack.enter_context(h.service(f"{slug}-sqlite", db))
        return Fleet([server], None), lambda: sqlite_counts(db)
    dbname = f"ingest_{number}"
    url = pg.create_database(dbname)
    servers = []
    # One after the other: the first migrates, the second finds the schema in place.
    for i in range(2 if "2 instances" in kind else 1):
        servers.append(stack.enter_context(h.service(f"{slug}-pg{i}", url)))  # type: ignore[arg-type]
    return Fleet(servers, pg), lambda: pg_counts(pg, dbname)


def bench_ingest(s: h.Settings, pg: PostgresCluster) -> dict[str, Any]:
    conns = h.env_int("BENCH_PG_CONNECTIONS", 64)
    runs: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    number = 0
    for repeat in range(s.repeats):
        for kind in KINDS if repeat % 2 == 0 else tuple(reversed(KINDS)):
            number += 1
            acknowledged = in_flight = 0
            with ExitStack() as stack:
                fleet, counts = start_fleet(kind, pg, number, stack)
                loads = [("single", "/events", "post_event.lua", conns, 1, None)] + [
                    ("batch", "/events/batch", "post_batch.lua", s.batch_connections, size,
                     {"BENCH_BATCH": str(size)})
                    for size in s.batch_sizes
                ]  # fmt: skip
                for load, path, script, c, size, env in loads:
                    warmup = s.warmup if load == "single" else min(s.warmup, 1)
                    for seconds, measured in ((warmup, False), (s.duration, True)):
                        if seconds <= 0:
                            continue
                        before = fleet.cpu()
                        w = fleet.wrk(path, script, connections=c, seconds=seconds, env=env)
                        after = fleet.cpu()
                        acknowledged += w["ok"] * size
                        in_flight += c * size
                        if not measured:
                            continue
                        events = max(w["ok"] * size, 1)
                        run = {
                            "kind": kind,
                            "repeat": repeat,
                            "load": load,
                            "events_per_request": size,
                            **w,
                            "events_per_s": w["rps"] * size,
                            "cpu_us_per_event": {
                                part: (after[part] - before[part]) / events * 1e6 for part in after
                            },
                        }
                        runs.append(run)
                        cpu = run["cpu_us_per_event"]
                        h.say(
                            f"  {kind:<22} {load:<6} x{size:<5} #{repeat + 1}: "
                            f"{run['events_per_s']:>8.0f} events/s p50 {w['p50_ms']:6.2f} ms "
                            f"p99 {w['p99_ms']:7.2f} ms non-2xx {w['non_2xx']} | CPU µs/event: "
                            f"loop {cpu['loop']:.0f} other {cpu['other']:.0f} "
                            f"postgres {cpu['postgres']:.0f}"
                        )
                for server in fleet.servers:
                    server.stop()
                    server.log_path.unlink(missing_ok=True)
                stored, daily, quarters = counts()
            check = {
                "kind": kind,
                "repeat": repeat,
                "acknowledged": acknowledged,
                "stored": stored,
                "daily_sum": daily,
                "quarter_sum": quarters,
                "ok": acknowledged <= stored <= acknowledged + in_flight
                and daily == stored == quarters,
            }
            checks.append(check)
            h.say(
                f"  check  {kind:<22} acknowledged {acknowledged} stored {stored} rollups "
                f"{daily}/{quarters}: {'0 lost' if check['ok'] else 'MISMATCH'}"
            )
    return {"connections": conns, "runs": runs, "checks": checks, "summary": summarise(runs)}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per (kind, load, size); ``vs_sqlite`` is the median of per-repeat ratios
    against SQLite's run of the same load in the same repeat."""
    out = []
    for load, size in dict.fromkeys((r["load"], r["events_per_request"]) for r in runs):
        for kind in KINDS:
            mine = [
                r
                for r in runs
                if r["kind"] == kind and r["load"] == load and r["events_per_request"] == size
            ]
            if not mine:
                continue
            bases = [
                b
                for b in runs
                if b["kind"] == "sqlite" and b["load"] == load and b["events_per_request"] == size
            ]
            ratios = h.ratios_within_repeats(mine, bases, "events_per_s")
            out.append(
                {
                    "kind": kind,
                    "load": load,
                    "events_per_request": size,
                    "connections": mine[0]["connections"],
                    "repeats": len(mine),
                    "events_per_s": h.median([r["events_per_s"] for r in mine]),
                    "events_per_s_all": [round(r["events_per_s"]) for r in mine],
                    "vs_sqlite": h.median(ratios),
                    "ratios": [round(x, 3) for x in ratios],
                    "p50_ms": h.median([r["p50_ms"] for r in mine]),
                    "p99_ms": h.median([r["p99_ms"] for r in mine]),
                    "non_2xx": sum(r["non_2xx"] for r in mine),
                    "socket_errors": sum(r["socket_errors"] for r in mine),
                    "cpu_us_per_event": {
                        part: h.median([r["cpu_us_per_event"][part] for r in mine])
                        for part in ("loop", "other", "postgres")
                    },
                }
            )
    return out


# --- queries ------------------------------------------------------------------------------


def generate(db: str, count: int) -> dict[str, Any]:
    argv = [h.PY, "generate_events.py", "--count", str(count), "--db", db, "--seed", GEN_SEED,
            "--start", GEN_START, "--end", GEN_END, "--no-progress"]  # fmt: skip
    began = time.perf_counter()
    out = subprocess.run(argv, cwd=h.ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"generate_events.py failed:\n{out.stdout}\n{out.stderr}")
    return {"count": count, "seconds": time.perf_counter() - began,
            "command": "python " + " ".join(argv[1:]).replace(str(h.ROOT) + "/", "")}  # fmt: skip


def sqlite_query_db(count: int) -> Path:
    """bench/run.py's cached database of ``count`` events (the same seed and days)."""
    db = h.WORK / f"events-{count}.db"
    if not (db.exists() and db.with_suffix(".json").exists()):
        h.say(f"  generating {count:,} events into {db.relative_to(h.ROOT)} (cached)")
        meta = generate(str(db), count)
        db.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return db


def time_in_process(
    dbs: dict[str, str], budget_s: float
) -> dict[tuple[str, str], list[list[float]]]:
    """Milliseconds per call of each query's handler in this process, on each backend's
    own store (no HTTP, no server): parsing, planning, the store's statement(s), the JSON
    answer. ``ROUNDS`` passes, the order of queries and backends alternating."""
    import asyncio
    import gc

    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from app.keys import STORE
    from query import handlers
    from schema.backends import open_storage

    route = {
        "event-counts": handlers.event_counts,
        "event-counts-by-type": handlers.event_counts_by_type,
        "event-counts-by-day": handlers.event_counts_by_day,
        "timeseries": handlers.timeseries,
    }

    async def run() -> dict[tuple[str, str], list[list[float]]]:
        apps = {}
        for backend, db in dbs.items():
            store = open_storage(db, answer_cache=False)  # the query path, not memory
            await store.open()
            apps[backend] = web.Application()
            apps[backend][STORE] = store
        out: dict[tuple[str, str], list[list[float]]] = {}
        try:
            for app in apps.values():  # warm
                for _, endpoint, params, _ in QUERIES:
                    await route[endpoint](
                        make_mocked_request("GET", path_of(endpoint, params), app=app)
                    )
            gc.collect()  # as the server does once it is up (app/cli.py)
            gc.freeze()
            for n in range(ROUNDS):
                backends = list(apps) if n % 2 == 0 else list(reversed(apps))
                for backend in backends:
                    app = apps[backend]
                    for name, endpoint, params, _ in QUERIES if n % 2 == 0 else QUERIES[::-1]:
                        handler, path = route[endpoint], path_of(endpoint, params)
                        times: list[float] = []
                        deadline = time.perf_counter() + budget_s
                        while len(times) < 30 or (
                            time.perf_counter() < deadline and len(times) < 2000
                        ):
                            request = make_mocked_request("GET", path, app=app)
                            began = time.perf_counter()
                            await handler(request)
                            times.append((time.perf_counter() - began) * 1000)
                        out.setdefault((backend, name), []).append(times)
                    # The floor: one trivial statement through the same read path
                    # (SELECT 1 on a pooled connection), no planning or counting.
                    times = []
                    for _ in range(500):
                        began = time.perf_counter()
                        await app[STORE].ping()
                        times.append((time.perf_counter() - began) * 1000)
                    out.setdefault((backend, PING), []).append(times)
        finally:
            gc.unfreeze()
            for app in apps.values():
                await app[STORE].close()
        return out

    try:  # the server's event loop (app/cli.py), when installed
        import uvloop
    except ImportError:
        return asyncio.run(run())
    return uvloop.run(run())


def bench_queries(s: h.Settings, pg: PostgresCluster) -> dict[str, Any]:
    count = h.env_int("BENCH_PG_EVENTS", 1_000_000)
    sqlite_db = sqlite_query_db(count)
    url = pg.create_database("queries")
    h.say(f"  generating {count:,} events into PostgreSQL")
    generated = generate(url, count)
    h.say(f"  … {generated['seconds']:.1f} s")
    pg.psql("VACUUM ANALYZE", dbname="queries")  # as autovacuum would, before measuring
    pg_events = pg_counts(pg, "queries")
    sq_events = sqlite_counts(sqlite_db)
    db_bytes = int(pg.psql("SELECT pg_database_size('queries')").strip())
    backends = ("sqlite", "postgres")
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    floors: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
    bodies: dict[tuple[str, str], Any] = {}
    with (
        h.service("pg-queries-sqlite", sqlite_db, extra=["--answer-cache", "false"]) as on_sqlite,
        h.service("pg-queries-pg", url) as on_pg,  # type: ignore[arg-type]
    ):
        servers = {"sqlite": on_sqlite, "postgres": on_pg}
        for backend, server in servers.items():
            for name, endpoint, params, _ in QUERIES:
                with urllib.request.urlopen(server.url + path_of(endpoint, params)) as answer:
                    bodies[(backend, name)] = json.loads(answer.read())
        for n in range(ROUNDS):
            order = QUERIES if n % 2 == 0 else list(reversed(QUERIES))
            for backend in backends if n % 2 == 0 else tuple(reversed(backends)):
                server = servers[backend]
                floors[backend].append(h.wrk(server.url + "/healthz", "get.lua", connections=1,
                                             threads=1, seconds=s.query_seconds))  # fmt: skip
                for name, endpoint, params, _ in order:
                    w = h.wrk(server.url + path_of(endpoint, params), "get.lua", connections=1,
                              threads=1, seconds=s.query_seconds)  # fmt: skip
                    samples.setdefault((backend, name), []).append(w)
        rss = {b: srv.rss() for b, srv in servers.items()}
    in_process = time_in_process({"sqlite": str(sqlite_db), "postgres": url}, s.query_seconds)
    rows = []
    for name, endpoint, params, target in QUERIES:
        row: dict[str, Any] = {
            "name": name,
            "path": path_of(endpoint, params),
            "p99_target_ms": target,
            "equal_answers": bodies[("sqlite", name)] == bodies[("postgres", name)],
        }
        for backend in backends:
            ws = samples[(backend, name)]
            row[backend] = {
                "p50_ms": h.median([w["p50_ms"] for w in ws]),
                "p99_ms": h.median([w["p99_ms"] for w in ws]),
                "p99_ms_rounds": [w["p99_ms"] for w in ws],
                "requests": sum(w["requests"] for w in ws),
                "non_2xx": sum(w["non_2xx"] for w in ws),
                "in_process_p50_ms": h.median([h.median(t) for t in in_process[(backend, name)]]),
                "in_process_p99_ms": h.median(
                    [h.percentile(t, 99) for t in in_process[(backend, name)]]
                ),
                "in_process_p99_ms_rounds": [
                    h.percentile(t, 99) for t in in_process[(backend, name)]
                ],
            }
        pg_row = row["postgres"]
        row["met_in_process"] = target is None or pg_row["in_process_p99_ms"] <= target
        row["met_http"] = target is None or pg_row["p99_ms"] <= target
        rows.append(row)
        h.say(
            f"  query {name:<34} postgres HTTP p50 {pg_row['p50_ms']:6.2f} p99 "
            f"{pg_row['p99_ms']:6.2f}, in process p50 {pg_row['in_process_p50_ms']:6.2f} p99 "
            f"{pg_row['in_process_p99_ms']:6.2f} | sqlite HTTP p99 {row['sqlite']['p99_ms']:6.2f} "
            f"in process p99 {row['sqlite']['in_process_p99_ms']:6.2f} ms | target {target} | "
            f"equal {row['equal_answers']}"
        )
    return {
        "events": {"postgres": pg_events, "sqlite": sq_events},
        "generated": generated,
        "postgres_db_bytes": db_bytes,
        "healthz": {
            b: {
                "p50_ms": h.median([w["p50_ms"] for w in floors[b]]),
                "p99_ms": h.median([w["p99_ms"] for w in floors[b]]),
            }
            for b in backends
        },
        "server_rss_mib": rss,
        "in_process_ping": {
            b: {
                "p50_ms": h.median([h.median(t) for t in in_process[(b, PING)]]),
                "p99_ms": h.median([h.percentile(t, 99) for t in in_process[(b, PING)]]),
            }
            for b in backends
        },
        "queries": rows,
    }


# --- a group commit's parts -------------------------------------------------------------

# The log insert alone: APPEND_SQL without its two rollup upserts, to price them.
EVENTS_ONLY_SQL = """
INSERT INTO events (event_id, user_id, event_type, timestamp, payload)
SELECT event_id, user_id, event_type, ts::timestamptz, payload
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::json[])
    AS r(event_id, user_id, event_type, ts, payload)
"""


def bench_commit(s: h.Settings, pg: PostgresCluster) -> dict[str, Any]:
    """A group commit's round trips timed one by one on an otherwise idle connection
    (``BEGIN``; the one statement of ``schema.postgres.store.APPEND_SQL``; ``COMMIT``),
    with ``synchronous_commit`` on and off (the difference is the WAL flush), and the
    insert without the rollup upserts (their cost). Rows like a live group commit's: now,
    three types, ~100-byte payloads."""
    import asyncio
    import uuid
    from datetime import UTC, datetime

    import asyncpg

    from schema.postgres.store import APPEND_SQL

    url = pg.create_database("commit_parts")
    subprocess.run([h.PY, "-m", "app", "migrate", "--db", url], cwd=h.ROOT, check=True,
                   capture_output=True)  # fmt: skip
    budget = max(1.0, s.query_seconds)

    def rows(n: int) -> list[list[Any]]:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        types = ("view", "click", "location")
        out = [
            (uuid.uuid4(), f"user-{i}", types[i % 3], stamp,
             '{"url":"https://shop.example/products/1","title":"Product 1"}')
            for i in range(n)
        ]  # fmt: skip
        return [list(column) for column in zip(*out, strict=True)]

    async def run() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(url, server_settings={"timezone": "UTC", "jit": "off"})
        results = []
        try:
            for sync in ("on", "off"):
                await conn.execute(f"SET synchronous_commit = {sync}")
                for size in (1, 32, 1000):
                    for what, sql in (
                        ("events + rollups", APPEND_SQL),
                        ("events", EVENTS_ONLY_SQL),
                    ):
                        args = (15,) if sql is APPEND_SQL else ()
                        parts: dict[str, list[float]] = {"begin": [], "statement": [], "commit": []}
                        deadline = time.perf_counter() + budget
                        while len(parts["begin"]) < 20 or (
                            time.perf_counter() < deadline and len(parts["begin"]) < 500
                        ):
                            columns = rows(size)
                            t0 = time.perf_counter()
                            await conn.execute("BEGIN")
                            t1 = time.perf_counter()
                            await conn.execute(sql, *columns, *args)
                            t2 = time.perf_counter()
                            await conn.execute("COMMIT")
                            t3 = time.perf_counter()
                            parts["begin"].append((t1 - t0) * 1000)
                            parts["statement"].append((t2 - t1) * 1000)
                            parts["commit"].append((t3 - t2) * 1000)
                        row: dict[str, Any] = {
                            "synchronous_commit": sync,
                            "rows": size,
                            "statement": what,
                            "runs": len(parts["begin"]),
                        }
                        for k, v in parts.items():
                            row[f"{k}_p50_ms"] = h.median(v)
                            row[f"{k}_p99_ms"] = h.percentile(v, 99)
                        results.append(row)
                        h.say(
                            f"  commit sync={sync:<3} {size:>5} rows {what:<17}: BEGIN "
                            f"{row['begin_p50_ms']:.3f} ms, statement "
                            f"{row['statement_p50_ms']:.3f} ms, COMMIT "
                            f"{row['commit_p50_ms']:.3f} ms (p50 of {row['runs']})"
                        )
        finally:
            await conn.close()
        return results

    return {"parts": asyncio.run(run())}


# --- where the event loop's time goes ---------------------------------------------------


def bench_profile(s: h.Settings, pg: PostgresCluster) -> dict[str, Any]:
    """``bench/profile.py``'s split of the event-loop thread's CPU per ``POST /events``
    (py-spy samples, 64 connections), for a service on SQLite and one on PostgreSQL, with
    the CPU of the service's other threads and of the PostgreSQL server per request."""
    import profile as loop_profile  # bench/profile.py

    seconds = max(s.duration, 5)
    out = []
    for kind in ("sqlite", "postgres"):
        if kind == "sqlite":
            db: Any = h.WORK / "pg-profile.db"
            h.remove_db(db)
        else:
            db = pg.create_database("profile")
        samples = h.WORK / f"pg-profile-{kind}.txt"
        with h.service(f"pg-profile-{kind}", db) as server:
            fleet = Fleet([server], pg if kind == "postgres" else None)
            h.wrk(server.url + "/events", "post_event.lua", connections=64, threads=2, seconds=2)
            spy = subprocess.Popen(
                [PY_SPY, "record", "-p", str(server.proc.pid), "-d", str(seconds), "-r", "250",
                 "-f", "raw", "-o", str(samples), "--threads", "--nonblocking"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            before = fleet.cpu()
            w = h.wrk(server.url + "/events", "post_event.lua", connections=64, threads=2,
                      seconds=seconds)  # fmt: skip
            after = fleet.cpu()
            spy.wait(timeout=seconds + 60)
            server.stop()
            server.log_path.unlink(missing_ok=True)
        if kind == "sqlite":
            h.remove_db(db)
        per = {k: (after[k] - before[k]) / max(w["ok"], 1) * 1e6 for k in after}
        counts, total = loop_profile.buckets(samples)
        samples.unlink(missing_ok=True)
        out.append(
            {
                "kind": kind,
                "rps": w["rps"],
                "cpu_us_per_request": per,
                "loop_buckets_us": {b: per["loop"] * n / max(total, 1) for b, n in counts.items()},
            }
        )
        h.say(f"  profile {kind}: {w['rps']:.0f}/s, CPU µs/request {per}")
    return {"connections": 64, "seconds": seconds, "servers": out}


# --- the section -------------------------------------------------------------------------


PARTS = {
    "commit": bench_commit,
    "profile": bench_profile,
    "ingest": bench_ingest,
    "queries": bench_queries,
}


def bench_postgres(s: h.Settings) -> dict[str, Any]:
    """Every part in BENCH_PG_PARTS (default: all) on one cluster; the results file is
    written after each part, so an interrupted run keeps what it measured. Parts not run
    keep their previous results (each part records its own date and commit)."""
    parts = h.env_list("BENCH_PG_PARTS", ",".join(PARTS))
    began = time.perf_counter()
    previous = h.load("postgres") or {}
    out: dict[str, Any] = {k: previous[k] for k in PARTS if k in previous and k not in parts}
    with postgres_cluster(dbname="bench") as pg:
        out["postgres"] = {"version": pg_version(pg), "settings": pg_settings(pg)}
        h.say(f"  PostgreSQL {out['postgres']['version']} on 127.0.0.1:{pg.port}, {pg.base}")
        for name, part in PARTS.items():
            if name in parts:
                out[name] = {"date": h.stamp(), "commit": h.git_commit(), **part(s, pg)}
                out["section_seconds"] = time.perf_counter() - began
                h.save("postgres", out, s)
    return out


def table(data: dict[str, Any]) -> str:
    """The README's tables, in Markdown."""
    lines = []
    if "ingest" in data:
        lines += [
            "| load | backend | events/s | vs SQLite | p50 ms | p99 ms | non-2xx | CPU µs/event: "
            "service loop | service other | PostgreSQL |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in data["ingest"]["summary"]:
            load = (
                f"`POST /events`, {r['connections']} conns"
                if r["load"] == "single"
                else f"batch of {r['events_per_request']}, {r['connections']} conns"
            )
            cpu = r["cpu_us_per_event"]
            lines.append(
                f"| {load} | {r['kind']} | {r['events_per_s']:,.0f} | {r['vs_sqlite']:.0%} | "
                f"{r['p50_ms']:.2f} | {r['p99_ms']:.1f} | {r['non_2xx']} | {cpu['loop']:.0f} | "
                f"{cpu['other']:.0f} | {cpu['postgres']:.0f} |"
            )
    if "queries" in data:
        lines += [
            "",
            "| query | p99 target | PostgreSQL in process p50 / p99 ms | SQLite in process "
            "p50 / p99 ms | PostgreSQL HTTP p50 / p99 ms | SQLite HTTP p50 / p99 ms | met "
            "(in process / HTTP) | same answer |",
            "|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for q in data["queries"]["queries"]:
            target = f"≤ {q['p99_target_ms']:g} ms" if q["p99_target_ms"] else "–"
            cells = []
            for backend in ("postgres", "sqlite"):
                b = q[backend]
                cells.append(f"{b['in_process_p50_ms']:.2f} / {b['in_process_p99_ms']:.2f}")
            for backend in ("postgres", "sqlite"):
                b = q[backend]
                cells.append(f"{b['p50_ms']:.2f} / {b['p99_ms']:.2f}")
            met = (
                "–"
                if not q["p99_target_ms"]
                else (
                    f"{'yes' if q['met_in_process'] else 'no'} / {'yes' if q['met_http'] else 'no'}"
                )
            )
            lines.append(
                f"| {q['name']} | {target} | {' | '.join(cells)} | {met} | "
                f"{'yes' if q['equal_answers'] else 'NO'} |"
            )
        ping = data["queries"]["in_process_ping"]
        lines.append(
            f"| {PING}: the floor | – | {ping['postgres']['p50_ms']:.2f} / "
            f"{ping['postgres']['p99_ms']:.2f} | {ping['sqlite']['p50_ms']:.2f} / "
            f"{ping['sqlite']['p99_ms']:.2f} | | | | |"
        )
        floor = data["queries"]["healthz"]
        lines.append(
            f"\n`/healthz` over HTTP (the floor): PostgreSQL service p50 "
            f"{floor['postgres']['p50_ms']:.2f} / p99 {floor['postgres']['p99_ms']:.2f} ms, "
            f"SQLite service {floor['sqlite']['p50_ms']:.2f} / {floor['sqlite']['p99_ms']:.2f} ms."
        )
    if "profile" in data:
        import profile as loop_profile

        servers = data["profile"]["servers"]
        lines += [
            "",
            "| µs of CPU per `POST /events` | "
            + " | ".join(f"service on {r['kind']}" for r in servers)
            + " |",
            "|---|" + "---:|" * len(servers),
        ]
        for name in [b for b, _ in loop_profile.BUCKETS] + [loop_profile.OTHER]:
            cells = [f"{r['loop_buckets_us'].get(name, 0.0):.1f}" for r in servers]
            lines.append(f"| loop: {name} | {' | '.join(cells)} |")
        for part, label in (
            ("loop", "**event-loop thread, total**"),
            ("other", "service's other threads (SQLite writer, log writer)"),
            ("postgres", "PostgreSQL server processes"),
        ):
            cells = [f"{r['cpu_us_per_request'][part]:.1f}" for r in servers]
            lines.append(f"| {label} | {' | '.join(cells)} |")
        lines.append("| requests/s during the profile | " + " | ".join(
            f"{r['rps']:,.0f}" for r in servers) + " |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    only = os.environ.get("BENCH_ONLY")
    if only and "postgres" not in h.env_list("BENCH_ONLY", ""):
        return 0
    # SIGTERM unwinds like Ctrl-C: the servers stop and the cluster and its dir go away.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    s = h.Settings()
    h.WORK.mkdir(parents=True, exist_ok=True)
    h.say(f"== postgres ({h.stamp()} commit {h.git_commit()})")
    data = bench_postgres(s)
    h.say(table(data))
    h.say(f"  → {(h.RESULTS / 'postgres.json').relative_to(h.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
