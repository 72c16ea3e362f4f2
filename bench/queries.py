"""The ``queries`` section: each analytics query over HTTP and in process, against the same
answer counted with ``COUNT(*)`` on the log.

Every query here carries its own reference: the half-open UTC ranges its answer is made of
(local days and hours computed in this file from ``zoneinfo``, not by the service's
``query.zones``), counted on the log through its ``(event_type, timestamp)`` covering index
— the best the log alone can do, not a table scan. The service's answer must equal it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import harness as h

TYPES = ("view", "click", "location")
_IN_TYPES = "event_type IN ('view', 'click', 'location')"
MICRO = timedelta(microseconds=1)
ROUNDS = 3  # passes over the queries; a p99 is the median of the passes' p99s

# A range of the log: (answer key, first timestamp, end timestamp (exclusive)); None is
# unbounded on that side.
Range = tuple[str, str | None, str | None]


def ts(instant: datetime) -> str:
    """The log's timestamp format (always UTC, microseconds, ``Z``)."""
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def instant(text: str) -> datetime:
    """An RFC 3339 date-time with offset, as the service reads a date-time bound."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def local_days(first: str, last: str, zone: str) -> list[Range]:
    """Each local day of ``zone`` from ``first`` to ``last`` (inclusive): its UTC range."""
    tz = ZoneInfo(zone)
    d, end = date.fromisoformat(first), date.fromisoformat(last)
    out = []
    while d <= end:
        lo = datetime(d.year, d.month, d.day, tzinfo=tz)
        following = d + timedelta(days=1)
        hi = datetime(following.year, following.month, following.day, tzinfo=tz)
        out.append((d.isoformat(), ts(lo), ts(hi)))
        d = following
    return out


def local_hours(first: str, last: str, zone: str) -> list[Range]:
    """Each local clock hour of ``zone`` over the local days ``first`` … ``last``, keyed by
    its start as the service spells it (local time with offset). Steps in UTC hours from
    the first local midnight: exact for a zone whose offset does not change in the range
    (Asia/Kathmandu has kept +05:45 since 1986)."""
    tz = ZoneInfo(zone)
    d0, d1 = date.fromisoformat(first), date.fromisoformat(last) + timedelta(days=1)
    at = datetime(d0.year, d0.month, d0.day, tzinfo=tz).astimezone(UTC)
    end = datetime(d1.year, d1.month, d1.day, tzinfo=tz).astimezone(UTC)
    if at.astimezone(tz).utcoffset() != end.astimezone(tz).utcoffset():
        raise ValueError(f"{zone} changes its offset in {first} … {last}: not a fixed-hour zone")
    out = []
    while at < end:
        out.append((at.astimezone(tz).isoformat(), ts(at), ts(at + timedelta(hours=1))))
        at += timedelta(hours=1)
    return out


@dataclass(frozen=True)
class Query:
    """One measured query: its endpoint and parameters, the shape of its answer
    (``total``, ``by_type``, ``by_day`` or ``series``), an event type filter, and the
    log ranges its answer is made of."""

    name: str
    endpoint: str
    params: dict[str, str]
    shape: str
    ranges: list[Range]
    event_type: str | None = None
    targets: dict[str, float] = field(default_factory=dict)  # e.g. {"p99_ms": 5}
    issue: int = 6  # the issue whose targets it measures

    @property
    def path(self) -> str:
        path = f"/analytics/{self.endpoint}"
        return path + ("?" + urllib.parse.urlencode(self.params) if self.params else "")


def _whole(first: str, last: str) -> list[Range]:
    """UTC days ``first`` … ``last`` as one range."""
    end = date.fromisoformat(last) + timedelta(days=1)
    return [("", f"{first}T00:00:00.000000Z", f"{end.isoformat()}T00:00:00.000000Z")]


def _between(start: str, end: str) -> list[Range]:
    """Date-time bounds: the start rounded up to the log's microseconds, the end inclusive."""
    return [("", ts(instant(start)), ts(instant(end) + MICRO))]


KTM = "Asia/Kathmandu"
CUT_START, CUT_END = "2025-06-10T09:37:12.345678+02:00", "2025-06-16T17:52:48.5Z"

