"""The demo page, its service worker and the dashboard, driven in a real headless Chromium
against the real app (temp database, free port). See tests/browser_support.py."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

import aiohttp
import orjson
import pytest
import uuid_utils
from playwright.async_api import BrowserContext, Page

from schema.backends import open_storage
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
async def test_page_load_registers_worker_and_stores_the_view(
    tmp_path: Path, database: str
) -> None:
    async with live_server(tmp_path, database=database) as server, chromium() as browser:
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
    tmp_path: Path, database: str, fault: str, attempts: int, stored: int
) -> None:
    async with live_server(tmp_path, database=database) as server, chromium() as browser:
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

KATHMANDU = ZoneInfo("Asia/Kathmandu")  # UTC+05:45: local midnight is 18:15Z the day before
_PAYLOADS = {
    "view": orjson.dumps({"url": "https://example.com/"}).decode(),
    "click": "{}",
    "location": orjson.dumps({"latitude": 1.0, "longitude": 2.0}).decode(),
}


async def store_events(server: LiveServer, events: list[tuple[str, datetime]]) -> None:
    """Append ``(event_type, instant)`` events to the log and its rollups in one commit."""
    rng = random.Random(len(events))
    rows = [
        (
            str(uuid_utils.uuid7()),
            f"user-{rng.randrange(400)}",
            event_type,
            format_ts(moment),
            _PAYLOADS[event_type],
        )
        for event_type, moment in events
    ]
    store = open_storage(server.config.db)
    await store.open()
    try:
        await store.append([WriteGroup(rows)])
    finally:
        await store.close()


async def seed(server: LiveServer, days: int = 45) -> None:
    """Events spread over the last ``days`` days (today included), with gaps and a trend."""
    rng = random.Random(5)
    now = datetime.now(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    events = []
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
                if moment < now:  # today's events so far
                    events.append((event_type, moment))
    await store_events(server, events)


async def dashboard_state(page: Page) -> dict[str, Any]:
    """What the dashboard shows: the numbers, the chart, the range line and the zone."""
    return await page.evaluate(
        """() => {
            const value = (id) => Number(document.getElementById(id).dataset.value);
            const chart = Chart.getChart(document.getElementById('events-chart'));
            const label = document.getElementById('range-label');
            return {
                all: value('total-all'), view: value('total-view'), click: value('total-click'),
                location: value('total-location'), range: value('range-total'),
                units: value('range-units'), average: value('range-average'),
                labels: chart.data.labels,
                series: Object.fromEntries(chart.data.datasets.map(d => [d.eventType, d.data])),
                refreshes: Number(document.body.dataset.refreshes || 0),
                text: label.textContent, rule: label.dataset.rule, first: label.dataset.first,
                last: label.dataset.last, tz: document.getElementById('time-zone').value,
                shownTz: label.dataset.tz,
                reset: document.getElementById('reset-range').textContent,
                address: Object.fromEntries(new URLSearchParams(location.search)),
            };
        }"""
    )


async def wait_for_refresh(page: Page, after: int = 0) -> None:
    await page.wait_for_function(
        "(after) => Number(document.body.dataset.refreshes || 0) > after", arg=after
    )


async def wait_for_range(page: Page, **shown: str) -> dict[str, Any]:
    """Wait until the range line shows these data attributes (view, tz, rule, first, last)."""
    await page.wait_for_function(
        """(want) => {
            const label = document.getElementById('range-label');
            return Object.entries(want).every(([k, v]) => label.dataset[k] === v);
        }""",
        arg=shown,
    )
    return await dashboard_state(page)


async def choose_view(page: Page, view: str) -> None:
    """Click a view button as a person would (the radio itself is drawn as its label)."""
    await page.click(f"label:has(#view-{view}) span")


def analytics_queries(urls: list[str], path: str = "/analytics/") -> list[dict[str, str]]:
    """The query strings of the requests among ``urls`` whose path starts with ``path``."""
    return [
        dict(parse_qsl(urlsplit(url).query)) for url in urls if urlsplit(url).path.startswith(path)
    ]


def plain(text: str) -> str:
    """Text with the thin and narrow spaces Intl puts around a range's dash made plain."""
    return text.replace("\u2009", " ").replace("\u202f", " ")


