"""The demo page, its service worker and the dashboard, driven in a real headless Chromium
against the real app (temp database, free port). See tests/browser_support.py."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import uuid_utils
from playwright.async_api import BrowserContext, Page

from schema.sqlite.store import SQLiteStore
from schema.storage import WriteGroup
from schema.timestamps import format_ts
from tests.browser_support import (
    ARTIFACTS,
    FAULT_400,
    FAULT_503_AFTER_STORE,
    FAULT_503_BEFORE_STORE,
    LiveServer,
    chromium,
    eventually,
    live_server,
)

TYPES = ("view", "click", "location")
SW_HEADER = "x-sent-by"


# --- helpers ---------------------------------------------------------------------------------


class Console:
    """Console errors and uncaught exceptions of a page (a CSP violation is one)."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


async def open_page(context: BrowserContext, url: str) -> tuple[Page, Console]:
    context.set_default_timeout(10_000)
    page = await context.new_page()
    console = Console(page)
    await page.goto(url)
    return page, console


async def wait_for_worker_control(page: Page) -> None:
    await page.wait_for_function(
        "() => navigator.serviceWorker.controller !== null", timeout=10_000
    )
    await page.locator('#sw-status[data-controlled="true"]').wait_for(timeout=5_000)


async def settled_entry(page: Page, event_type: str, nth: int = 0) -> dict[str, Any]:
    """The nth-newest log entry of a type once it has an answer (ok or error)."""
    entry = page.locator(f'#log li[data-event-type="{event_type}"]').nth(nth)
    await entry.locator("xpath=self::*[@data-state='ok' or @data-state='error']").wait_for(
        timeout=15_000
    )
    return await entry.evaluate(
        """li => ({state: li.dataset.state, route: li.dataset.route,
                   eventId: li.dataset.eventId || null, text: li.innerText})"""
    )


async def get_json(server: LiveServer, path: str, **query: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.url + path, params=query) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


# --- serving ---------------------------------------------------------------------------------


async def test_pages_are_served_with_types_and_security_headers(tmp_path: Path) -> None:
    async with live_server(tmp_path) as server, aiohttp.ClientSession() as session:
        for path, content_type in [
            ("/", "text/html"),
            ("/dashboard", "text/html"),
            ("/service-worker.js", "text/javascript"),
            ("/static/send.js", "text/javascript"),
            ("/static/style.css", "text/css"),
            ("/static/favicon.svg", "image/svg+xml"),
            ("/static/vendor/chart.umd.min.js", "text/javascript"),
        ]:
            async with session.get(server.url + path) as response:
                assert response.status == 200, path
                assert response.content_type == content_type, path
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                assert response.headers["Cache-Control"] == "no-cache"
                etag = response.headers["ETag"]
                if content_type == "text/html":
                    csp = response.headers["Content-Security-Policy"]
                    assert "default-src 'self'" in csp and "script-src 'self'" in csp
                    assert "unsafe-inline" not in csp
                    assert response.headers["Referrer-Policy"]
            async with session.get(server.url + path, headers={"If-None-Match": etag}) as again:
                assert again.status == 304, path
        # An ?api= origin is allowed to be called; anything else never reaches the header.
        async with session.get(
            server.url + "/dashboard", params={"api": "http://127.0.0.1:9/x; script-src *"}
        ) as response:
            csp = response.headers["Content-Security-Policy"]
            assert "connect-src 'self' http://127.0.0.1:9;" in csp
            assert "script-src *" not in csp
        for path in ("/static/nope.js", "/static/../app.py", "/static/vendor/README.md"):
            async with session.get(server.url + path) as response:
                assert response.status == 404, path
                assert response.content_type == "application/problem+json"


# --- the demo page ---------------------------------------------------------------------------


