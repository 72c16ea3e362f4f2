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
- queries: p50/p99 of each analytics query over HTTP and in process on 1M (and 10M)
  events — UTC days, local days and hours in Asia/Kathmandu, bounds inside 15-minute
  buckets — and the same answers by ``COUNT(*)`` on the log (bench/queries.py).
- concurrency: query throughput at 16 connections (whole-day and mixed rotations) as a
  ratio of /healthz on the same server, and every answer under concurrency checked against
  the same request sent alone (bench/concurrency.py).
- before: ingest now against the code before the 15-minute rollup (BENCH_BEFORE, default
  41fe856), side by side, and the rollup upsert's own cost in a group commit
  (bench/before.py).
- rebuild: ``python -m app rebuild`` of both rollups from the largest database.
- export, erasure, retention, user_index: the data lifecycle (``bench/lifecycle.py``).
- report: the table (stdout, ``bench/results/table.md``) and the PNG plots.

Settings: BENCH_SIZES, BENCH_DURATION (s per measured wrk run), BENCH_WARMUP,
BENCH_REPEATS, BENCH_CONNECTIONS, BENCH_THREADS, BENCH_BATCH_SIZES,
BENCH_BATCH_CONNECTIONS, BENCH_QUERY_SECONDS, BENCH_COST_VARIANTS (0 skips the
services with the access log or the metrics off), BENCH_DB_DIR (where the ingest
databases go; /dev/shm takes fsync out of the measurement), BENCH_ONLY,
BENCH_GENERATOR_COUNT, BENCH_BEFORE.
"""

from __future__ import annotations

import json
import resource
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import before
import concurrency
import dashboard
import harness as h
import lifecycle
import queries
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
                stored, rolled, quarters = h.rollup_sums(db)
                check = {
                    "kind": kind,
                    "repeat": repeat,
                    "acknowledged": acknowledged,
                    "stored": stored,
                    "rollup_sum": rolled,
                    "quarter_rollup_sum": quarters,
                    "lost": max(0, acknowledged - stored),
                    # requests in flight when wrk stopped are committed but never counted
                    "stored_unacknowledged": stored - acknowledged,
                    "in_flight_bound": in_flight_bound,
                }
                check["ok"] = (
                    acknowledged <= stored <= acknowledged + in_flight_bound
                    and rolled == stored
                    and quarters == stored
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
            bases = [b for b in runs if b["kind"] == "baseline" and b["connections"] == conns]
            ratios = h.ratios_within_repeats(mine, bases, "rps")
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
    stored, rolled, quarters = h.rollup_sums(db)
    check = {
        "acknowledged": acknowledged_events,
        "stored": stored,
        "rollup_sum": rolled,
        "quarter_rollup_sum": quarters,
        "lost": max(0, acknowledged_events - stored),
        "ok": acknowledged_events <= stored <= acknowledged_events + in_flight_events
        and rolled == stored
        and quarters == stored,
    }
    h.say(f"  check  batch acknowledged {acknowledged_events} stored {stored} rollup {rolled}")
    h.remove_db(db)
    return {"results": results, "check": check, "peak_rss_mib": server.peak_rss_mib}


# --- generator and the query databases ---------------------------------------------------


def generate(db: Path | str, count: int) -> dict[str, Any]:
    """Run generate_events.py into ``db``, a SQLite file (replaced) or a PostgreSQL URL;
    returns its command and seconds."""
    if isinstance(db, Path):
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
        # A database cached by an older commit: migrate it here, not in the first timed
        # server's start (a new index over 10M events takes ~20 s).
        subprocess.run([h.PY, "-m", "app", "migrate", "--db", str(db)], cwd=h.ROOT, check=True,
                       capture_output=True)  # fmt: skip
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


# --- rebuild -----------------------------------------------------------------------------


def _app_json(*args: str) -> tuple[dict[str, Any], float, float]:
    """``python -m app <args> --json``: its report, wall seconds and CPU seconds."""
    argv = [h.PY, "-m", "app", *args, "--json"]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    out = subprocess.run(argv, cwd=h.ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return json.loads(out.stdout), wall, cpu


def bench_rebuild(s: h.Settings) -> dict[str, Any]:
    """Empty both rollups (daily and 15-minute), then ``python -m app rebuild``; repeated
    (the first run may read a cold page cache), every run checked: each rollup's sum must
    equal the log afterwards, and after the last run a dry-run reconcile must find every
    day and every 15-minute bucket equal to the log."""
    count = max(s.sizes)
    db, _ = query_db(count)
    runs = []
    for repeat in range(max(1, s.repeats)):
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # rebuild from nothing: every day, every bucket
        conn.execute("DELETE FROM daily_event_counts")
        conn.execute("DELETE FROM quarter_hour_event_counts")
        conn.execute("COMMIT")
        conn.close()
        load = h.load_average()
        try:
            report_, wall, cpu = _app_json("rebuild", "--db", str(db))
        except RuntimeError:
            db.with_suffix(".json").unlink(missing_ok=True)  # the cache is not to be trusted
            raise
        events, rolled, quarters = h.rollup_sums(db)
        run = {
            "wall_seconds": wall,
            "cpu_seconds": cpu,
            "report_seconds": report_["ms"] / 1000,
            "longest_transaction_ms": report_["longest_transaction_ms"],
            "days_checked": report_["days_checked"],
            "days_changed": len(report_["days_changed"]),
            "events_counted": report_["events_counted"],
            "rollup_equals_log": rolled == events and quarters == events,
            "load_average": load,
        }
        runs.append(run)
        h.say(
            f"  rebuild {events:,} events #{repeat + 1}: {wall:.2f} s wall, {cpu:.2f} s CPU "
            f"({run['report_seconds']:.2f} s in the pass, {run['days_changed']} days written), "
            f"longest transaction {run['longest_transaction_ms']:.1f} ms, "
            f"daily == log: {rolled == events}, 15-minute == log: {quarters == events} "
            f"| load {load}"
        )
    check, check_wall, _ = _app_json("reconcile", "--db", str(db), "--dry-run")
    h.say(
        f"  reconcile --dry-run after the rebuilds: {check['days_checked']} days checked, "
        f"{len(check['days_changed'])} differ ({check_wall:.1f} s)"
    )
    return {
        "events": events,
        "command": f"python -m app rebuild --db bench/work/{db.name} --json",
        "wall_seconds": h.median([r["wall_seconds"] for r in runs]),
        "wall_seconds_all": [round(r["wall_seconds"], 2) for r in runs],
        "cpu_seconds": h.median([r["cpu_seconds"] for r in runs]),
        "longest_transaction_ms": max(r["longest_transaction_ms"] for r in runs),
        "rollup_equals_log": all(r["rollup_equals_log"] for r in runs),
        "reconcile_check": {
            "days_checked": check["days_checked"],
            "days_differing": len(check["days_changed"]),
        },
        "runs": runs,
    }


SECTIONS = {
    "generator": bench_generator,
    "ingest": bench_ingest,
    "metrics": bench_metrics,
    "batch": bench_batch,
    "queries": lambda s: queries.bench_queries(s, query_db),
    "concurrency": lambda s: concurrency.bench_concurrency(s, query_db),
    "before": before.bench_before,
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
