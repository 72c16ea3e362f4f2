"""The dashboard's raw-events panel in a real headless Chromium: "Export CSV" downloads the
range shown with the admin token typed into the page (kept in memory only), and the retention
horizon is shown when the range reaches before it."""

from __future__ import annotations

import asyncio
import csv
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import uuid_utils

from app.keys import RUNNER, STORE
from schema.storage import WriteGroup
from tests.browser_support import chromium, live_server

pytestmark = pytest.mark.browser
TOKEN = "dashboard-admin-token"
PAYLOAD = '{"url":"https://example.com/a,\\"b\\"","title":"line\\nbreak"}'


def read_csv(path: str) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as file:
        return list(csv.reader(file))


def days_back(n: int) -> date:
    return datetime.now(UTC).date() - timedelta(days=n)


async def test_export_csv_of_the_range_with_the_token_in_memory_only(
    tmp_path: Path, database: str
) -> None:
    async with (
        live_server(tmp_path, admin_token=TOKEN, database=database) as server,
        chromium() as browser,
    ):
        rows = []
        for back in range(10, 0, -1):
            day = days_back(back).isoformat()
            for hour in range(0, 24, 3):
                rows.append(
                    (str(uuid_utils.uuid7()), f"u{hour}", "view", f"{day}T{hour:02d}:10:00.000000Z", PAYLOAD)
                )  # fmt: skip
        await server.app[STORE].append([WriteGroup(rows)])
        start, end = days_back(8).isoformat(), days_back(3).isoformat()

        context = await browser.new_context(accept_downloads=True)
        page = await context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        await page.goto(f"{server.url}/dashboard?start={start}&end={end}&refresh=60")
        await page.fill("#admin-token", TOKEN)
        async with page.expect_download() as info:
            await page.click("#export-csv")
        download = await info.value
        records = await asyncio.to_thread(read_csv, str(await download.path()))
        assert records[0] == ["event_id", "user_id", "event_type", "timestamp", "payload"]
        assert len(records) - 1 == 6 * 8  # six days, eight events each
        assert all(start <= r[3][:10] <= end for r in records[1:])
        assert records[1][4] == PAYLOAD
        await page.locator("#export-status", has_text="48 events").wait_for()
        assert download.suggested_filename == f"events-{start}-{end}.csv"

        # the token is nowhere but in the page's memory
        assert TOKEN not in page.url
        storage = await page.evaluate(
            "() => JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage),"
            " document.cookie])"
        )
        assert TOKEN not in storage
        assert await context.cookies() == []
        assert errors == []

        # retention: the panel names the horizon, and the export starts there
        await server.app[RUNNER].expire(days_back(5), trigger="http")
        horizon = days_back(5).isoformat() + "T00:00:00.000000Z"
        await page.fill("#admin-token", "")
        await page.fill("#admin-token", TOKEN)
        await page.dispatch_event("#admin-token", "change")
        note = page.locator("#horizon-note")
        await note.wait_for(state="visible")
        assert horizon in (await note.text_content() or "")
        async with page.expect_download() as info:
            await page.click("#export-csv")
        records = (await asyncio.to_thread(read_csv, str(await (await info.value).path())))[1:]
        assert len(records) == 3 * 8 and min(r[3] for r in records) >= horizon
        await context.close()


async def test_a_wrong_token_is_shown_not_stored(tmp_path: Path) -> None:
    async with live_server(tmp_path, admin_token=TOKEN) as server, chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{server.url}/dashboard?refresh=60")
        await page.click("#export-csv")
        await page.locator("#export-status", has_text="admin token first").wait_for()
        await page.fill("#admin-token", "wrong")
        await page.click("#export-csv")
        await page.locator("#export-status", has_text="not valid").wait_for()
        assert await page.evaluate("() => localStorage.length + sessionStorage.length") == 0
