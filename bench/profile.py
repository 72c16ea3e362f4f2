"""Where the event loop's time goes per ``POST /events``, against the do-nothing ceiling.

    .venv/bin/python bench/profile.py            # the service (default config) and the baseline

For each server: wrk (64 connections) for ``--seconds``; meanwhile ``py-spy record`` samples
the event-loop thread and /proc gives the CPU time of the server's threads. The loop thread's
CPU per request is split by the py-spy samples into the buckets below (a sample counts for
the first bucket whose function is on its stack). Needs py-spy (bench/requirements.txt).
"""

from __future__ import annotations

import argparse
import collections
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


def _frame(raw: str) -> str:
    m = re.match(r"(.*) \((.*?):\d+\)$", raw)
    return f"{m.group(1)} ({m.group(2).split('/')[-1]})" if m else raw


def buckets(path: Path) -> tuple[collections.Counter[str], int]:
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
        for bucket, functions in BUCKETS:
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
            ["py-spy", "record", "-p", str(server.proc.pid), "-d", str(seconds), "-r", "250",
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
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
