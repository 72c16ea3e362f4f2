"""The ``before`` section (issue 11): ingest with the 15-minute rollup against the code
before it, side by side, and the rollup's own cost in a group commit.

1. **Side by side.** The service now and the service at ``BENCH_BEFORE`` (default
   ``41fe856``, the code before the 15-minute rollup; its tree is extracted with
   ``git archive`` into ``bench/work/before-<commit>/`` and run with this interpreter) in
   turn, the order alternating between repeats, each on a fresh database: single-event
   ``POST /events`` and ``POST /events/batch`` (100 events per request), both at 64
   connections. Each ratio is now / before within a repeat; medians of the repeats. Other
   changes between the two commits ride along (metrics, the access log's writer thread,
   the read pool, ingest hot-path work), so a third server — now with metrics off — is
   measured as well.
2. **The rollup's own cost.** In this process, on a file with the service's pragmas, the
   append transaction exactly as ``schema.sqlite.store`` writes it (packed insert, daily
   upsert, COMMIT) with and without the 15-minute upsert, alternating, for groups of 32
   and 1000 events: wall and CPU time per commit and their ratios.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import harness as h

COMMIT = os.environ.get("BENCH_BEFORE", "41fe856")
CONNECTIONS = 64
BATCH = 100
# (name, code tree: None is this one, serve flags)
KINDS: list[tuple[str, str | None, list[str]]] = [
    ("before", COMMIT, ["--access-log", "true"]),  # its default configuration
    ("now", None, ["--access-log", "true", "--metrics", "true"]),  # the default configuration
    ("now, metrics off", None, ["--access-log", "true", "--metrics", "false"]),
]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
WORKLOADS = [("single", "post_event.lua", 1), ("batch", "post_batch.lua", BATCH)]


def before_tree(commit: str) -> Path:
    """The source tree at ``commit`` (extracted once, never a worktree of this repo)."""
    full = subprocess.run(
        ["git", "rev-parse", "--verify", f"{commit}^{{commit}}"],
        cwd=h.ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    tree = h.WORK / f"before-{full[:12]}"
    if not (tree / "app").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.Popen(["git", "archive", full], cwd=h.ROOT, stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise RuntimeError(f"git archive {full} failed")
    return tree


def bench_before(s: h.Settings) -> dict[str, Any]:
    trees = {name: before_tree(ref) if ref else h.ROOT for name, ref, _ in KINDS}
    runs: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    for repeat in range(s.repeats):
        order = KINDS if repeat % 2 == 0 else list(reversed(KINDS))
        for name, _, flags in order:
            slug = name.replace(", ", "-").replace(" ", "_")
            db = (Path(s.db_dir) if s.db_dir else h.WORK) / f"before-{slug}.db"
            h.remove_db(db)
            acknowledged = in_flight = 0
            with h.service(f"before-{slug}", db, extra=flags, code=trees[name]) as server:
                for workload, script, size in WORKLOADS:
                    url = server.url + ("/events" if size == 1 else "/events/batch")
                    env = {"BENCH_BATCH": str(size)}
                    for seconds, measured in ((s.warmup, False), (s.duration, True)):
                        if seconds <= 0:
                            continue
                        load = h.load_average()
                        before = server.cpu_seconds()
                        w = h.wrk(url, script, connections=CONNECTIONS, threads=s.threads,
                                  seconds=seconds, env=env)  # fmt: skip
                        after = server.cpu_seconds()
                        acknowledged += w["ok"] * size
                        in_flight += CONNECTIONS * size
                        if not measured:
                            continue
                        w["events_per_s"] = w["rps"] * size
                        w["cpu_us_per_event"] = {
                            part: (after[part] - before[part]) / max(w["requests"] * size, 1) * 1e6
                            for part in after
                        }
                        w["load_average"] = load
                        runs.append({"kind": name, "workload": workload, "repeat": repeat, **w})
                        h.say(
                            f"  before {name:<17} {workload:<6} #{repeat + 1}: "
                            f"{w['events_per_s']:>8.0f} events/s p50 {w['p50_ms']:6.2f} ms "
                            f"p99 {w['p99_ms']:7.2f} ms non-2xx {w['non_2xx']} | CPU/event: "
                            f"loop {w['cpu_us_per_event']['loop']:.0f} us, other "
                            f"{w['cpu_us_per_event']['other']:.0f} us | load {load}"
                        )
            stored, daily, quarters = h.rollup_sums(db)
            ok = (
                acknowledged <= stored <= acknowledged + in_flight
                and daily == stored
                and quarters in (None, stored)  # the code before has no 15-minute rollup
            )
            checks.append(
                {"kind": name, "repeat": repeat, "acknowledged": acknowledged, "stored": stored,
                 "rollup_sum": daily, "quarter_rollup_sum": quarters, "ok": ok}
            )  # fmt: skip
            h.remove_db(db)
            server.log_path.unlink(missing_ok=True)
    return {
        "before_commit": COMMIT,
        "connections": CONNECTIONS,
        "batch_size": BATCH,
        "runs": runs,
        "checks": checks,
        "summary": summarise(runs),
        "append": append_micro(pairs=max(200, 100 * s.repeats)),
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per (kind, workload); ratios to ``before`` within each repeat."""
    out = []
    for workload, _, _ in WORKLOADS:
        for name, _, _ in KINDS:
            mine = [r for r in runs if r["kind"] == name and r["workload"] == workload]
            bases = [b for b in runs if b["kind"] == "before" and b["workload"] == workload]
            ratios = h.ratios_within_repeats(mine, bases, "events_per_s")
            out.append(
                {
                    "kind": name,
                    "workload": workload,
                    "events_per_s": h.median([r["events_per_s"] for r in mine]),
                    "events_per_s_all": [round(r["events_per_s"]) for r in mine],
                    "ratio_to_before": h.median(ratios),
                    "ratios": [round(x, 3) for x in ratios],
                    "p50_ms": h.median([r["p50_ms"] for r in mine]),
                    "p99_ms": h.median([r["p99_ms"] for r in mine]),
                    "non_2xx": sum(r["non_2xx"] for r in mine),
                    "socket_errors": sum(r["socket_errors"] for r in mine),
                    "cpu_us_per_event": {
                        part: h.median([r["cpu_us_per_event"][part] for r in mine])
                        for part in ("loop", "other")
                    },
                }
            )
    return out