QUERIES: list[Query] = [
    # issue 6: UTC days
    Query("all time", "event-counts", {}, "total", [("", None, None)]),
    Query("type filter", "event-counts", {"event_type": "click"}, "total", [("", None, None)],
          "click"),
    Query("30 days", "event-counts", {"start_date": "2025-06-01", "end_date": "2025-06-30"},
          "total", _whole("2025-06-01", "2025-06-30")),
    Query("30 days, type", "event-counts",
          {"event_type": "view", "start_date": "2025-06-01", "end_date": "2025-06-30"},
          "total", _whole("2025-06-01", "2025-06-30"), "view"),
    Query("7 days", "event-counts", {"start_date": "2025-06-10", "end_date": "2025-06-16"},
          "total", _whole("2025-06-10", "2025-06-16")),
    Query("1 day", "event-counts", {"start_date": "2025-06-15", "end_date": "2025-06-15"},
          "total", _whole("2025-06-15", "2025-06-15")),
    Query("cut days (date-times)", "event-counts",
          {"start_date": "2025-06-10T09:30:00+02:00", "end_date": "2025-06-16T17:45:00Z"},
          "total", _between("2025-06-10T09:30:00+02:00", "2025-06-16T17:45:00Z")),
    Query("by type, 30 days", "event-counts-by-type",
          {"start_date": "2025-06-01", "end_date": "2025-06-30"},
          "by_type", _whole("2025-06-01", "2025-06-30")),
    Query("by day, 30 days", "event-counts-by-day",
          {"start_date": "2025-06-01", "end_date": "2025-06-30"},
          "by_day", local_days("2025-06-01", "2025-06-30", "UTC")),
    # issue 11: local days and hours in a +05:45 zone, bounds inside 15-minute buckets
    Query("30 local days, Kathmandu", "event-counts",
          {"start_date": "2025-06-01", "end_date": "2025-06-30", "tz": KTM}, "total",
          [("", local_days("2025-06-01", "2025-06-30", KTM)[0][1],
            local_days("2025-06-01", "2025-06-30", KTM)[-1][2])],
          targets={"p99_ms": 5.0, "speedup": 100.0}, issue=11),
    Query("cut buckets (date-times)", "event-counts",
          {"start_date": CUT_START, "end_date": CUT_END}, "total", _between(CUT_START, CUT_END),
          targets={"p99_ms": 2.0}, issue=11),
    Query("by type, cut buckets", "event-counts-by-type",
          {"start_date": CUT_START, "end_date": CUT_END}, "by_type",
          _between(CUT_START, CUT_END), targets={"p99_ms": 2.0}, issue=11),
    Query("by day, 365 local days, Kathmandu", "event-counts-by-day",
          {"start_date": "2025-01-01", "end_date": "2025-12-31", "tz": KTM}, "by_day",
          local_days("2025-01-01", "2025-12-31", KTM), targets={"p99_ms": 25.0}, issue=11),
    Query("hourly, 7 local days, Kathmandu", "timeseries",
          {"interval": "hour", "start_date": "2025-06-10", "end_date": "2025-06-16", "tz": KTM},
          "series", local_hours("2025-06-10", "2025-06-16", KTM), targets={"p99_ms": 25.0},
          issue=11),
]  # fmt: skip


# --- the log's answer ----------------------------------------------------------------------


def log_sql(q: Query) -> tuple[str, tuple[Any, ...]]:
    """The statement that counts ``q``'s answer on the log, and its arguments."""
    types = "event_type = ?" if q.event_type else _IN_TYPES
    type_args: tuple[Any, ...] = (q.event_type,) if q.event_type else ()
    if q.shape in ("total", "by_type"):
        ((_, lo, hi),) = q.ranges
        where, args = [types], list(type_args)
        if lo is not None:
            where.append("timestamp >= ?")
            args.append(lo)
        if hi is not None:
            where.append("timestamp < ?")
            args.append(hi)
        sql = (
            f"SELECT event_type, COUNT(*) FROM events WHERE {' AND '.join(where)} "
            "GROUP BY event_type"
        )
        if q.shape == "total":
            sql = f"SELECT COUNT(*) FROM events WHERE {' AND '.join(where)}"
        return sql, tuple(args)
    # Many ranges in one statement: one index range per (range, type).
    ranges = json.dumps([[lo or "", hi or "~"] for _, lo, hi in q.ranges])
    sql = (
        "SELECT r.key, e.event_type, COUNT(*) FROM json_each(?) AS r "
        f"JOIN events AS e ON e.{types} "
        "AND e.timestamp >= r.value->>0 AND e.timestamp < r.value->>1 GROUP BY 1, 2"
    )
    return sql, (ranges, *type_args)


