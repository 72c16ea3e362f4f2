"""The ``concurrency`` section (issue 10): query throughput at 16 connections against
``/healthz`` on the same server in the same run, and every answer under concurrency
checked against the answer to the same request sent alone.

One server (the default configuration: access log and metrics on) on the 1M-event
database. In every repeat, wrk (16 connections, 2 threads) runs ``/healthz``, the
whole-day rotation and the mixed rotation in turn (order alternating between repeats); a
ratio is taken within its repeat, and the medians of the repeats are reported. The CPU
time of the server's threads during each run gives the CPU per request.
"""

from __future__ import annotations

import asyncio
import collections
import os
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness as h

EVENTS = 1_000_000
CONNECTIONS = 16
KTM = "Asia/Kathmandu"


def _path(endpoint: str, **params: str) -> str:
    query = urllib.parse.urlencode(params)
    return f"/analytics/{endpoint}" + (f"?{query}" if query else "")


JUNE = {"start_date": "2025-06-01", "end_date": "2025-06-30"}
CUT = {"start_date": "2025-06-10T09:37:12.345678+02:00", "end_date": "2025-06-16T17:52:48.5Z"}

# Whole UTC days only: every answer comes from the daily rollup.
WHOLE_DAY = [
    _path("event-counts"),
    _path("event-counts", event_type="click"),
    _path("event-counts", **JUNE),
    _path("event-counts", event_type="view", **JUNE),
    _path("event-counts", start_date="2025-06-10", end_date="2025-06-16"),
    _path("event-counts", start_date="2025-06-15", end_date="2025-06-15"),
    _path("event-counts-by-type", **JUNE),
    _path("event-counts-by-day", **JUNE),
]

# What dashboards send: date-time bounds (on and inside 15-minute buckets), by type, by
# day, time series, local days of a +05:45 zone.
MIX = [
    _path("event-counts", **JUNE),
    _path("event-counts", start_date="2025-06-10T09:30:00+02:00", end_date="2025-06-16T17:45:00Z"),
    _path("event-counts", **CUT),
    _path("event-counts", tz=KTM, **JUNE),
    _path("event-counts", event_type="click", tz=KTM, **JUNE),
    _path("event-counts-by-type", **JUNE),
    _path("event-counts-by-type", **CUT),
    _path("event-counts-by-day", **JUNE),
    _path("event-counts-by-day", tz=KTM, **JUNE),
    _path("timeseries", interval="hour", start_date="2025-06-15", end_date="2025-06-15", tz=KTM),
    _path("timeseries", interval="day", tz=KTM, **JUNE),
    _path("timeseries", interval="week", start_date="2025-04-01", end_date="2025-06-30", tz=KTM),
]

KINDS = [("/healthz", ["/healthz"]), ("whole-day", WHOLE_DAY), ("mix", MIX)]


def _rotation(name: str, paths: list[str]) -> Path:
    path = h.WORK / f"concurrency-{name.replace('/', '')}.txt"
    path.write_text("\n".join(paths) + "\n")
    return path


def _alone(url: str, paths: list[str]) -> dict[str, bytes]:
    """Each path's answer to a request sent alone (status 200 required)."""
    out = {}
    for path in paths:
        with urllib.request.urlopen(url + path, timeout=30) as answer:
            out[path] = answer.read()
    return out


def check_answers(url: str, paths: list[str], rounds: int) -> dict[str, Any]:
    """``CONNECTIONS`` clients send every path ``rounds`` times at once (each client
    starting at its own place in the list); every answer must be a 200 with exactly the
    body the same request got alone."""
    import aiohttp

    alone = _alone(url, paths)
    statuses: collections.Counter[int] = collections.Counter()
    distinct: dict[str, set[bytes]] = {path: set() for path in paths}
    errors: list[str] = []

    async def client(session: aiohttp.ClientSession, start: int) -> None:
        for n in range(rounds * len(paths)):
            path = paths[(start + n) % len(paths)]
            try:
                async with session.get(url + path) as answer:
                    statuses[answer.status] += 1
                    distinct[path].add(await answer.read())
            except aiohttp.ClientError as exc:
                errors.append(f"{path}: {exc!r}")

    async def run() -> None:
        connector = aiohttp.TCPConnector(limit=CONNECTIONS)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(client(session, i) for i in range(CONNECTIONS)))

    asyncio.run(run())
    differing = {
        path: len(bodies - {alone[path]})
        for path, bodies in distinct.items()
        if bodies != {alone[path]}
    }
    return {
        "requests": sum(statuses.values()),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "socket_errors": len(errors),
        "errors": errors[:10],
        "paths": len(paths),
        "paths_with_another_answer": differing,
        "ok": set(statuses) == {200} and not errors and not differing,
    }


