"""Where the event loop's time goes per ``POST /events``, against the do-nothing ceiling;
or per analytics query at 16 connections, against ``/healthz`` on the same server.

    .venv/bin/python bench/profile.py            # the service (default config) and the baseline
    .venv/bin/python bench/profile.py --queries  # the concurrency section's rotations (1M events)

For each server: wrk (64 connections) for ``--seconds``; meanwhile ``py-spy record`` samples
the event-loop thread and /proc gives the CPU time of the server's threads. The loop thread's
CPU per request is split by the py-spy samples into the buckets below (a sample counts for
the first bucket whose function is on its stack). Needs py-spy (bench/requirements.txt).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harness as h

# (bucket, functions any of which on the stack puts a sample there), first match wins.
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("access log (request path)", ("AccessLogger.log", "RequestHandler.log_access")),
    ("metrics", ("http_middleware.<locals>.count", "Metrics.request")),
    ("validation (pydantic)", ("check_event",)),
    ("stamps, rows, answer JSON", ("stamp_events", "_ingest.<locals>.<listcomp>", "_dumps")),
    ("body read and JSON parse", ("_read_json", "post_event (baseline_server.py)")),
    (
        "writer: queue, group commit, hand-off",
        (
            "Writer._run",
            "Writer.submit",
            "SQLiteStore.append",
            "_chain_future",
            "Future.set_result",
        ),
    ),
    ("response: build and send", ("RequestHandler.finish_response", "_accepted")),
    ("our middlewares and handler glue", ("post_event", "_ingest", "middleware")),
    ("aiohttp: parse, route, request", ("RequestHandler.data_received", "RequestHandler.start")),
    ("aiohttp: dispatch", ("RequestHandler._handle_request", "Application._handle")),
]
OTHER = "event loop itself (native: epoll, callbacks, task switches), GC"

# The same for an analytics query (a GET with a few hundred bytes of JSON back).
QUERY_BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("access log (request path)", ("AccessLogger.log", "RequestHandler.log_access")),
    ("metrics", ("http_middleware.<locals>.count", "Metrics.request")),
    ("SQLite statement on the loop's thread", ("sqlite3.Connection", "Cursor.fetchall")),
    ("hand-off to a reader thread (aiosqlite) and back", ("aiosqlite", "_ReadPool")),
    ("tally the statement's rows", ("_tally",)),
    ("the plan's ranges as JSON arguments", ("SQLiteStore.count",)),
    ("plan: split into days, buckets, slivers", ("plan_intervals",)),
    ("local days and hours (zoneinfo)", ("zones.py", "_cut", "_listed_days", "_buckets")),
    ("parse the query string", ("parse_query", "Request.query", "BaseRequest.query")),
    ("answer JSON", ("_json", "<listcomp> (handlers.py", "<dictcomp> (handlers.py")),
    ("response: build and send", ("RequestHandler.finish_response", "json_response")),
    ("our middlewares and handler glue", ("middleware", "handlers.py", "healthz")),
    ("aiohttp: parse, route, request", ("RequestHandler.data_received", "RequestHandler.start")),
    ("aiohttp: dispatch", ("RequestHandler._handle_request", "Application._handle")),
]


def _frame(raw: str) -> str:
    m = re.match(r"(.*) \((.*?):\d+\)$", raw)
    return f"{m.group(1)} ({m.group(2).split('/')[-1]})" if m else raw


def buckets(
    path: Path, table: list[tuple[str, tuple[str, ...]]] = BUCKETS
) -> tuple[collections.Counter[str], int]:
    """Samples of the main thread per bucket, and their total."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        _, _, rest = stack.partition(": ")
        frames = rest.split(";")
        if frames[0] != "MainThread":
            continue
        names = [_frame(f) for f in frames[1:]]
        total += int(n)
        for bucket, functions in table:
            if any(name.startswith(fn) or fn in name for fn in functions for name in names):
                counts[bucket] += int(n)
                break
        else:
            counts[OTHER] += int(n)
    return counts, total


