"""Prometheus metrics: ``GET /metrics`` in the text exposition format.

One ``Metrics`` per application, with a registry of its own (two apps in one process,
as in the tests, never share a counter). What updates what:

- the ingest writer calls ``committed()`` once per group commit (``Writer.on_commit``):
  events accepted per type, replays, and the commit's size and duration — counters and
  histograms move once per transaction, not once per event;
- ``http_middleware(metrics)`` counts every request by method, route pattern and status, observes
  its duration, and counts a refused ingest request by reason;
- the rollup runner calls ``rollup_repaired()`` after each pass; erasure and retention
  call ``erased()`` and ``retention_deleted()``;
- the writer's queue depth is read when scraped, never pushed.

Thread safety: every update runs on the event loop's thread (the writer's observer, the
middleware, the rollup runner after its pass), and prometheus_client guards each value
with a lock anyway, so a scrape or an update from another thread reads whole values.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.auth import check_bearer
from app.logs import REQUEST_STAMP, UNMATCHED_ROUTE
from ingest.writer import CommitStats
from schema.events import EVENT_TYPES

# The ``_created`` series (one timestamp per counter) say nothing an operator needs here.
prometheus_client.disable_created_metrics()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OTHER_METHOD: Final = "other"  # any method outside METHODS, so clients can't add series
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
INGEST_ROUTES = frozenset({"/events", "/events/batch"})
# Why an ingest request was refused, by its status (a 408 or a 500 is not a refusal of
# the events but a failure of the request: see analytics_http_requests_total).
REJECT_REASONS: Final = {
    400: "invalid",
    413: "too_large",
    415: "unsupported_media_type",
    422: "idempotency_conflict",
    503: "overloaded",
}

HTTP_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
COMMIT_EVENTS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
COMMIT_SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2)


class Metrics:
    """Every metric the contract lists, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.events_accepted = Counter(
            "analytics_events_accepted",
            "Events committed to the log, counted after each group commit",
            ["event_type"],
            registry=registry,
        )
        self.events_rejected = Counter(
            "analytics_events_rejected",
            "Ingest requests refused, by reason (a refused batch counts once)",
            ["reason"],
            registry=registry,
        )
        self.idempotent_replays = Counter(
            "analytics_idempotent_replays",
            "Ingest requests answered from a stored Idempotency-Key, storing nothing new",
            registry=registry,
        )
        self.http_requests = Counter(
            "analytics_http_requests",
            "HTTP requests answered, by method, route pattern and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_seconds = Histogram(
            "analytics_http_request_duration_seconds",
            "Time from the request reaching the application to its response, by route pattern",
            ["route"],
            buckets=HTTP_SECONDS_BUCKETS,
            registry=registry,
        )
        self.queue_events = Gauge(
            "analytics_writer_queue_events",
            "Events waiting for the writer or in the commit under way",
            registry=registry,
        )
        self.commit_events = Histogram(
            "analytics_commit_events",
            "Events per group commit (one transaction, one fsync)",
            buckets=COMMIT_EVENTS_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "analytics_commit_duration_seconds",
            "Time one group commit's transaction took, fsync included",
            buckets=COMMIT_SECONDS_BUCKETS,
            registry=registry,
        )
        self.rollup_repairs = Counter(
            "analytics_rollup_repairs",
            "Rollup days found different from the log and repaired by reconcile or rebuild",
            registry=registry,
        )
        self.erased_events = Counter(
            "analytics_erased_events",
            "Events deleted from the log by erasure requests",
            registry=registry,
        )
        self.retention_deleted_events = Counter(
            "analytics_retention_deleted_events",
            "Raw events deleted from the log by retention",
            registry=registry,
        )
        # Known label values exist from the start, so a scrape shows them at 0.
        self._accepted = {t: self.events_accepted.labels(t) for t in EVENT_TYPES}
        self._rejected = {s: self.events_rejected.labels(r) for s, r in REJECT_REASONS.items()}
        # Label children by key: a dict lookup per request instead of ``labels()``.
        self._requests: dict[tuple[str, str, int], Counter] = {}
        self._durations: dict[str, Histogram] = {}

    # --- updates --------------------------------------------------------------------

    def committed(self, stats: CommitStats) -> None:
        """One group commit (``Writer.on_commit``)."""
        for event_type, n in stats.events_by_type.items():
            self._accepted[event_type].inc(n)
        if stats.replays:
            self.idempotent_replays.inc(stats.replays)
        events = sum(stats.events_by_type.values())
        if events:  # a transaction that only met stored keys wrote no events
            self.commit_events.observe(events)
            self.commit_seconds.observe(stats.seconds)

    def replayed(self) -> None:
        """A retry answered before reaching the writer (its key was already committed)."""
        self.idempotent_replays.inc()

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        """One answered HTTP request; a refused ingest request is also counted by reason."""
        key = (method, route, status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.http_requests.labels(method, route, str(status))
        counter.inc()
        histogram = self._durations.get(route)
        if histogram is None:
            histogram = self._durations[route] = self.http_seconds.labels(route)
        histogram.observe(seconds)
        if status >= 400 and route in INGEST_ROUTES and status in self._rejected:
            self._rejected[status].inc()

    def rollup_repaired(self, days: int) -> None:
        """A reconcile or rebuild pass (not a dry run) repaired ``days`` rollup days."""
        self.rollup_repairs.inc(days)

    def erased(self, events: int) -> None:
        """An erasure deleted ``events`` events of one user from the log."""
        self.erased_events.inc(events)

    def retention_deleted(self, events: int) -> None:
        """A retention pass deleted ``events`` raw events older than the horizon."""
        self.retention_deleted_events.inc(events)

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """Read the writer's queue depth at every scrape."""
        self.queue_events.set_function(depth)

    def exposition(self) -> bytes:
        """The text exposition format (``prometheus_client.CONTENT_TYPE_LATEST``)."""
        return prometheus_client.generate_latest(self.registry)


def route_of(request: web.Request) -> str:
    """The route pattern (``/events``, ``/static``), never the raw path."""
    resource = request.match_info.route.resource
    return UNMATCHED_ROUTE if resource is None else resource.canonical


def http_middleware(metrics: Metrics | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Stamp when each request reached the app and its route pattern (the access log reads
    both) and, with ``metrics``, count and time it. Put it outermost: it sees the final
    status."""

    def count(request: web.Request, route: str, status: int, began: float) -> None:
        assert metrics is not None
        method = request.method if request.method in METHODS else OTHER_METHOD
        metrics.request(method, route, status, time.perf_counter() - began)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        began, route = request[REQUEST_STAMP] = (time.perf_counter(), route_of(request))
        if metrics is None:
            return await handler(request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # only what the problem middleware lets through
            count(request, route, exc.status, began)
            raise
        count(request, route, response.status, began)
        return response

    return middleware


def metrics_handler(metrics: Metrics, admin_token: str) -> Handler:
    """``GET /metrics``: open, or behind the admin bearer token when one is configured."""

    async def handler(request: web.Request) -> web.Response:
        if admin_token:
            check_bearer(request, admin_token)
        return web.Response(
            body=metrics.exposition(),
            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
        )

    return handler
