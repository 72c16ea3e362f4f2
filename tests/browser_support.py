"""Support for the browser tests: the real app on a free port, a headless Chromium, polling.

The app runs in the test's own event loop (aiohttp ``AppRunner``), so a test can add a
test-only middleware in front of it: it records every request the browser makes (method,
path, headers) and can inject faults (a 503 before or after the handler stored the event).
Nothing here touches production code.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from playwright.async_api import Browser, async_playwright

from app.config import Config
from app.factory import create_app
from tests.databases import connect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

# Faults the test middleware can inject into the next POST /events.
FAULT_503_BEFORE_STORE = "503-before-store"  # answer 503 without storing (service overloaded)
FAULT_503_AFTER_STORE = "503-after-store"  # store, then answer 503 (the 202 got lost)
FAULT_400 = "400"  # a client error: must never be retried


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    status: int


@dataclass
class LiveServer:
    """The running app: its URL, database and what the test middleware saw."""

    port: int
    config: Config
    app: web.Application
    seen: list[Seen] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def posts(self, path: str = "/events") -> list[Seen]:
        return [s for s in self.seen if s.method == "POST" and s.path == path]

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        """Rows of the log (payload decoded), read with an independent connection."""
        conn = connect(self.config.db)
        try:
            sql = "SELECT event_id, user_id, event_type, timestamp, payload FROM events"
            args: tuple[str, ...] = ()
            if event_type:
                sql += " WHERE event_type = ?"
                args = (event_type,)
            rows = conn.execute(sql + " ORDER BY event_id", args).fetchall()
        finally:
            conn.close()
        return [
            {
                "event_id": r[0],
                "user_id": r[1],
                "event_type": r[2],
                "timestamp": r[3],
                "payload": orjson.loads(r[4]),
            }
            for r in rows
        ]


def _problem(status: int, title: str, detail: str, headers: dict[str, str]) -> web.Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, "errors": []}
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/problem+json",
        headers=headers,
    )


def _recorder(server: LiveServer):
    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        fault = None
        if request.method == "POST" and request.path == "/events" and server.faults:
            fault = server.faults.pop(0)
        if fault == FAULT_503_BEFORE_STORE:
            response: web.StreamResponse = _problem(
                503, "Service Unavailable", "injected by the test", {"Retry-After": "1"}
            )
        elif fault == FAULT_400:
            response = _problem(400, "Bad Request", "injected by the test", {})
        else:
            response = await handler(request)
            if fault == FAULT_503_AFTER_STORE:
                response = _problem(
                    503, "Service Unavailable", "injected after storing", {"Retry-After": "1"}
                )
        server.seen.append(
            Seen(request.method, request.path, dict(request.headers), response.status)
        )
        return response

    return middleware


@asynccontextmanager
async def live_server(
    tmp_path: Path,
    *,
    allow_localhost_origin: bool = False,
    admin_token: str = "",
    database: str | None = None,
) -> AsyncIterator[LiveServer]:
    """The real app on a free port of 127.0.0.1 with a temp database (or ``database``, a
    ``--db`` value such as the ``database`` fixture's, to run on either backend).

    With ``allow_localhost_origin`` the service allows CORS from ``http://localhost:<port>``:
    a page loaded from that name is cross-origin to ``http://127.0.0.1:<port>``.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = Config(
        db=database or str(tmp_path / "events.db"),
        reconcile_minutes=0,
        access_log=False,
        cors_origins=(f"http://localhost:{port}",) if allow_localhost_origin else (),
        admin_token=admin_token,
    )
    app = create_app(config)
    server = LiveServer(port=port, config=config, app=app)
    app.middlewares.insert(0, _recorder(server))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield server
    finally:
        await runner.cleanup()
        sock.close()


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's headless Chromium (Playwright cannot download browsers here)."""
    if not os.access(CHROMIUM, os.X_OK):
        raise AssertionError(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium. "
            "Install it with `make chromium` (scripts/ensure-chromium); `make test` does this."
        )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def eventually(
    probe: Callable[[], Any], *, within: float = 10.0, what: str = "condition"
) -> Any:
    """Poll ``probe`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)