def per_day(days: list[dict[str, Any]]) -> dict[str, list[int]]:
    return {t: [d[t] for d in days] for t in TYPES}


@pytest.mark.browser
async def test_dashboard_shows_what_the_api_answers(tmp_path: Path, database: str) -> None:
    async with live_server(tmp_path, database=database) as server, chromium() as browser:
        await seed(server)
        context = await browser.new_context(
            viewport={"width": 1280, "height": 900}, timezone_id="Europe/Berlin", locale="en-US"
        )
        page, console = await open_page(context, server.url + "/dashboard?refresh=1")
        shown = await wait_for_range(page, view="day", tz="Europe/Berlin")

        by_type = await get_json(server, "/analytics/event-counts-by-type")
        assert shown["all"] == sum(by_type.values())
        assert {t: shown[t] for t in TYPES} == {t: by_type.get(t, 0) for t in TYPES}
        berlin = {"tz": "Europe/Berlin"}
        days = (await get_json(server, "/analytics/event-counts-by-day", **berlin))["days"]
        today = datetime.now(ZoneInfo("Europe/Berlin")).date().isoformat()
        assert len(days) == 30 and days[-1]["date"] == today  # the default: up to today
        assert shown["labels"] == [d["date"] for d in days]
        assert shown["series"] == per_day(days)
        assert shown["range"] == sum(d[t] for d in days for t in TYPES)
        assert shown["range"] < shown["all"], "the default range is not all time"
        assert shown["units"] == 30 and shown["average"] == pytest.approx(shown["range"] / 30)
        assert (shown["rule"], shown["first"], shown["last"]) == ("recent", days[0]["date"], today)
        assert shown["text"].startswith("Last 30 days (") and "Europe/Berlin" in shown["text"]
        assert shown["reset"] == "Last 30 days"
        assert shown["address"]["tz"] == "Europe/Berlin"
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        # A chosen range and type, as a shared link would carry them.
        start, end = days[5]["date"], days[18]["date"]
        await page.goto(
            f"{server.url}/dashboard?refresh=1&start={start}&end={end}&type=click&tz=Europe/Berlin"
        )
        shown = await wait_for_range(page, rule="chosen", first=start, last=end)
        total = await get_json(
            server,
            "/analytics/event-counts",
            event_type="click",
            start_date=start,
            end_date=end,
            **berlin,
        )
        assert shown["range"] == total["total_events"]
        assert shown["units"] == 14 and set(shown["series"]) == {"click"}
        assert shown["series"]["click"] == [d["click"] for d in days[5:19]]
        assert shown["text"].endswith("(Europe/Berlin) · clicks")

        # The type filter is a control, too; and the header stays all-time.
        await page.select_option("#event-type", "location")
        await page.wait_for_function(
            "() => Chart.getChart(document.getElementById('events-chart'))"
            ".data.datasets[0].eventType === 'location'"
        )
        shown = await dashboard_state(page)
        assert shown["range"] == sum(d["location"] for d in days[5:19])
        assert shown["all"] == sum(by_type.values())

        # Weeks and months of the same chosen dates: what the time series answers.
        for view in ("week", "month"):
            await choose_view(page, view)
            shown = await wait_for_range(page, view=view, rule="chosen")
            series = await get_json(
                server,
                "/analytics/timeseries",
                interval=view,
                event_type="location",
                start_date=start,
                end_date=end,
                **berlin,
            )
            assert shown["labels"] == [b["start"] for b in series["buckets"]]
            assert shown["series"] == {"location": [b["location"] for b in series["buckets"]]}
            assert shown["units"] == 14, "the average is over the days shown"
            assert shown["address"]["view"] == view
        await choose_view(page, "day")
        await wait_for_range(page, view="day")

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

        # The hourly view of today, for the README's second picture.
        await page.goto(f"{server.url}/dashboard?refresh=60&view=today&tz=Europe/Berlin")
        await wait_for_range(page, view="today", rule="today")
        await page.screenshot(path=str(ARTIFACTS / "dashboard-today.png"), full_page=True)
        assert console.errors == []
        await context.close()


