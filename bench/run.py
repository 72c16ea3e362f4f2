"""``make bench``: the reproducible benchmark suite (issue 6).

    make bench                                   # a few minutes: 1M-event query DB
    BENCH_SIZES=1000000,10000000 make bench      # + the 10M database (built once, cached)
    BENCH_ONLY=ingest,report make bench          # some sections only; report = table+plots

Sections (each writes ``bench/results/<section>.json``):

- ingest: ``POST /events`` with wrk (2 threads, 64 and 256 connections) against the
  service in its default configuration, the same with the access log off and with the
  metrics off, and, in the same run, a do-nothing aiohttp baseline; repeated, medians
  kept; after each server the log is checked against the acknowledged count (0 lost).
- metrics: mixed traffic in phases of 8 to 256 connections while ``/metrics`` is scraped
  every half second; the scrapes are drawn as the Grafana board's panels
  (``docs/metrics.png``; the board itself is ``docs/grafana-dashboard.json``).
- batch: ``POST /events/batch`` with 100- and 1000-event batches.
- generator: seconds for ``generate_events.py --count 1000000``.
- queries: p50/p99 of each analytics query over HTTP on 1M (and 10M) events, and the
  same answers by ``COUNT(*)`` on the log, so the rollup speed-up is measured.
- rebuild: ``python -m app rebuild`` of all rollups from the largest database.
- export, erasure, retention, user_index: the data lifecycle (``bench/lifecycle.py``).
- report: the table (stdout, ``bench/results/table.md``) and the PNG plots.

Settings: BENCH_SIZES, BENCH_DURATION (s per measured wrk run), BENCH_WARMUP,
BENCH_REPEATS, BENCH_CONNECTIONS, BENCH_THREADS, BENCH_BATCH_SIZES,
BENCH_BATCH_CONNECTIONS, BENCH_QUERY_SECONDS, BENCH_COST_VARIANTS (0 skips the
services with the access log or the metrics off), BENCH_DB_DIR (where the ingest
databases go; /dev/shm takes fsync out of the measurement), BENCH_ONLY,
BENCH_GENERATOR_COUNT.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dashboard
import harness as h
import lifecycle
import report

# The generated data: one calendar year, fixed seed, so every size is reproducible.
GEN_START, GEN_END, GEN_SEED = "2025-01-01", "2025-12-31", "1"


# --- ingest ------------------------------------------------------------------------------


# (name, serve flags; None is the do-nothing baseline). "service" is the default
# configuration: access log and metrics on. The other two turn one of them off, so the
# table shows what each costs, measured in the same repeat.
INGEST_KINDS: list[tuple[str, list[str] | None]] = [
    ("baseline", None),
    ("service", ["--access-log", "true", "--metrics", "true"]),
    ("service, no access log", ["--access-log", "false", "--metrics", "true"]),
    ("service, no metrics", ["--access-log", "true", "--metrics", "false"]),
]


def bench_ingest(s: h.Settings) -> dict[str, Any]:
    kinds = INGEST_KINDS if s.cost_variants else INGEST_KINDS[:2]
    runs: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    rss: dict[str, float] = {}
    for repeat in range(s.repeats):
        order = kinds if repeat % 2 == 0 else list(reversed(kinds))  # share the drift
        for kind, flags in order:
            slug = kind.replace(", ", "-").replace(" ", "_")
            db = (Path(s.db_dir) if s.db_dir else h.WORK) / f"ingest-{slug}.db"
            h.remove_db(db)
            if flags is None:
                server = h.baseline("ingest-baseline")
            else:
                server = h.service(f"ingest-{slug}", db, extra=flags)
            acknowledged = in_flight_bound = 0
            with server:
                for conns in s.connections:
                    for seconds, measured in ((s.warmup, False), (s.duration, True)):
                        if seconds <= 0:
                            continue
                        cpu_before = server.cpu_seconds()
                        w = h.wrk(
                            server.url + "/events",
                            "post_event.lua",
                            connections=conns,
                            threads=s.threads,
                            seconds=seconds,
                        )
                        cpu_after = server.cpu_seconds()
                        acknowledged += w["ok"]
                        in_flight_bound += conns
                        if measured:
                            # CPU per answered request: where the time goes per event
                            w["cpu_us_per_request"] = {
                                part: (cpu_after[part] - cpu_before[part])
                                / max(w["requests"], 1)
                                * 1e6
                                for part in cpu_after
                            }
                            runs.append({"kind": kind, "repeat": repeat, **w})
                            cpu = w["cpu_us_per_request"]
                            h.say(
                                f"  ingest {kind:<24} c={conns:<4} #{repeat + 1}: "
                                f"{w['rps']:>8.0f}/s p50 {w['p50_ms']:6.2f} ms "
                                f"p99 {w['p99_ms']:7.2f} ms non-2xx {w['non_2xx']} "
                                f"socket errors {w['socket_errors']} | CPU/request: loop "
                                f"{cpu['loop']:.0f} us, other threads {cpu['other']:.0f} us"
                            )
            rss[kind] = max(rss.get(kind, 0.0), server.peak_rss_mib or 0.0)
            if flags is not None:
                stored, rolled = h.db_counts(db)
                check = {
                    "kind": kind,
                    "repeat": repeat,
                    "acknowledged": acknowledged,
                    "stored": stored,
                    "rollup_sum": rolled,
                    "lost": max(0, acknowledged - stored),
                    # requests in flight when wrk stopped are committed but never counted
                    "stored_unacknowledged": stored - acknowledged,
                    "in_flight_bound": in_flight_bound,
                }
                check["ok"] = (
                    acknowledged <= stored <= acknowledged + in_flight_bound and rolled == stored
                )
                checks.append(check)
                h.say(
                    f"  check  {kind:<24} acknowledged {acknowledged} stored {stored} "
                    f"rollup {rolled}: {'0 lost' if check['ok'] else 'MISMATCH'}"
                )
                h.remove_db(db)
                server.log_path.unlink(missing_ok=True)  # the access log of millions of requests
    return {
        "runs": runs,
        "checks": checks,
        "peak_rss_mib": rss,
        "summary": summarise_ingest(runs),
        "costs": ingest_costs(runs),
    }


def ingest_costs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the access log and the metrics cost: the default service against the same
    service with one of them off, as the median of per-repeat ratios."""
    out = []
    for conns in dict.fromkeys(r["connections"] for r in runs):
        for what, without in (
            ("access log", "service, no access log"),
            ("metrics", "service, no metrics"),
        ):
            ratios = []
            for repeat in dict.fromkeys(r["repeat"] for r in runs):
                on = [
                    r
                    for r in runs
                    if r["kind"] == "service"
                    and r["connections"] == conns
                    and r["repeat"] == repeat
                ]
                off = [
                    r
                    for r in runs
                    if r["kind"] == without and r["connections"] == conns and r["repeat"] == repeat
                ]
                if on and off and off[0]["rps"]:
                    ratios.append(on[0]["rps"] / off[0]["rps"])
            if ratios:
                out.append(
                    {
                        "what": what,
                        "connections": conns,
                        "on_vs_off": h.median(ratios),
                        "ratios": [round(x, 3) for x in ratios],
                    }
                )
    return out