@pytest.mark.browser
async def test_page_load_registers_worker_and_stores_the_view(tmp_path: Path) -> None:
    async with live_server(tmp_path) as server, chromium() as browser:
        context = await browser.new_context()
        page, console = await open_page(context, server.url + "/")
        await wait_for_worker_control(page)
        state = await page.evaluate(
            "navigator.serviceWorker.getRegistration().then(r => r.active && r.active.state)"
        )
        assert state == "activated"

        first = await settled_entry(page, "view")
        assert first["state"] == "ok", first
        assert first["route"] == "page", "the first view must not wait for the worker"
        views = await eventually(lambda: server.events("view"), what="the view event")
        assert len(views) == 1
        assert views[0]["event_id"] == first["eventId"]
        assert views[0]["payload"] == {"url": server.url + "/", "title": "Analytics demo page"}
        user_id = await page.evaluate("localStorage.getItem('analytics-demo.user_id')")
        assert user_id and views[0]["user_id"] == user_id
        assert (await get_json(server, "/analytics/event-counts")) == {"total_events": 1}

        # A second visit: the worker controls the page from the start, the user id is kept.
        await page.reload()
        second = await settled_entry(page, "view")
        assert second["state"] == "ok" and second["route"] == "worker", second
        views = await eventually(lambda: len(server.events("view")) == 2 and server.events("view"))
        assert {v["user_id"] for v in views} == {user_id}
        assert console.errors == []
        await context.close()


@pytest.mark.browser
async def test_click_is_delivered_by_the_service_worker(tmp_path: Path) -> None:
    async with live_server(tmp_path) as server, chromium() as browser:
        context = await browser.new_context()
        page, console = await open_page(context, server.url + "/")
        await wait_for_worker_control(page)
        await settled_entry(page, "view")

        await page.click("#click-me")
        entry = await settled_entry(page, "click")
        assert entry["state"] == "ok", entry
        assert entry["route"] == "worker"
        assert "via service worker" in entry["text"]

        clicks = await eventually(lambda: server.events("click"), what="the click event")
        assert len(clicks) == 1
        assert clicks[0]["event_id"] == entry["eventId"]
        assert clicks[0]["payload"] == {
            "element_id": "click-me",
            "text": "Click me",
            "xpath": '//*[@id="click-me"]',
            "selector": "#click-me",
        }
        # The server saw the request come from the worker, with an idempotency key.
        (post,) = [p for p in server.posts() if p.headers.get("X-Sent-By") == "service-worker"]
        assert post.status == 202
        uuid.UUID(post.headers["Idempotency-Key"])
        assert console.errors == []
        await context.close()


@pytest.mark.browser
async def test_location_with_permission_sends_the_coordinates(tmp_path: Path) -> None:
    async with live_server(tmp_path) as server, chromium() as browser:
        context = await browser.new_context()
        await context.grant_permissions(["geolocation"], origin=server.url)
        await context.set_geolocation({"latitude": 48.8584, "longitude": 2.2945, "accuracy": 25})
        page, console = await open_page(context, server.url + "/")
        await wait_for_worker_control(page)

        await page.click("#get-location")
        entry = await settled_entry(page, "location")
        assert entry["state"] == "ok", entry
        await page.locator('#location-status[data-state="ok"]').wait_for()

        (event,) = await eventually(lambda: server.events("location"), what="the location")
        assert event["event_id"] == entry["eventId"]
        assert event["payload"] == {"latitude": 48.8584, "longitude": 2.2945, "accuracy": 25}
        assert console.errors == []
        await context.close()


@pytest.mark.browser
async def test_location_denied_is_shown_and_nothing_is_sent(tmp_path: Path) -> None:
    async with live_server(tmp_path) as server, chromium() as browser:
        context = await browser.new_context()  # geolocation never granted
        page, _ = await open_page(context, server.url + "/")
        await wait_for_worker_control(page)
        await settled_entry(page, "view")
        posts_before = len(server.posts())

        await page.click("#get-location")
        status = page.locator('#location-status[data-state="error"]')
        await status.wait_for(timeout=10_000)
        assert "denied" in (await status.inner_text()).lower()
        assert await status.get_attribute("role") == "alert"

        await page.wait_for_timeout(500)  # give a wrong implementation time to send
        assert await page.locator('#log li[data-event-type="location"]').count() == 0
        assert server.events("location") == []
        assert len(server.posts()) == posts_before
        await context.close()