def kathmandu_boundary(back: int = 3) -> tuple[date, list[tuple[str, datetime]]]:
    """A UTC day ``back`` days ago and events on it that fall on two Kathmandu days:
    18:14Z is 23:59 that day, 18:16Z is 00:01 the next; 06:00Z the next day is 11:45."""
    day = datetime.now(UTC).date() - timedelta(days=back)
    at = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return day, [
        ("view", at + timedelta(hours=18, minutes=14)),
        ("view", at + timedelta(hours=18, minutes=16)),
        ("click", at + timedelta(days=1, hours=6)),
    ]


@pytest.mark.browser
async def test_dashboard_runs_in_the_viewers_time_zone(tmp_path: Path) -> None:
    async with live_server(tmp_path) as server, chromium() as browser:
        day, events = kathmandu_boundary()
        await store_events(server, events)
        following = (day + timedelta(days=1)).isoformat()
        # In UTC the two views share a day; in Kathmandu they do not.
        utc_days = (await get_json(server, "/analytics/event-counts-by-day", tz="UTC"))["days"]
        assert next(d for d in utc_days if d["date"] == day.isoformat())["view"] == 2

        context = await browser.new_context(timezone_id="Asia/Kathmandu", locale="en-US")
        urls: list[str] = []
        context.on("request", lambda request: urls.append(request.url))
        page, console = await open_page(context, server.url + "/dashboard?refresh=1")
        shown = await wait_for_range(page, view="day", rule="recent")

        # It picked the viewer's zone (by its current name) and sends it with every request.
        assert shown["tz"] == shown["shownTz"] == "Asia/Kathmandu"
        assert shown["address"]["tz"] == "Asia/Kathmandu"
        queries = analytics_queries(urls)
        assert queries and all(q.get("tz") == "Asia/Kathmandu" for q in queries), queries
        today = datetime.now(KATHMANDU).date().isoformat()
        assert shown["last"] == today

        # It shows exactly what the API answers for that zone, which splits the two views.
        days = (await get_json(server, "/analytics/event-counts-by-day", tz="Asia/Kathmandu"))[
            "days"
        ]
        assert shown["labels"] == [d["date"] for d in days]
        assert shown["series"] == per_day(days)
        by_date = dict(zip(shown["labels"], shown["series"]["view"], strict=True))
        assert (by_date[day.isoformat()], by_date[following]) == (1, 1)
        assert "Asia/Kathmandu" in shown["text"]

        # The date pickers mean local days of the zone: the next day holds the 00:01 view
        # and the 11:45 click (in UTC it would hold only the click).
        urls.clear()
        await page.fill("#start-date", following)
        await page.fill("#end-date", following)
        shown = await wait_for_range(page, rule="chosen", first=following, last=following)
        assert shown["range"] == 2 and shown["series"]["view"] == [1]
        assert shown["series"]["click"] == [1]
        sent = {"start_date": following, "end_date": following, "tz": "Asia/Kathmandu"}
        assert sent in analytics_queries(urls, "/analytics/event-counts-by-day")
        assert console.errors == []
        await context.close()