def summarise_ingest(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per (kind, connections); the ratio is the median of per-repeat ratios
    against the baseline measured in the same repeat."""
    out = []
    kinds = list(dict.fromkeys(r["kind"] for r in runs))
    conns_list = list(dict.fromkeys(r["connections"] for r in runs))
    for kind in kinds:
        for conns in conns_list:
            mine = [r for r in runs if r["kind"] == kind and r["connections"] == conns]
            if not mine:
                continue
            ratios = []
            for r in mine:
                base = [
                    b
                    for b in runs
                    if b["kind"] == "baseline"
                    and b["connections"] == conns
                    and b["repeat"] == r["repeat"]
                ]
                if base and base[0]["rps"]:
                    ratios.append(r["rps"] / base[0]["rps"])
            pcts = {
                p: h.median([r["latency_us"]["percentiles"][p] / 1000 for r in mine])
                for p in mine[0]["latency_us"]["percentiles"]
            }
            out.append(
                {
                    "kind": kind,
                    "connections": conns,
                    "repeats": len(mine),
                    "rps": h.median([r["rps"] for r in mine]),
                    "rps_all": [round(r["rps"]) for r in mine],
                    "p50_ms": h.median([r["p50_ms"] for r in mine]),
                    "p99_ms": h.median([r["p99_ms"] for r in mine]),
                    "percentiles_ms": pcts,
                    "ratio_to_baseline": h.median(ratios) if ratios else None,
                    "ratios": [round(x, 3) for x in ratios],
                    "non_2xx": sum(r["non_2xx"] for r in mine),
                    "socket_errors": sum(r["socket_errors"] for r in mine),
                    "timeouts": sum(r["timeouts"] for r in mine),
                    "cpu_us_per_request": {
                        part: h.median([r["cpu_us_per_request"][part] for r in mine])
                        for part in ("loop", "other")
                    }
                    if all("cpu_us_per_request" in r for r in mine)
                    else None,
                }
            )
    return out


# --- metrics: scrapes of /metrics under changing load, drawn as the Grafana board ------

# (connections, seconds) of mixed traffic (bench/wrk/post_mixed.lua): valid events of all
# types with a few refused requests of every kind; with the queue bounded at 100 events,
# 256 connections also meet 503s (overloaded).
METRICS_PHASES = [(8, 6), (64, 8), (256, 8), (16, 6)]
SCRAPE_EVERY_S = 0.5


def bench_metrics(s: h.Settings) -> dict[str, Any]:
    db = h.WORK / "metrics.db"
    h.remove_db(db)
    flags = ["--access-log", "true", "--queue-max-events", "100"]
    scrapes: list[dict[str, Any]] = []
    phases = []
    with h.service("metrics", db, extra=flags) as server:
        stop = threading.Event()
        began = time.monotonic()

        def scrape() -> None:
            while not stop.is_set():
                with urllib.request.urlopen(server.url + "/metrics", timeout=5) as answer:
                    text = answer.read().decode()
                t = time.monotonic() - began
                scrapes.append({"t": round(t, 3), "samples": dashboard.parse_scrape(text)})
                stop.wait(SCRAPE_EVERY_S)

        scraper = threading.Thread(target=scrape, name="scraper")
        scraper.start()
        try:
            time.sleep(2)
            for conns, seconds in METRICS_PHASES:
                start = time.monotonic() - began
                w = h.wrk(
                    server.url + "/events",
                    "post_mixed.lua",
                    connections=conns,
                    threads=min(s.threads, conns),
                    seconds=seconds,
                )
                phases.append(
                    {
                        "connections": conns,
                        "from_s": round(start, 1),
                        "requests": w["requests"],
                        "non_2xx": w["non_2xx"],
                        "rps": w["rps"],
                    }
                )
                h.say(
                    f"  metrics phase c={conns:<4} {seconds} s: {w['requests']} requests, "
                    f"{w['non_2xx']} refused"
                )
            time.sleep(2)
        finally:
            stop.set()
            scraper.join()
        server.log_path.unlink(missing_ok=True)
    h.remove_db(db)
    picture = dashboard.render(scrapes)
    h.say(f"  {len(scrapes)} scrapes → {picture.relative_to(h.ROOT)}")
    return {"phases": phases, "scrape_every_s": SCRAPE_EVERY_S, "scrapes": scrapes}


# --- batch -------------------------------------------------------------------------------


def bench_batch(s: h.Settings) -> dict[str, Any]:
    db = h.WORK / "batch.db"
    h.remove_db(db)
    results = []
    acknowledged_events = in_flight_events = 0
    with h.service("batch", db) as server:
        for size in s.batch_sizes:
            per_repeat = []
            for repeat in range(s.repeats):
                for seconds, measured in ((s.warmup, False), (s.duration, True)):
                    if seconds <= 0:
                        continue
                    w = h.wrk(
                        server.url + "/events/batch",
                        "post_batch.lua",
                        connections=s.batch_connections,
                        threads=s.threads,
                        seconds=seconds,
                        env={"BENCH_BATCH": str(size)},
                    )
                    acknowledged_events += w["ok"] * size
                    in_flight_events += s.batch_connections * size
                    if measured:
                        w["events_per_s"] = w["rps"] * size
                        per_repeat.append(w)
                        h.say(
                            f"  batch  {size:>5} events/request #{repeat + 1}: "
                            f"{w['events_per_s']:>9.0f} events/s ({w['rps']:.0f} requests/s) "
                            f"p50 {w['p50_ms']:.1f} ms p99 {w['p99_ms']:.1f} ms "
                            f"non-2xx {w['non_2xx']}"
                        )
            results.append(
                {
                    "batch_size": size,
                    "connections": s.batch_connections,
                    "events_per_s": h.median([w["events_per_s"] for w in per_repeat]),
                    "events_per_s_all": [round(w["events_per_s"]) for w in per_repeat],
                    "requests_per_s": h.median([w["rps"] for w in per_repeat]),
                    "p50_ms": h.median([w["p50_ms"] for w in per_repeat]),
                    "p99_ms": h.median([w["p99_ms"] for w in per_repeat]),
                    "non_2xx": sum(w["non_2xx"] for w in per_repeat),
                    "socket_errors": sum(w["socket_errors"] for w in per_repeat),
                    "runs": per_repeat,
                }
            )
    stored, rolled = h.db_counts(db)
    check = {
        "acknowledged": acknowledged_events,
        "stored": stored,
        "rollup_sum": rolled,
        "lost": max(0, acknowledged_events - stored),
        "ok": acknowledged_events <= stored <= acknowledged_events + in_flight_events
        and rolled == stored,
    }
    h.say(f"  check  batch acknowledged {acknowledged_events} stored {stored} rollup {rolled}")
    h.remove_db(db)
    return {"results": results, "check": check, "peak_rss_mib": server.peak_rss_mib}


# --- generator and the query databases ---------------------------------------------------


def generate(db: Path, count: int) -> dict[str, Any]:
    """Run generate_events.py into ``db`` (replaced); returns its command and seconds."""
    h.remove_db(db)
    argv = [
        h.PY,
        "generate_events.py",
        "--count",
        str(count),
        "--db",
        str(db),
        "--seed",
        GEN_SEED,
        "--start",
        GEN_START,
        "--end",
        GEN_END,
        "--no-progress",
    ]
    began = time.perf_counter()
    out = subprocess.run(argv, cwd=h.ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    if out.returncode != 0:
        raise RuntimeError(f"generate_events.py failed:\n{out.stdout}\n{out.stderr}")
    command = "python " + " ".join(argv[1:]).replace(str(h.ROOT) + "/", "")
    output = out.stdout.strip().replace(str(h.ROOT) + "/", "")
    return {"count": count, "seconds": seconds, "command": command, "output": output}


def query_db(count: int) -> tuple[Path, dict[str, Any] | None]:
    """The cached database of ``count`` generated events (built when missing)."""
    db = h.WORK / f"events-{count}.db"
    meta_path = db.with_suffix(".json")
    if db.exists() and meta_path.exists():
        return db, json.loads(meta_path.read_text())
    h.say(f"  generating {count:,} events into {db.relative_to(h.ROOT)} (cached for next runs)")
    meta = generate(db, count)
    meta_path.write_text(json.dumps(meta, indent=2))
    return db, meta


def bench_generator(s: h.Settings) -> dict[str, Any]:
    n = s.generator_count
    db = h.WORK / f"generator-{n}.db"
    meta = generate(db, n)
    meta["events_per_s"] = n / meta["seconds"]
    meta["db_bytes"] = h.db_bytes(db)
    h.say(f"  generator: {n:,} events in {meta['seconds']:.1f} s ({meta['events_per_s']:,.0f}/s)")
    cached = h.WORK / f"events-{n}.db"
    if not cached.exists():  # the same command builds the query database: keep it
        db.rename(cached)
        cached.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    h.remove_db(db)
    return meta


# --- queries -----------------------------------------------------------------------------

# (name, endpoint, parameters, log SQL, SQL arguments). The log SQL is the best the log
# alone can do: every range goes through the (event_type, timestamp) covering index.
_TYPES = "event_type IN ('view', 'click', 'location')"
QUERIES: list[tuple[str, str, dict[str, str], str, tuple[Any, ...]]] = [
    ("all time", "event-counts", {}, "SELECT COUNT(*) FROM events", ()),
    (
        "type filter",
        "event-counts",
        {"event_type": "click"},
        "SELECT COUNT(*) FROM events WHERE event_type = ?",
        ("click",),
    ),
    (
        "30 days",
        "event-counts",
        {"start_date": "2025-06-01", "end_date": "2025-06-30"},
        f"SELECT COUNT(*) FROM events WHERE {_TYPES} AND timestamp >= ? AND timestamp < ?",
        ("2025-06-01T00:00:00.000000Z", "2025-07-01T00:00:00.000000Z"),
    ),
    (
        "30 days, type",
        "event-counts",
        {"event_type": "view", "start_date": "2025-06-01", "end_date": "2025-06-30"},
        "SELECT COUNT(*) FROM events WHERE event_type = ? AND timestamp >= ? AND timestamp < ?",
        ("view", "2025-06-01T00:00:00.000000Z", "2025-07-01T00:00:00.000000Z"),
    ),
    (
        "7 days",
        "event-counts",
        {"start_date": "2025-06-10", "end_date": "2025-06-16"},
        f"SELECT COUNT(*) FROM events WHERE {_TYPES} AND timestamp >= ? AND timestamp < ?",
        ("2025-06-10T00:00:00.000000Z", "2025-06-17T00:00:00.000000Z"),
    ),
    (
        "1 day",
        "event-counts",
        {"start_date": "2025-06-15", "end_date": "2025-06-15"},
        f"SELECT COUNT(*) FROM events WHERE {_TYPES} AND timestamp >= ? AND timestamp < ?",
        ("2025-06-15T00:00:00.000000Z", "2025-06-16T00:00:00.000000Z"),
    ),
    (
        "cut days (date-times)",
        "event-counts",
        {"start_date": "2025-06-10T09:30:00+02:00", "end_date": "2025-06-16T17:45:00Z"},
        f"SELECT COUNT(*) FROM events WHERE {_TYPES} AND timestamp >= ? AND timestamp <= ?",
        ("2025-06-10T07:30:00.000000Z", "2025-06-16T17:45:00.000000Z"),
    ),
    (
        "by type, 30 days",
        "event-counts-by-type",
        {"start_date": "2025-06-01", "end_date": "2025-06-30"},
        f"SELECT event_type, COUNT(*) FROM events WHERE {_TYPES} "
        "AND timestamp >= ? AND timestamp < ? GROUP BY event_type",
        ("2025-06-01T00:00:00.000000Z", "2025-07-01T00:00:00.000000Z"),
    ),
    (
        "by day, 30 days",
        "event-counts-by-day",
        {"start_date": "2025-06-01", "end_date": "2025-06-30"},
        f"SELECT substr(timestamp, 1, 10), event_type, COUNT(*) FROM events WHERE {_TYPES} "
        "AND timestamp >= ? AND timestamp < ? GROUP BY 1, 2",
        ("2025-06-01T00:00:00.000000Z", "2025-07-01T00:00:00.000000Z"),
    ),
]


def _log_answer(endpoint: str, rows: list[tuple[Any, ...]]) -> Any:
    """The log's rows shaped like the endpoint's JSON answer, for the equality check."""
    if endpoint == "event-counts":
        return {"total_events": rows[0][0]}
    if endpoint == "event-counts-by-type":
        return {t: n for t, n in rows if n}
    days: dict[str, dict[str, int]] = {}
    for day, event_type, n in rows:
        days.setdefault(day, {})[event_type] = n
    return days


def _http_answer(endpoint: str, body: Any) -> Any:
    if endpoint == "event-counts-by-day":
        return {
            d["date"]: {t: d[t] for t in ("view", "click", "location") if d[t]}
            for d in body["days"]
            if any(d[t] for t in ("view", "click", "location"))
        }
    return body


def _time_sql(
    conn: sqlite3.Connection, sql: str, args: tuple[Any, ...], budget_s: float
) -> tuple[list[float], list[tuple[Any, ...]]]:
    rows = conn.execute(sql, args).fetchall()  # warm the page cache once
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
        began = time.perf_counter()
        rows = conn.execute(sql, args).fetchall()
        times.append((time.perf_counter() - began) * 1000)
    return times, rows


def _time_store(db: Path, budget_s: float) -> dict[str, list[float]]:
    """The service's own storage call for event-counts queries, in process (no HTTP):
    the rollup plan's cost against COUNT(*) on the same connection settings."""
    from multidict import MultiDict

    from query.params import parse_query
    from query.plan import plan_range
    from schema.events import EVENT_TYPES
    from schema.sqlite.store import SQLiteStore

    async def run() -> dict[str, list[float]]:
        store = SQLiteStore(db)
        await store.open()
        out: dict[str, list[float]] = {}
        try:
            for name, endpoint, params, _, _ in QUERIES:
                if endpoint == "event-counts-by-day":
                    continue
                allowed = ("start_date", "end_date") + (
                    ("event_type",) if endpoint == "event-counts" else ()
                )
                span, event_type, _ = parse_query(MultiDict(params), allowed)
                types = (event_type,) if event_type else EVENT_TYPES
                await store.count(plan_range(span), types)
                times: list[float] = []
                deadline = time.perf_counter() + budget_s
                while len(times) < 20 or (time.perf_counter() < deadline and len(times) < 2000):
                    began = time.perf_counter()
                    await store.count(plan_range(span), types)
                    times.append((time.perf_counter() - began) * 1000)
                out[name] = times
        finally:
            await store.close()
        return out

    return asyncio.run(run())


def bench_queries(s: h.Settings) -> dict[str, Any]:
    sizes = []
    for count in s.sizes:
        db, meta = query_db(count)
        events, rolled = h.db_counts(db)
        size: dict[str, Any] = {
            "events": events,
            "rollup_sum": rolled,
            "db_bytes": h.db_bytes(db),
            "bytes_per_event": h.db_bytes(db) / max(events, 1),
            "db_mib_per_million_events": h.db_bytes(db) / max(events, 1) / 1024 / 1024 * 1e6,
            "generated_by": meta,
            "queries": [],
        }
        with h.service(f"queries-{count}", db) as server:
            http = {}
            for name, endpoint, params, _, _ in QUERIES:
                path = f"/analytics/{endpoint}"
                if params:
                    path += "?" + urllib.parse.urlencode(params)
                with urllib.request.urlopen(server.url + path) as answer:
                    body = json.loads(answer.read())
                w = h.wrk(
                    server.url + path, "get.lua", connections=1, threads=1, seconds=s.query_seconds
                )
                http[name] = (path, body, w)
            size["server_peak_rss_mib"] = server.rss()
        in_process = _time_store(db, budget_s=min(1.0, s.query_seconds))
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        conn.execute("PRAGMA cache_size = -32768")
        for name, endpoint, _, sql, args in QUERIES:
            path, body, w = http[name]
            times, rows = _time_sql(conn, sql, args, budget_s=s.query_seconds)
            count_p50 = h.median(times)
            store_times = in_process.get(name)
            q = {
                "name": name,
                "path": path,
                "answer": body,
                "equal_to_log": _http_answer(endpoint, body) == _log_answer(endpoint, rows),
                "http_p50_ms": w["p50_ms"],
                "http_p99_ms": w["p99_ms"],
                "http_requests_per_s": w["rps"],
                "http_non_2xx": w["non_2xx"],
                "store_p50_ms": h.median(store_times) if store_times else None,
                "store_p99_ms": h.percentile(store_times, 99) if store_times else None,
                "count_sql": sql,
                "count_p50_ms": count_p50,
                "count_p99_ms": h.percentile(times, 99),
                "count_runs": len(times),
                "speedup_http": count_p50 / w["p50_ms"] if w["p50_ms"] else None,
                "speedup_store": count_p50 / h.median(store_times) if store_times else None,
            }
            size["queries"].append(q)
            h.say(
                f"  query  {events:>10,} {name:<22} HTTP p50 {q['http_p50_ms']:6.2f} "
                f"p99 {q['http_p99_ms']:6.2f} ms | store p50 "
                f"{(q['store_p50_ms'] or float('nan')):7.3f} ms | COUNT(*) p50 "
                f"{count_p50:8.2f} ms | equal {q['equal_to_log']}"
            )
        conn.close()
        sizes.append(size)
    return {"sizes": sizes}


# --- rebuild -----------------------------------------------------------------------------


def bench_rebuild(s: h.Settings) -> dict[str, Any]:
    """Empty the rollup, then ``python -m app rebuild``; repeated (the first run may read a
    cold page cache), every run checked: the rollup must equal the log afterwards."""
    count = max(s.sizes)
    db, _ = query_db(count)
    runs = []
    for repeat in range(max(1, s.repeats)):
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("DELETE FROM daily_event_counts")  # rebuild from nothing: every day
        conn.close()
        argv = [h.PY, "-m", "app", "rebuild", "--db", str(db), "--json"]
        began = time.perf_counter()
        out = subprocess.run(argv, cwd=h.ROOT, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - began
        if out.returncode != 0:
            db.with_suffix(".json").unlink(missing_ok=True)  # the cache is not to be trusted
            raise RuntimeError(f"rebuild failed:\n{out.stdout}\n{out.stderr}")
        report_ = json.loads(out.stdout)
        events, rolled = h.db_counts(db)
        run = {
            "wall_seconds": wall,
            "report_seconds": report_["ms"] / 1000,
            "longest_transaction_ms": report_["longest_transaction_ms"],
            "days_checked": report_["days_checked"],
            "days_changed": len(report_["days_changed"]),
            "events_counted": report_["events_counted"],
            "rollup_equals_log": rolled == events,
        }
        runs.append(run)
        h.say(
            f"  rebuild {events:,} events #{repeat + 1}: {wall:.2f} s wall "
            f"({run['report_seconds']:.2f} s in the pass, {run['days_changed']} days written), "
            f"longest transaction {run['longest_transaction_ms']:.1f} ms, "
            f"rollup == log: {rolled == events}"
        )
    return {
        "events": events,
        "command": f"python -m app rebuild --db bench/work/{db.name} --json",
        "wall_seconds": h.median([r["wall_seconds"] for r in runs]),
        "wall_seconds_all": [round(r["wall_seconds"], 2) for r in runs],
        "longest_transaction_ms": max(r["longest_transaction_ms"] for r in runs),
        "rollup_equals_log": all(r["rollup_equals_log"] for r in runs),
        "runs": runs,
    }


SECTIONS = {
    "generator": bench_generator,
    "ingest": bench_ingest,
    "metrics": bench_metrics,
    "batch": bench_batch,
    "queries": bench_queries,
    "rebuild": bench_rebuild,
    **lifecycle.SECTIONS,  # export, erasure, retention, user_index (bench/lifecycle.py)
}


def main() -> int:
    s = h.Settings()
    h.WORK.mkdir(parents=True, exist_ok=True)
    h.say(f"bench: {h.stamp()} commit {h.git_commit()} settings {s.as_dict()}")
    for name, fn in SECTIONS.items():
        if name not in s.only:
            continue
        h.say(f"== {name}")
        began = time.perf_counter()
        data = fn(s)
        data["section_seconds"] = time.perf_counter() - began
        h.save(name, data, s)
    if "report" in s.only:
        report.render()
    return 0


if __name__ == "__main__":
    sys.exit(main())