@pytest.mark.browser
@pytest.mark.parametrize(
    ("fault", "attempts", "stored"),
    [
        pytest.param(FAULT_503_BEFORE_STORE, 2, 1, id="503-then-202"),
        pytest.param(FAULT_503_AFTER_STORE, 2, 1, id="lost-202-then-replay"),
        pytest.param(FAULT_400, 1, 0, id="4xx-never-retried"),
    ],
)
async def test_worker_retries_transient_failures_only(
    tmp_path: Path, fault: str, attempts: int, stored: int
) -> None:
    async with live_server(tmp_path) as server, chromium() as browser:
        context = await browser.new_context()
        page, _ = await open_page(context, server.url + "/")
        await wait_for_worker_control(page)
        await settled_entry(page, "view")

        server.faults.append(fault)
        await page.click("#click-me")
        entry = await settled_entry(page, "click")

        sent = [p for p in server.posts() if p.headers.get("X-Sent-By") == "service-worker"]
        assert len(sent) == attempts, [s.status for s in sent]
        assert len({s.headers["Idempotency-Key"] for s in sent}) == 1, "one key for all attempts"
        clicks = server.events("click")
        assert len(clicks) == stored
        if stored:
            assert entry["state"] == "ok", entry
            assert [s.status for s in sent] == [503, 202]
            assert clicks[0]["event_id"] == entry["eventId"]
            assert f"after {attempts} attempts" in entry["text"]
            got = await get_json(server, "/analytics/event-counts", event_type="click")
            assert got == {"total_events": 1}
        else:
            assert entry["state"] == "error", entry
            assert "400" in entry["text"]
        await context.close()


# --- the dashboard ---------------------------------------------------------------------------


async def seed(server: LiveServer, days: int = 45) -> None:
    """Events spread over the last ``days`` days (today included), with gaps and a trend."""
    rng = random.Random(5)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = []
    for back in range(days - 1, -1, -1):
        if back in {9, 23}:
            continue  # days without data are zero-filled by the API
        day = today - timedelta(days=back)
        weekend = day.weekday() >= 5
        views = int(rng.randint(60, 110) * (0.6 if weekend else 1.0) * (1 + (days - back) / 60))
        for event_type, n in (
            ("view", views),
            ("click", int(views * rng.uniform(0.25, 0.4))),
            ("location", int(views * rng.uniform(0.04, 0.1))),
        ):
            for _ in range(n):
                moment = day + timedelta(seconds=rng.randrange(86_400))
                if moment > datetime.now(UTC):
                    moment = datetime.now(UTC) - timedelta(seconds=1)
                rows.append(
                    (
                        str(uuid_utils.uuid7()),
                        f"user-{rng.randrange(400)}",
                        event_type,
                        format_ts(moment),
                        orjson.dumps({"url": "https://example.com/"}).decode()
                        if event_type == "view"
                        else "{}"
                        if event_type == "click"
                        else orjson.dumps({"latitude": 1.0, "longitude": 2.0}).decode(),
                    )
                )
    store = SQLiteStore(server.config.db)
    await store.open()
    try:
        await store.append([WriteGroup(rows)])
    finally:
        await store.close()


async def dashboard_numbers(page: Page) -> dict[str, Any]:
    return await page.evaluate(
        """() => {
            const value = (id) => Number(document.getElementById(id).dataset.value);
            const chart = Chart.getChart(document.getElementById('daily-chart'));
            return {
                all: value('total-all'), view: value('total-view'), click: value('total-click'),
                location: value('total-location'), range: value('range-total'),
                days: value('range-days'), labels: chart.data.labels,
                series: Object.fromEntries(chart.data.datasets.map(d => [d.eventType, d.data])),
                refreshes: Number(document.body.dataset.refreshes || 0),
            };
        }"""
    )


async def wait_for_refresh(page: Page, after: int = 0) -> None:
    await page.wait_for_function(
        "(after) => Number(document.body.dataset.refreshes || 0) > after", arg=after
    )


