"""Benchmarks of the data lifecycle (issue 12): sections of ``bench/run.py``, or run alone.

    BENCH_ONLY=export make bench                       # 1M events: throughput and RSS growth
    BENCH_SIZES=10000000 BENCH_ONLY=erasure,retention,user_index make bench
    python bench/lifecycle.py export|erasure|retention|user_index

- export: ``GET /admin/export`` of every event of the 1M database, NDJSON and CSV, from a
  served process; events/s and the growth of the server's resident memory (VmRSS sampled
  every 20 ms, minus VmRSS just before the export). Targets: >= 100,000 events/s, <= 60 MB.
- erasure: on a copy of the largest database, three users of 10,000 events each, spread
  over the whole log (made by renaming the busiest real users' events on the copy), each
  erased with ``rollup.erasure.erase``; seconds and the longest write transaction.
  Targets: <= 1 s, no transaction > 100 ms.
- retention: on a fresh copy of the largest database, ``python -m app retention --before
  2025-07-02 --json`` (half of a year of events); seconds and the longest transaction.
  Target: seconds, no transaction > 100 ms.
- user_index: the ingest cost of the ``(day, user_id)`` index: group commits of 32 and
  1,000 events on copies of the largest database without it, with it, and with a plain
  ``user_id`` index instead, variants interleaved in every round; plus the append SQL
  before this change on the index-less copy. Medians of per-round medians.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harness as h
import orjson
import uuid_utils

from rollup import erasure
from schema.sqlite import store as sqlite_store
from schema.sqlite.store import SQLiteStore

TOKEN = "bench-admin-token"


def _source(s: h.Settings) -> Path:
    """The largest generated database (``bench/run.py``'s cache; built when missing)."""
    from run import query_db  # bench/run.py: the one place that generates databases

    db, _ = query_db(max(s.sizes))
    return db


def _copy(src: Path, name: str) -> Path:
    dst = h.WORK / name
    h.remove_db(dst)
    began = time.perf_counter()
    shutil.copyfile(src, dst)
    h.say(f"  copied {src.name} -> {dst.name} in {time.perf_counter() - began:.0f} s")
    return dst


def _migrate(db: Path) -> None:
    from schema.sqlite.migrate import migrate

    began = time.perf_counter()
    version = migrate(db)
    h.say(f"  {db.name}: schema {version} in {time.perf_counter() - began:.1f} s")


# --- export --------------------------------------------------------------------------


def _vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _one_export(server: h.Server, fmt: str, query: str = "") -> dict[str, Any]:
    """Stream one export (the whole log, or the ``&``-joined ``query`` parameters'
    events), discarding it; RSS sampled meanwhile."""
    pid = server.proc.pid
    before = _vm_rss_mib(pid)
    samples = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(_vm_rss_mib(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    request = urllib.request.Request(
        f"{server.url}/admin/export?format={fmt}{query}",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    lines = size = 0
    began = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as answer:
        cursor = answer.headers["X-Export-Cursor"]
        while chunk := answer.read(1 << 20):
            lines += chunk.count(b"\n")
            size += len(chunk)
    seconds = time.perf_counter() - began
    done.set()
    sampler.join()
    events = lines - 1  # NDJSON: the cursor line; CSV: the header row (no line breaks inside)
    return {
        "format": fmt,
        "events": events,
        "bytes": size,
        "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds),
        "rss_before_mib": round(before, 1),
        "rss_max_mib": round(max(samples), 1),
        "rss_growth_mib": round(max(samples) - before, 1),
        "cursor": cursor,
    }


def measure_exports(
    server: h.Server, events: int, repeats: int, query: str = ""
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One warm-up export, then ``repeats`` of each format (order alternating), each
    checked to hold ``events`` lines: the runs, and per format the median events/s and
    the largest RSS growth."""
    _one_export(server, "ndjson", query)  # warm: the page cache and the code paths
    runs = []
    for repeat in range(max(1, repeats)):
        for fmt in ("ndjson", "csv") if repeat % 2 == 0 else ("csv", "ndjson"):
            run = _one_export(server, fmt, query)
            assert run["events"] == events, run
            runs.append(run)
            h.say(
                f"  export {fmt} #{repeat + 1}: {run['events']:,} events in "
                f"{run['seconds']:.2f} s = {run['events_per_s']:,}/s, RSS "
                f"{run['rss_before_mib']} -> max {run['rss_max_mib']} MiB "
                f"(+{run['rss_growth_mib']})"
            )
    summary = {
        fmt: {
            "events_per_s": h.median([r["events_per_s"] for r in runs if r["format"] == fmt]),
            "events_per_s_all": [r["events_per_s"] for r in runs if r["format"] == fmt],
            "rss_growth_mib_max": max(r["rss_growth_mib"] for r in runs if r["format"] == fmt),
        }
        for fmt in ("ndjson", "csv")
    }
    return runs, summary


def bench_export(s: h.Settings) -> dict[str, Any]:
    from run import query_db

    db, _ = query_db(1_000_000)
    (events,) = sqlite3.connect(db).execute("SELECT COUNT(*) FROM events").fetchone()
    with h.service("export", db, extra=["--admin-token", TOKEN]) as server:
        runs, summary = measure_exports(server, events, s.repeats)
        peak = server.rss()
    return {
        "events": events,
        "command": "GET /admin/export?format=ndjson|csv (whole log), bench/lifecycle.py",
        "summary": summary,
        "server_peak_rss_mib": peak,
        "runs": runs,
    }


# --- erasure -------------------------------------------------------------------------

HEAVY = 10_000


def _make_heavy_users(db: Path, names: list[str]) -> list[int]:
    """On a bench copy only: give each name ``HEAVY`` real events of the busiest users (so
    they lie scattered over the whole log, as a real heavy user's do)."""
    conn = sqlite3.connect(db, isolation_level=None)
    busiest = [
        u for (u,) in conn.execute(
            "SELECT user_id FROM events GROUP BY 1 ORDER BY COUNT(*) DESC LIMIT 60"
        )
    ]  # fmt: skip
    conn.execute('DROP TRIGGER "events#no_update"')
    counts = []
    taken = 0
    for name in names:
        have = 0
        while have < HEAVY:
            user = busiest[taken]
            taken += 1
            (n,) = conn.execute("SELECT COUNT(*) FROM events WHERE user_id = ?", (user,)).fetchone()
            limit = min(n, HEAVY - have)
            conn.execute(
                "UPDATE events SET user_id = ? WHERE seq IN "
                "(SELECT seq FROM events WHERE user_id = ? ORDER BY seq LIMIT ?)",
                (name, user, limit),
            )
            have += limit
        counts.append(have)
    conn.execute(
        'CREATE TRIGGER "events#no_update" BEFORE UPDATE ON events BEGIN '
        "SELECT RAISE(ABORT, 'events is an append-only log: UPDATE is not allowed'); END"
    )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return counts


def bench_erasure(s: h.Settings) -> dict[str, Any]:
    src = _source(s)
    db = _copy(src, "lifecycle-erasure.db")
    _migrate(db)
    names = [f"bench-heavy-{i}" for i in range(1, 4)]
    counts = _make_heavy_users(db, names)
    h.say(f"  users {names}: {counts} events each, spread over the log")

    async def erase_all() -> list[dict[str, Any]]:
        store = SQLiteStore(db)
        await store.open()
        out = []
        try:
            for name in names:
                result = await erasure.erase(store, name)
                out.append(
                    {
                        "events": result.events_deleted,
                        "seconds": round(result.ms / 1000, 3),
                        "transactions": result.transactions,
                        "longest_transaction_ms": round(result.longest_transaction_ms, 2),
                        "median_transaction_ms": result.median_transaction_ms,
                        "p99_transaction_ms": result.p99_transaction_ms,
                    }
                )
                h.say(
                    f"  erase {result.events_deleted:,} events: {result.ms / 1000:.3f} s, "
                    f"{result.transactions} transactions, longest "
                    f"{result.longest_transaction_ms:.1f} ms, median "
                    f"{result.median_transaction_ms:.1f} ms, p99 {result.p99_transaction_ms:.1f} ms"
                )
        finally:
            await store.close()
        return out

    runs = asyncio.run(erase_all())
    conn = sqlite3.connect(db)
    (events,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
    (rolled,) = conn.execute("SELECT SUM(count) FROM daily_event_counts").fetchone()
    (quarters,) = conn.execute("SELECT SUM(count) FROM quarter_hour_event_counts").fetchone()
    conn.close()
    h.remove_db(db)
    return {
        "log_events": events + sum(r["events"] for r in runs),
        "runs": runs,
        "seconds_max": max(r["seconds"] for r in runs),
        "longest_transaction_ms": max(r["longest_transaction_ms"] for r in runs),
        "rollups_equal_log": rolled == events == quarters,
    }


# --- retention -----------------------------------------------------------------------


def bench_retention(s: h.Settings) -> dict[str, Any]:
    src = _source(s)
    runs = []
    for repeat in range(max(1, min(s.repeats, 2))):
        db = _copy(src, "lifecycle-retention.db")
        _migrate(db)
        conn = sqlite3.connect(db)
        (events,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
        rollup_before = conn.execute("SELECT SUM(count) FROM daily_event_counts").fetchone()[0]
        conn.close()
        argv = [h.PY, "-m", "app", "retention", "--db", str(db), "--before", "2025-07-02"]
        began = time.perf_counter()
        out = subprocess.run(
            [*argv, "--json"], cwd=h.ROOT, capture_output=True, text=True, check=False
        )
        wall = time.perf_counter() - began
        if out.returncode != 0:
            raise RuntimeError(f"retention failed:\n{out.stdout}\n{out.stderr}")
        report = json.loads(out.stdout)
        conn = sqlite3.connect(db)
        (left,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
        rollup_after = conn.execute("SELECT SUM(count) FROM daily_event_counts").fetchone()[0]
        conn.close()
        run = {
            "events_before": events,
            "events_deleted": report["events_deleted"],
            "events_left": left,
            "wall_seconds": round(wall, 2),
            "pass_seconds": round(report["ms"] / 1000, 2),
            "transactions": report["transactions"],
            "longest_transaction_ms": report["longest_transaction_ms"],
            "median_transaction_ms": report["median_transaction_ms"],
            "p99_transaction_ms": report["p99_transaction_ms"],
            "rollups_kept": rollup_after == rollup_before,
        }
        runs.append(run)
        h.say(
            f"  retention #{repeat + 1}: {run['events_deleted']:,} of {events:,} events in "
            f"{run['pass_seconds']:.1f} s ({run['transactions']} transactions, longest "
            f"{run['longest_transaction_ms']:.1f} ms, median {run['median_transaction_ms']} ms, "
            f"p99 {run['p99_transaction_ms']} ms), rollups kept: {run['rollups_kept']}"
        )
        h.remove_db(db)
    return {
        "command": "python -m app retention --db <copy of the 10M database> --before 2025-07-02",
        "runs": runs,
    }


# --- the (day, user_id) index's ingest cost --------------------------------------------

OLD_LAST_SEQ_SQL = "SELECT COALESCE(MAX(seq), 0) FROM events"
OLD_INSERT_PACKED_SQL = """
INSERT INTO events (event_id, user_id, event_type, timestamp, payload)
SELECT value->>0, value->>1, value->>2, value->>3, value->>4 FROM json_each(?)
"""
PAYLOADS = {
    "view": '{"url":"https://shop.example.com/products/tents/blue-tent-42","title":"Blue Tent"}',
    "click": '{"element_id":"add-to-cart","text":"Add to cart","xpath":"/html/body/main/button"}',
    "location": '{"latitude":52.520008,"longitude":13.404954,"accuracy":25.0}',
}


class _Rows:
    """Realistic rows: time-ordered ids and timestamps after the log's end, real users."""

    def __init__(self, users: list[str], seed: int = 7) -> None:
        self.users = users
        self.random = random.Random(seed)
        self.clock = 1_767_225_600.0  # 2026-01-01T00:00:00Z, after the generated year

    def take(self, n: int) -> bytes:
        rows = []
        for _ in range(n):
            self.clock += self.random.random() * 0.01
            kind = self.random.choices(("view", "click", "location"), (65, 27, 8))[0]
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.clock))
            micros = int(self.clock % 1 * 1_000_000)
            rows.append(
                [
                    str(uuid_utils.uuid7()),
                    self.random.choice(self.users),
                    kind,
                    f"{stamp}.{micros:06d}Z",
                    PAYLOADS[kind],
                ]
            )
        return orjson.dumps(rows)


def _commit(conn: sqlite3.Connection, packed: bytes, *, old_sql: bool) -> float:
    """One group commit as ``SQLiteStore.append`` does it; milliseconds."""
    began = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    if old_sql:
        (last,) = conn.execute(OLD_LAST_SEQ_SQL).fetchone()
        conn.execute(OLD_INSERT_PACKED_SQL, (packed,))
    else:
        last, _floor = conn.execute(sqlite_store.LAST_SEQ_SQL).fetchone()
        conn.execute(sqlite_store.INSERT_PACKED_EVENTS_SQL, (packed,))
    conn.execute(sqlite_store.ADD_TO_DAILY_SQL, (last,))
    conn.execute(sqlite_store.ADD_TO_QUARTERS_SQL, (last,))
    conn.execute("COMMIT")
    return (time.perf_counter() - began) * 1000


def bench_user_index(s: h.Settings) -> dict[str, Any]:
    src = _source(s)
    with_index = _copy(src, "lifecycle-index-day-user.db")
    _migrate(with_index)  # schema 3 builds the (day, user_id) index
    without = _copy(with_index, "lifecycle-index-none.db")
    plain = _copy(with_index, "lifecycle-index-user.db")
    files = {"day_user_index": with_index, "no_index": without, "user_id_index": plain}
    setup = sqlite3.connect(without, isolation_level=None)
    setup.execute('DROP INDEX "events#day#user_id"')
    users = [u for (u,) in setup.execute("SELECT DISTINCT user_id FROM events")]
    setup.close()
    setup = sqlite3.connect(plain, isolation_level=None)
    setup.execute('DROP INDEX "events#day#user_id"')
    setup.execute('CREATE INDEX "events#user_id" ON events (user_id)')
    setup.close()
    variants = {
        "before (old append SQL, no user index)": (files["no_index"], True),
        "no user index": (files["no_index"], False),
        "(day, user_id) index [shipped]": (files["day_user_index"], False),
        "user_id index": (files["user_id_index"], False),
    }
    conns = {}
    for path in {p for p, _ in variants.values()}:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in sqlite_store._pragmas("FULL", 5000, cache_mib=32):
            conn.execute(pragma)
        conns[path] = conn
    rows = _Rows(users)
    rounds = max(5, s.repeats * 2)
    sizes = {32: 60, 1000: 6}  # commit size -> commits per variant per round
    per_round: dict[str, dict[int, list[float]]] = {v: {n: [] for n in sizes} for v in variants}
    names = list(variants)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate: share the drift
        for name in order:
            path, old = variants[name]
            for size, commits in sizes.items():
                times = [_commit(conns[path], rows.take(size), old_sql=old) for _ in range(commits)]
                per_round[name][size].append(statistics.median(times))
        h.say(f"  round {r + 1}/{rounds} done")
    for conn in conns.values():
        conn.close()
    reference = "no user index"
    result: dict[str, Any] = {"rounds": rounds, "commits_per_round": sizes, "variants": {}}
    for name in names:
        entry = {}
        for size in sizes:
            ratios = [
                a / b
                for a, b in zip(per_round[name][size], per_round[reference][size], strict=True)
            ]
            median_ms = statistics.median(per_round[name][size])
            entry[f"commit_{size}"] = {
                "median_ms": round(median_ms, 3),
                "us_per_event": round(median_ms * 1000 / size, 2),
                "ratio_to_no_index": round(statistics.median(ratios), 3),
                "round_medians_ms": [round(x, 3) for x in per_round[name][size]],
            }
            h.say(
                f"  {name:40s} {size:5d} events/commit: {median_ms:7.2f} ms "
                f"({median_ms * 1000 / size:6.1f} us/event), x{statistics.median(ratios):.3f}"
            )
        result["variants"][name] = entry
    for path in {p for p, _ in variants.values()}:
        h.remove_db(path)
    return result


SECTIONS = {
    "export": bench_export,
    "erasure": bench_erasure,
    "retention": bench_retention,
    "user_index": bench_user_index,
}


def main(argv: list[str]) -> int:
    s = h.Settings()
    h.WORK.mkdir(parents=True, exist_ok=True)
    for name in argv or list(SECTIONS):
        h.say(f"== {name}")
        began = time.perf_counter()
        data = SECTIONS[name](s)
        data["section_seconds"] = time.perf_counter() - began
        h.save(name, data, s)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