def log_answer(q: Query, rows: list[tuple[Any, ...]]) -> Any:
    """The log's rows in the answer's comparable form."""
    if q.shape == "total":
        return rows[0][0]
    if q.shape == "by_type":
        return {t: n for t, n in rows if n}
    out: dict[str, dict[str, int]] = {}
    for index, event_type, n in rows:
        out.setdefault(q.ranges[index][0], {})[event_type] = n
    return out


def http_answer(q: Query, body: Any) -> Any:
    """The service's JSON answer in the same comparable form (zeros left out)."""
    if q.shape == "total":
        return body["total_events"]
    if q.shape == "by_type":
        return body
    entries = body["days"] if q.shape == "by_day" else body["buckets"]
    key = "date" if q.shape == "by_day" else "start"
    out = {}
    for entry in entries:
        counts = {t: entry[t] for t in TYPES if entry.get(t)}
        if counts:
            out[entry[key]] = counts
    return out


def time_sql(
    conn: sqlite3.Connection, sql: str, args: tuple[Any, ...], budget_s: float
) -> tuple[list[float], list[tuple[Any, ...]]]:
    """Milliseconds per run (after one run that warms the page cache), and the rows."""
    rows = conn.execute(sql, args).fetchall()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
        began = time.perf_counter()
        rows = conn.execute(sql, args).fetchall()
        times.append((time.perf_counter() - began) * 1000)
    return times, rows


# --- in process -------------------------------------------------------------------------


def time_in_process(
    db: Path, queries: list[Query], budget_s: float, rounds: int
) -> tuple[dict[str, list[list[float]]], dict[str, list[list[float]]]]:
    """Milliseconds per call of each query's handler in this process, on the service's own
    store (no HTTP, no server): parsing, planning, the store's statement, the JSON answer.
    ``rounds`` passes over the queries (order alternating), ``budget_s`` per query and pass.
    Returns wall times and CPU times: the process's CPU during a call (the loop's thread
    and the reader thread running its statement; calls run one at a time), which the
    scheduler's stalls of this shared machine do not lengthen."""
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from app.keys import STORE
    from query import handlers
    from schema.sqlite.store import SQLiteStore

    route: dict[str, Callable[[web.Request], Any]] = {
        "event-counts": handlers.event_counts,
        "event-counts-by-type": handlers.event_counts_by_type,
        "event-counts-by-day": handlers.event_counts_by_day,
        "timeseries": handlers.timeseries,
    }

    async def run() -> tuple[dict[str, list[list[float]]], dict[str, list[list[float]]]]:
        store = SQLiteStore(db, answer_cache=False)  # time the query path, not memory
        await store.open()
        app = web.Application()
        app[STORE] = store
        out: dict[str, list[list[float]]] = {q.name: [] for q in queries}
        cpu: dict[str, list[list[float]]] = {q.name: [] for q in queries}
        for q in queries:  # warm
            await route[q.endpoint](make_mocked_request("GET", q.path, app=app))
        gc.collect()  # as the server does once it is up (app/cli.py): no full
        gc.freeze()  # collection walks the long-lived objects in the middle of a query
        try:
            for n in range(rounds):
                for q in queries if n % 2 == 0 else list(reversed(queries)):
                    handler = route[q.endpoint]
                    times: list[float] = []
                    cpu_times: list[float] = []
                    deadline = time.perf_counter() + budget_s
                    while len(times) < 30 or (time.perf_counter() < deadline and len(times) < 2000):
                        request = make_mocked_request("GET", q.path, app=app)
                        began, cpu_began = time.perf_counter(), time.process_time()
                        await handler(request)
                        times.append((time.perf_counter() - began) * 1000)
                        cpu_times.append((time.process_time() - cpu_began) * 1000)
                    out[q.name].append(times)
                    cpu[q.name].append(cpu_times)
        finally:
            gc.unfreeze()
            await store.close()
        return out, cpu

    try:  # the server's event loop (app/cli.py), when installed
        import uvloop
    except ImportError:
        return asyncio.run(run())
    return uvloop.run(run())


def per_round(samples: list[list[float]]) -> dict[str, Any]:
    """p50 and p99 of each round, and their medians."""
    p50 = [h.median(times) for times in samples]
    p99 = [h.percentile(times, 99) for times in samples]
    return {"p50_ms": h.median(p50), "p99_ms": h.median(p99), "p99_ms_rounds": p99,
            "runs": sum(len(times) for times in samples)}  # fmt: skip


# --- the section ----------------------------------------------------------------------------