@pytest.mark.browser
async def test_dashboard_today_and_last_24_hours_by_hour(tmp_path: Path) -> None:
    async with live_server(tmp_path) as server, chromium() as browser:
        now = datetime.now(UTC)
        today = now.astimezone(KATHMANDU).date()
        midnight = datetime.combine(today, time(), KATHMANDU).astimezone(UTC)
        moments = [
            midnight - timedelta(minutes=1),  # 23:59 yesterday: not today
            midnight + timedelta(minutes=1),
            now - timedelta(hours=5),
            now - timedelta(minutes=90),
            now - timedelta(minutes=1),
            now - timedelta(hours=30),  # before the last 24 hours
        ]
        events = [(TYPES[i % 3], m) for i, m in enumerate(moments) if m < now]
        await store_events(server, events)

        context = await browser.new_context(timezone_id="Asia/Kathmandu", locale="en-US")
        page, console = await open_page(context, server.url + "/dashboard?refresh=1")
        await wait_for_range(page, view="day")

        def hours_begun(buckets: list[dict[str, Any]], moment: datetime) -> int:
            return sum(1 for b in buckets if datetime.fromisoformat(b["start"]) <= moment)

        before = datetime.now(UTC)
        await choose_view(page, "today")
        shown = await wait_for_range(page, view="today", rule="today")
        assert shown["address"]["view"] == "today"
        assert shown["first"] == shown["last"] == today.isoformat()

        # Exactly what the API answers for today's local hours ...
        answer = await get_json(
            server,
            "/analytics/timeseries",
            interval="hour",
            start_date=today.isoformat(),
            end_date=today.isoformat(),
            tz="Asia/Kathmandu",
        )
        buckets = answer["buckets"]
        assert shown["labels"] == [b["start"] for b in buckets]
        assert shown["series"] == {t: [b[t] for b in buckets] for t in TYPES}
        assert shown["labels"][0] == f"{today.isoformat()}T00:00:00+05:45" and len(buckets) == 24
        # ... which is the log counted by local hour, independently.
        expected: dict[str, int] = {}
        for _, moment in events:
            local = moment.astimezone(KATHMANDU)
            if local.date() == today:
                key = local.replace(minute=0, second=0, microsecond=0).isoformat()
                expected[key] = expected.get(key, 0) + 1
        totals = [sum(shown["series"][t][i] for t in TYPES) for i in range(len(buckets))]
        assert {k: n for k, n in zip(shown["labels"], totals, strict=True) if n} == expected
        # The average is over today's hours so far (counted when it was drawn).
        after = datetime.now(UTC)
        assert hours_begun(buckets, before) <= shown["units"] <= hours_begun(buckets, after)
        assert shown["average"] == pytest.approx(sum(expected.values()) / shown["units"])
        assert shown["text"].startswith("Today (") and "Asia/Kathmandu" in shown["text"]
        assert await page.locator("#start-date").is_disabled()  # dates are for longer views

        # The last 24 hours: the API's default for hours, up to now.
        await choose_view(page, "24h")
        await wait_for_range(page, view="24h", rule="last-24-hours")

        async def same_as_api() -> dict[str, Any] | None:
            state = await dashboard_state(page)
            answer = await get_json(
                server, "/analytics/timeseries", interval="hour", tz="Asia/Kathmandu"
            )
            starts = [b["start"] for b in answer["buckets"]]
            return state if state["labels"] == starts else None  # (an hour may just have turned)

        shown = await eventually(same_as_api, what="the last 24 hours as the API answers them")
        assert len(shown["labels"]) == 24 and shown["units"] == 24
        window_start = datetime.fromisoformat(shown["labels"][0])
        assert shown["range"] == sum(1 for _, m in events if m >= window_start)
        assert shown["text"].startswith("Last 24 hours (since ")
        assert console.errors == []
        await context.close()


@pytest.mark.browser
async def test_dashboard_zone_picker_changes_the_answers(tmp_path: Path) -> None:
    async with live_server(tmp_path) as server, chromium() as browser:
        day, events = kathmandu_boundary()
        await store_events(server, events)
        following = (day + timedelta(days=1)).isoformat()
        context = await browser.new_context(timezone_id="UTC", locale="en-US")
        urls: list[str] = []
        context.on("request", lambda request: urls.append(request.url))
        page, console = await open_page(context, server.url + "/dashboard?refresh=1")
        shown = await wait_for_range(page, view="day", tz="UTC")
        by_date = dict(zip(shown["labels"], shown["series"]["view"], strict=True))
        assert (by_date[day.isoformat()], by_date[following]) == (2, 0)

        await page.select_option("#time-zone", "Asia/Kathmandu")
        shown = await wait_for_range(page, view="day", tz="Asia/Kathmandu")
        days = (await get_json(server, "/analytics/event-counts-by-day", tz="Asia/Kathmandu"))[
            "days"
        ]
        assert shown["labels"] == [d["date"] for d in days]
        assert shown["series"] == per_day(days)
        by_date = dict(zip(shown["labels"], shown["series"]["view"], strict=True))
        assert (by_date[day.isoformat()], by_date[following]) == (1, 1)
        assert shown["address"]["tz"] == "Asia/Kathmandu"
        assert analytics_queries(urls, "/analytics/event-counts-by-day")[-1] == {
            "tz": "Asia/Kathmandu"
        }

        # The zone is part of the address: a reload (or a shared link) keeps it.
        await page.reload()
        shown = await wait_for_range(page, view="day", tz="Asia/Kathmandu")
        assert shown["tz"] == "Asia/Kathmandu"
        # An old spelling is read as the current name; an unknown one as the viewer's zone.
        await page.goto(server.url + "/dashboard?tz=Asia/Katmandu")
        shown = await wait_for_range(page, tz="Asia/Kathmandu")
        await page.goto(server.url + "/dashboard?tz=Mars/Olympus_Mons")
        shown = await wait_for_range(page, tz="UTC")
        assert shown["address"]["tz"] == "UTC"
        assert console.errors == []
        await context.close()