def bench_concurrency(s: h.Settings, query_db: Callable[[int], tuple[Path, Any]]) -> dict[str, Any]:
    db, _ = query_db(EVENTS)
    runs: list[dict[str, Any]] = []
    rotations = {name: _rotation(name, paths) for name, paths in KINDS}
    flags = ["--access-log", "true", "--metrics", "true"]  # the default configuration
    # BENCH_ANSWER_CACHE=false: the same without the answer cache (the README's A/B)
    flags += ["--answer-cache", os.environ.get("BENCH_ANSWER_CACHE", "true")]
    with h.service("concurrency", db, extra=flags) as server:
        for name, _ in KINDS:  # warm every path's pages and code once
            h.wrk(server.url, "get_rotate.lua", connections=CONNECTIONS, threads=s.threads,
                  seconds=max(1, s.warmup), env={"BENCH_PATHS": str(rotations[name])})  # fmt: skip
        for repeat in range(s.repeats):
            order = KINDS if repeat % 2 == 0 else list(reversed(KINDS))
            for name, _ in order:
                load = h.load_average()
                before = server.cpu_seconds()
                w = h.wrk(
                    server.url,
                    "get_rotate.lua",
                    connections=CONNECTIONS,
                    threads=s.threads,
                    seconds=s.duration,
                    env={"BENCH_PATHS": str(rotations[name])},
                )
                after = server.cpu_seconds()
                w["cpu_us_per_request"] = {
                    part: (after[part] - before[part]) / max(w["requests"], 1) * 1e6
                    for part in after
                }
                w["load_average"] = load
                runs.append({"kind": name, "repeat": repeat, **w})
                cpu = w["cpu_us_per_request"]
                h.say(
                    f"  concurrency {name:<10} #{repeat + 1}: {w['rps']:>8.0f}/s "
                    f"p50 {w['p50_ms']:6.2f} ms p99 {w['p99_ms']:7.2f} ms non-2xx "
                    f"{w['non_2xx']} socket errors {w['socket_errors']} | CPU/request: loop "
                    f"{cpu['loop']:.0f} us, other threads {cpu['other']:.0f} us | load {load}"
                )
        checks = {
            name: check_answers(server.url, paths, rounds=10)
            for name, paths in KINDS
            if name != "/healthz"
        }
        for name, check in checks.items():
            h.say(
                f"  concurrency check {name}: {check['requests']} requests at {CONNECTIONS} at "
                f"once, statuses {check['statuses']}, answers differing from the lone "
                f"request's: {check['paths_with_another_answer'] or 'none'}"
            )
        peak_rss = server.rss()
    server.log_path.unlink(missing_ok=True)  # the access log of ~10^5 requests
    return {
        "events": EVENTS,
        "connections": CONNECTIONS,
        "paths": {name: paths for name, paths in KINDS},
        "runs": runs,
        "summary": summarise(runs),
        "answer_checks": checks,
        "server_peak_rss_mib": peak_rss,
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per kind; each ratio is to ``/healthz`` in the same repeat."""
    out = []
    for name, _ in KINDS:
        mine = [r for r in runs if r["kind"] == name]
        bases = [b for b in runs if b["kind"] == "/healthz"]
        ratios = h.ratios_within_repeats(mine, bases, "rps")
        out.append(
            {
                "kind": name,
                "repeats": len(mine),
                "rps": h.median([r["rps"] for r in mine]),
                "rps_all": [round(r["rps"]) for r in mine],
                "ratio_to_healthz": h.median(ratios),
                "ratios": [round(x, 3) for x in ratios],
                "p50_ms": h.median([r["p50_ms"] for r in mine]),
                "p99_ms": h.median([r["p99_ms"] for r in mine]),
                "non_2xx": sum(r["non_2xx"] for r in mine),
                "socket_errors": sum(r["socket_errors"] for r in mine),
                "timeouts": sum(r["timeouts"] for r in mine),
                "cpu_us_per_request": {
                    part: h.median([r["cpu_us_per_request"][part] for r in mine])
                    for part in ("loop", "other")
                },
                "load_average": [r["load_average"] for r in mine],
            }
        )
    return out