# --- the append transaction with and without the 15-minute upsert -------------------------


def _rows(n: int, start: datetime) -> list[tuple[str, str, str, str, str]]:
    """``n`` log rows a second apart from ``start``, as the ingest handler builds them;
    ids grow like UUIDv7s (the unique index grows at its end)."""
    types = ("view", "click", "location")
    rows = []
    for i in range(n):
        at = start + timedelta(seconds=i, microseconds=i % 997)
        us = (at - _EPOCH) // timedelta(microseconds=1)
        event_id = f"{us >> 32:08x}-{(us >> 16) & 0xFFFF:04x}-7{us & 0xFFF:03x}-8000-{i:012x}"
        payload = f'{{"url":"https://shop.example/products/{i}","title":"Product {i}"}}'
        rows.append(
            (event_id, f"user-{i % 97}", types[i % 3], at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
             payload)
        )  # fmt: skip
    return rows


def append_micro(pairs: int, sizes: tuple[int, ...] = (32, 1000)) -> dict[str, Any]:
    """Per group size: the append transaction without (A) and with (B) the 15-minute
    upsert, ``pairs`` times each, alternating which goes first; wall and CPU (this
    thread's) milliseconds per commit, medians and the median of per-pair ratios B/A."""
    from schema.sqlite import store as st
    from schema.sqlite.migrate import migrate

    db = h.WORK / "append-ab.db"
    h.remove_db(db)
    migrate(db)
    conn = sqlite3.connect(db, isolation_level=None)
    for pragma in st._pragmas("FULL", 5000, cache_mib=32):  # the writer's settings
        conn.execute(pragma)
    clock = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)

    def commit(rows: list[tuple[str, str, str, str, str]], quarters: bool) -> tuple[float, float]:
        packed = st._pack_rows(rows)
        wall, cpu = time.perf_counter(), time.thread_time()
        conn.execute("BEGIN IMMEDIATE")
        last_seq, _ = conn.execute(st.LAST_SEQ_SQL).fetchone()  # (MAX(seq), seq_floor)
        conn.execute(st.INSERT_PACKED_EVENTS_SQL, (packed,))
        conn.execute(st.ADD_TO_DAILY_SQL, (last_seq,))
        if quarters:
            conn.execute(st.ADD_TO_QUARTERS_SQL, (last_seq,))
        conn.execute("COMMIT")
        return (time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000

    out: dict[str, Any] = {"pairs": pairs, "synchronous": "FULL", "sizes": []}
    try:
        for size in sizes:
            times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for pair in range(pairs):
                for quarters in (False, True) if pair % 2 == 0 else (True, False):
                    rows = _rows(size, clock)
                    clock += timedelta(seconds=size)  # like live traffic: a bucket at a time
                    times[quarters].append(commit(rows, quarters))
            row: dict[str, Any] = {"events_per_commit": size}
            for i, measure in enumerate(("wall", "cpu")):
                a = [t[i] for t in times[False]]
                b = [t[i] for t in times[True]]
                ratios = [y / x for x, y in zip(a, b, strict=True) if x > 0]
                row[f"{measure}_ms_without"] = statistics.median(a)
                row[f"{measure}_ms_with"] = statistics.median(b)
                row[f"{measure}_ratio"] = statistics.median(ratios)
                quartiles = statistics.quantiles(ratios, n=4)
                row[f"{measure}_ratio_iqr"] = [round(quartiles[0], 3), round(quartiles[2], 3)]
            out["sizes"].append(row)
            h.say(
                f"  append {size:>5} events/commit: wall {row['wall_ms_without']:.2f} -> "
                f"{row['wall_ms_with']:.2f} ms (ratio {row['wall_ratio']:.3f}), CPU "
                f"{row['cpu_ms_without']:.3f} -> {row['cpu_ms_with']:.3f} ms "
                f"(ratio {row['cpu_ratio']:.3f}, IQR {row['cpu_ratio_iqr']})"
            )
    finally:
        conn.close()
        h.remove_db(db)
    return out