@pytest.mark.browser
async def test_dashboard_says_which_default_range_it_shows(tmp_path: Path) -> None:
    """Issue 10, fault 7: the May 2025 sample, then a few events today."""
    async with live_server(tmp_path) as server, chromium() as browser:
        sample = [
            (TYPES[n % 3], datetime(2025, 5, 1 + n % 29, 8 + n % 12, tzinfo=UTC))
            for n in range(200)
        ]
        await store_events(server, sample)
        context = await browser.new_context(timezone_id="UTC", locale="en-US")
        page, console = await open_page(context, server.url + "/dashboard?refresh=1")

        # Only old events: the 30 days up to the newest day with events, and it says so.
        shown = await wait_for_range(page, view="day", rule="newest")
        assert (shown["first"], shown["last"]) == ("2025-04-30", "2025-05-29")
        assert plain(shown["text"]) == (
            "No events in the last 30 days — showing the 30 days up to the newest day with "
            "events (Apr 30 – May 29, 2025, UTC) · all types"
        )
        assert shown["range"] == 200 and shown["units"] == 30
        assert shown["average"] == pytest.approx(200 / 30), "the average is over the days shown"
        days = (await get_json(server, "/analytics/event-counts-by-day"))["days"]
        assert shown["labels"] == [d["date"] for d in days]

        # Weeks and months follow the same rule.
        for view, first in (("week", "2025-03-10"), ("month", "2024-06-01")):
            await choose_view(page, view)
            shown = await wait_for_range(page, view=view, rule="newest")
            assert (shown["first"], shown["last"]) == (first, "2025-05-29")
            assert shown["text"].startswith(f"No events in the last 12 {view}s — showing the 12 ")
            assert shown["reset"] == f"Last 12 {view}s"
            answer = await get_json(
                server,
                "/analytics/timeseries",
                interval=view,
                start_date=first,
                end_date="2025-05-29",
            )
            assert shown["labels"] == [b["start"] for b in answer["buckets"]]
            assert shown["range"] == 200
        await choose_view(page, "day")
        await wait_for_range(page, view="day", rule="newest")

        # A few events today: the last 30 days up to today (not the 578 days since May 2025).
        async with aiohttp.ClientSession() as session:
            for event_type in ("view", "view", "click"):
                body = {"user_id": "u1", "event_type": event_type, "payload": {}}
                if event_type == "view":
                    body["payload"] = {"url": "https://x/"}
                async with session.post(server.url + "/events", json=body) as response:
                    assert response.status == 202
        today = datetime.now(UTC).date()
        shown = await wait_for_range(page, view="day", rule="recent", last=today.isoformat())
        assert shown["first"] == (today - timedelta(days=29)).isoformat()
        assert shown["text"].startswith("Last 30 days (") and shown["text"].endswith(
            "UTC) · all types"
        )
        assert shown["range"] == 3 and shown["units"] == 30
        assert shown["average"] == pytest.approx(3 / 30)
        assert shown["all"] == 203
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
        shown = await dashboard_state(page)
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