@pytest.mark.browser
async def test_dashboard_shows_what_the_api_answers(tmp_path: Path) -> None:
    async with live_server(tmp_path) as server, chromium() as browser:
        await seed(server)
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page, console = await open_page(context, server.url + "/dashboard?refresh=1")
        await wait_for_refresh(page)
        shown = await dashboard_numbers(page)

        by_type = await get_json(server, "/analytics/event-counts-by-type")
        assert shown["all"] == sum(by_type.values())
        assert {t: shown[t] for t in TYPES} == {t: by_type.get(t, 0) for t in TYPES}
        days = (await get_json(server, "/analytics/event-counts-by-day"))["days"]
        assert len(days) == 30 and shown["days"] == len(days)  # the default: 30 days
        assert shown["labels"] == [d["date"] for d in days]
        assert shown["series"] == {t: [d[t] for d in days] for t in TYPES}
        assert shown["range"] == sum(d[t] for d in days for t in TYPES)
        assert shown["range"] < shown["all"], "the default range is not all time"
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        # A chosen range and type, as a shared link would carry them.
        start, end = days[5]["date"], days[18]["date"]
        await page.goto(f"{server.url}/dashboard?refresh=1&start={start}&end={end}&type=click")
        await wait_for_refresh(page)
        shown = await dashboard_numbers(page)
        total = await get_json(
            server, "/analytics/event-counts", event_type="click", start_date=start, end_date=end
        )
        assert shown["range"] == total["total_events"]
        assert shown["days"] == 14 and set(shown["series"]) == {"click"}
        assert shown["series"]["click"] == [d["click"] for d in days[5:19]]

        # The type filter is a control, too; and the header stays all-time.
        await page.select_option("#event-type", "location")
        await page.wait_for_function(
            "() => Chart.getChart(document.getElementById('daily-chart'))"
            ".data.datasets[0].eventType === 'location'"
        )
        shown = await dashboard_numbers(page)
        assert shown["range"] == sum(d["location"] for d in days[5:19])
        assert shown["all"] == sum(by_type.values())

        # It refreshes itself: a new event shows up without a reload.
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                server.url + "/events",
                json={"user_id": "u1", "event_type": "view", "payload": {"url": "https://x/"}},
            ) as response,
        ):
            assert response.status == 202
        await page.wait_for_function(
            "(n) => Number(document.getElementById('total-all').dataset.value) === n",
            arg=sum(by_type.values()) + 1,
            timeout=5_000,
        )
        assert await page.locator("#error").is_hidden()
        assert console.errors == []
        await context.close()


@pytest.mark.browser
async def test_page_and_dashboard_work_cross_origin(tmp_path: Path) -> None:
    """Pages loaded from http://localhost:<port> talk to http://127.0.0.1:<port>, which
    allows that origin: the worker's request (custom header) needs a CORS preflight."""
    async with live_server(tmp_path, allow_localhost_origin=True) as server, chromium() as browser:
        origin = f"http://localhost:{server.port}"
        context = await browser.new_context()
        page, console = await open_page(context, f"{origin}/?api={server.url}")
        await wait_for_worker_control(page)
        assert (await settled_entry(page, "view"))["state"] == "ok"
        await page.click("#click-me")
        entry = await settled_entry(page, "click")
        assert entry["state"] == "ok" and entry["route"] == "worker", entry
        preflights = [s for s in server.seen if s.method == "OPTIONS" and s.path == "/events"]
        assert preflights and preflights[0].headers["Origin"] == origin
        assert {e["event_type"] for e in server.events()} == {"view", "click"}

        await page.goto(f"{origin}/dashboard?api={server.url}")
        await wait_for_refresh(page)
        shown = await dashboard_numbers(page)
        assert (shown["all"], shown["view"], shown["click"]) == (2, 1, 1)
        assert console.errors == []
        await context.close()


@pytest.mark.browser
async def test_dashboard_shows_an_error_when_the_origin_is_not_allowed(tmp_path: Path) -> None:
    async with live_server(tmp_path) as server, chromium() as browser:  # no CORS origins
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(f"http://localhost:{server.port}/dashboard?api={server.url}")
        banner = page.locator("#error")
        await banner.wait_for(state="visible", timeout=10_000)
        assert "could not load" in (await banner.inner_text()).lower()
        await context.close()