def profile(kind: str, seconds: int) -> dict[str, object]:
    db = h.WORK / "profile.db"
    h.remove_db(db)
    server = (
        h.baseline("profile-baseline")
        if kind == "baseline"
        else h.service("profile", db, access_log=True)  # the default configuration
    )
    out = h.WORK / f"profile-{kind}.txt"
    with server:
        h.wrk(server.url + "/events", "post_event.lua", connections=64, threads=2, seconds=2)
        spy = subprocess.Popen(
            [_py_spy(), "record", "-p", str(server.proc.pid), "-d", str(seconds), "-r", "250",
             "-f", "raw", "-o", str(out), "--threads", "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        before = server.cpu_seconds()
        w = h.wrk(server.url + "/events", "post_event.lua", connections=64, threads=2,
                  seconds=seconds)  # fmt: skip
        after = server.cpu_seconds()
        spy.wait()
    h.remove_db(db)
    loop_us = (after["loop"] - before["loop"]) / max(w["requests"], 1) * 1e6
    other_us = (after["other"] - before["other"]) / max(w["requests"], 1) * 1e6
    counts, total = buckets(out)
    return {"kind": kind, "rps": w["rps"], "loop_us": loop_us, "other_us": other_us,
            "buckets": {b: loop_us * n / total for b, n in counts.items()}}  # fmt: skip


def profile_queries(seconds: int) -> list[dict[str, object]]:
    """Each rotation of the concurrency section on one server (default configuration,
    the 1M-event database), wrk at 16 connections, the event-loop thread sampled."""
    import concurrency
    import run

    db, _ = run.query_db(concurrency.EVENTS)
    flags = ["--access-log", "true", "--metrics", "true"]
    results = []
    with h.service("profile-queries", db, extra=flags) as server:
        for name, paths in concurrency.KINDS:
            rotation = h.WORK / f"profile-{name.strip('/')}.txt"
            rotation.write_text("\n".join(paths) + "\n")
            env = {"BENCH_PATHS": str(rotation)}
            h.wrk(server.url, "get_rotate.lua", connections=16, threads=2, seconds=2, env=env)
            out = h.WORK / f"profile-{name.strip('/')}.raw"
            spy = subprocess.Popen(
                [_py_spy(), "record", "-p", str(server.proc.pid), "-d", str(seconds), "-r",
                 "250", "-f", "raw", "-o", str(out), "--threads", "--nonblocking"]
                + (["--gil"] if os.environ.get("BENCH_PROFILE_GIL") else []),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            before = server.cpu_seconds()
            w = h.wrk(server.url, "get_rotate.lua", connections=16, threads=2, seconds=seconds,
                      env=env)  # fmt: skip
            after = server.cpu_seconds()
            spy.wait()
            loop_us = (after["loop"] - before["loop"]) / max(w["requests"], 1) * 1e6
            other_us = (after["other"] - before["other"]) / max(w["requests"], 1) * 1e6
            counts, total = buckets(out, QUERY_BUCKETS)
            shares = {b: loop_us * n / total for b, n in counts.items()}
            results.append(
                {"kind": name, "rps": w["rps"], "loop_us": loop_us, "other_us": other_us,
                 "buckets": shares}
            )  # fmt: skip
    server.log_path.unlink(missing_ok=True)
    return results


def _py_spy() -> str:
    """py-spy from this interpreter's environment (bench/requirements.txt), else PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else "py-spy"


def print_table(results: list[dict[str, object]], names: list[str], what: str) -> None:
    kinds = [str(r["kind"]) for r in results]
    print(f"| µs of event-loop CPU per request ({what}) | {' | '.join(kinds)} |")
    print("|---|" + "---:|" * len(results))
    for name in names:
        cells = [f"{r['buckets'].get(name, 0.0):.1f}" for r in results]  # type: ignore[union-attr]
        print(f"| {name} | {' | '.join(cells)} |")
    loop = [f"{r['loop_us']:.1f}" for r in results]
    other = [f"{r['other_us']:.1f}" for r in results]
    rps = [f"{r['rps']:,.0f}" for r in results]
    print(f"| **event-loop thread, total** | {' | '.join(loop)} |")
    print(f"| other threads (SQLite readers and writer, log writer) | {' | '.join(other)} |")
    print(f"| requests/s during the profile | {' | '.join(rps)} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--queries", action="store_true", help="the concurrency rotations")
    args = parser.parse_args()
    if args.queries:
        results = profile_queries(args.seconds)
        print_table(results, [b for b, _ in QUERY_BUCKETS] + [OTHER], "queries, 16 connections")
        return 0
    results = [profile("service", args.seconds), profile("baseline", args.seconds)]
    names = [b for b, _ in BUCKETS] + [OTHER]
    print("| µs of event-loop CPU per request | service (default config) | baseline |")
    print("|---|---:|---:|")
    for name in names:
        cells = [f"{r['buckets'].get(name, 0.0):.1f}" for r in results]  # type: ignore[union-attr]
        print(f"| {name} | {' | '.join(cells)} |")
    loop = [f"{r['loop_us']:.1f}" for r in results]
    print(f"| **event-loop thread, total** | {loop[0]} | {loop[1]} |")
    print(f"| other threads (SQLite writer, log writer) | {results[0]['other_us']:.1f} | "
          f"{results[1]['other_us']:.1f} |")  # fmt: skip
    print(
        f"| requests/s during the profile | {results[0]['rps']:,.0f} | {results[1]['rps']:,.0f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