def bench_queries(s: h.Settings, query_db: Callable[[int], tuple[Path, Any]]) -> dict[str, Any]:
    sizes = []
    for count in s.sizes:
        db, meta = query_db(count)
        events, rolled, quarters = h.rollup_sums(db)
        size: dict[str, Any] = {
            "events": events,
            "rollup_sum": rolled,
            "quarter_rollup_sum": quarters,
            "db_bytes": h.db_bytes(db),
            "bytes_per_event": h.db_bytes(db) / max(events, 1),
            "db_mib_per_million_events": h.db_bytes(db) / max(events, 1) / 1024 / 1024 * 1e6,
            "generated_by": meta,
            "load_average_at_start": h.load_average(),
            "queries": [],
        }
        with h.service(f"queries-{count}", db, extra=["--answer-cache", "false"]) as server:
            bodies = {}
            for q in QUERIES:
                with urllib.request.urlopen(server.url + q.path) as answer:
                    bodies[q.name] = json.loads(answer.read())
            # ROUNDS passes over the queries, order alternating, each pass opened by the
            # same server's /healthz (the floor of this machine's latency over HTTP).
            runs: dict[str, list[dict[str, Any]]] = {q.name: [] for q in QUERIES}
            floor = []
            for n in range(ROUNDS):
                floor.append(h.wrk(server.url + "/healthz", "get.lua", connections=1, threads=1,
                                   seconds=s.query_seconds))  # fmt: skip
                for q in QUERIES if n % 2 == 0 else list(reversed(QUERIES)):
                    w = h.wrk(server.url + q.path, "get.lua", connections=1, threads=1,
                              seconds=s.query_seconds)  # fmt: skip
                    runs[q.name].append(w)
            size["healthz"] = {
                "p50_ms": h.median([w["p50_ms"] for w in floor]),
                "p99_ms": h.median([w["p99_ms"] for w in floor]),
                "p99_ms_rounds": [w["p99_ms"] for w in floor],
            }
            size["server_peak_rss_mib"] = server.rss()
        in_process, in_process_cpu = time_in_process(
            db, QUERIES, budget_s=s.query_seconds, rounds=ROUNDS
        )
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        conn.execute("PRAGMA cache_size = -32768")
        for q in QUERIES:
            body, ws = bodies[q.name], runs[q.name]
            sql, args = log_sql(q)
            times, rows = time_sql(conn, sql, args, budget_s=s.query_seconds)
            count_p50 = h.median(times)
            http_p50 = h.median([w["p50_ms"] for w in ws])
            mine = per_round(in_process[q.name])
            mine_cpu = per_round(in_process_cpu[q.name])
            row = {
                "name": q.name,
                "path": q.path,
                "answer": body if q.shape in ("total", "by_type") else None,
                "equal_to_log": http_answer(q, body) == log_answer(q, rows),
                "http_p50_ms": http_p50,
                "http_p99_ms": h.median([w["p99_ms"] for w in ws]),
                "http_p99_ms_rounds": [w["p99_ms"] for w in ws],
                "http_requests": sum(w["requests"] for w in ws),
                "http_non_2xx": sum(w["non_2xx"] for w in ws),
                "in_process_p50_ms": mine["p50_ms"],
                "in_process_p99_ms": mine["p99_ms"],
                "in_process_p99_ms_rounds": mine["p99_ms_rounds"],
                "in_process_runs": mine["runs"],
                "in_process_cpu_p50_ms": mine_cpu["p50_ms"],
                "in_process_cpu_p99_ms": mine_cpu["p99_ms"],
                "in_process_cpu_p99_ms_rounds": mine_cpu["p99_ms_rounds"],
                "count_sql": sql,
                "count_ranges": len(q.ranges),
                "count_p50_ms": count_p50,
                "count_p99_ms": h.percentile(times, 99),
                "count_runs": len(times),
                "speedup_http": count_p50 / http_p50 if http_p50 else None,
                "speedup_in_process": count_p50 / mine["p50_ms"],
                "targets": q.targets,
                "issue": q.issue,
            }
            size["queries"].append(row)
            h.say(
                f"  query  {events:>10,} {q.name:<34} HTTP p50 {row['http_p50_ms']:6.2f} "
                f"p99 {row['http_p99_ms']:6.2f} ms | in process p50 "
                f"{row['in_process_p50_ms']:7.3f} p99 {row['in_process_p99_ms']:7.3f} ms (CPU p99 "
                f"{row['in_process_cpu_p99_ms']:7.3f}) | "
                f"COUNT(*) p50 {count_p50:8.2f} ms | equal {row['equal_to_log']}"
            )
        conn.close()
        size["load_average_at_end"] = h.load_average()
        sizes.append(size)
    return {"sizes": sizes}
