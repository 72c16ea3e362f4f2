"""Logs: text or JSON lines written by the log writer thread; every request gets its access
line, under concurrent load too, and nothing queued is lost at shutdown."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from app import logs
from app.config import Config
from app.factory import create_app
from scripts.crash_test import Service
from tests.helpers import view

JSON = {"Content-Type": "application/json"}
ACCESS_FIELDS = {
    "time",
    "level",
    "logger",
    "message",
    "method",
    "route",
    "path",
    "status",
    "duration_ms",
}
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR|DEBUG|CRITICAL) [\w.]+: .*$"
)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``logs.configure`` replaces the root logger's handlers: put pytest's back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def json_lines(text: str) -> list[dict[str, object]]:
    """Every line parsed on its own: the format is one JSON object per line."""
    return [orjson.loads(line) for line in text.splitlines()]


async def served(
    aiohttp_server: Callable[..., TestServer],
    aiohttp_client: Callable[..., TestClient],
    config: Config,
) -> TestClient:
    """The app behind the service's own access logger, as ``serve`` runs it."""
    app = create_app(replace(config, access_log=True))
    return await aiohttp_client(await aiohttp_server(app, **logs.runner_kwargs(True)))


@pytest.mark.server_fault  # it logs an ERROR with a traceback on purpose
async def test_json_lines_carry_the_fields_and_access_lines_the_request(
    aiohttp_server, aiohttp_client, config, restore_logging
) -> None:
    stream = io.StringIO()
    setup = logs.configure("INFO", "json", stream)
    client = await served(aiohttp_server, aiohttp_client, config)
    assert (await client.post("/events", data=orjson.dumps(view()), headers=JSON)).status == 202
    assert (await client.post("/events", data=b"{", headers=JSON)).status == 400
    assert (await client.get("/nowhere/at/all")).status == 404
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("analytics.test").exception("it failed: %s", "cause")
    await client.close()
    setup.stop()

    lines = json_lines(stream.getvalue())
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(line["time"]))
    access = [line for line in lines if line["logger"] == "analytics.access"]
    assert [(a["method"], a["route"], a["path"], a["status"]) for a in access] == [
        ("POST", "/events", "/events", 202),
        ("POST", "/events", "/events", 400),
        ("GET", "unmatched", "/nowhere/at/all", 404),
    ]
    for a in access:
        assert a.keys() == ACCESS_FIELDS
        assert a["level"] == "INFO"
        assert isinstance(a["duration_ms"], float) and a["duration_ms"] >= 0
        assert a["message"] == f"{a['method']} {a['path']} {a['status']} {a['duration_ms']:.1f}ms"
    # Measured with perf_counter, not the loop's millisecond clock: fractions show.
    assert any(a["duration_ms"] != int(a["duration_ms"]) for a in access)
    (error,) = [line for line in lines if line["logger"] == "analytics.test"]
    assert error["level"] == "ERROR" and error["message"] == "it failed: cause"
    assert "Traceback" in str(error["exc_info"]) and "RuntimeError: boom" in str(error["exc_info"])


async def test_text_lines_keep_their_shape(
    aiohttp_server, aiohttp_client, config, restore_logging
) -> None:
    stream = io.StringIO()
    setup = logs.configure("INFO", "text", stream)
    client = await served(aiohttp_server, aiohttp_client, config)
    assert (await client.post("/events", data=orjson.dumps(view()), headers=JSON)).status == 202
    await client.close()
    setup.stop()
    lines = stream.getvalue().splitlines()
    assert lines and all(TEXT_LINE.match(line) for line in lines), lines
    access = [line for line in lines if " analytics.access: " in line]
    assert len(access) == 1
    assert re.search(r"INFO analytics\.access: POST /events 202 \d+\.\dms$", access[0])


async def test_every_one_of_many_simultaneous_requests_gets_its_access_line(
    aiohttp_server, aiohttp_client, config, restore_logging
) -> None:
    stream = io.StringIO()
    setup = logs.configure("INFO", "json", stream)
    client = await served(aiohttp_server, aiohttp_client, config)
    n = 300
    bodies = [orjson.dumps(view(user=f"u{i}")) if i % 3 else b"[]" for i in range(n)]
    responses = await asyncio.gather(
        *(client.post("/events", data=body, headers=JSON) for body in bodies)
    )
    statuses = sorted(r.status for r in responses)
    await client.close()
    setup.stop()
    access = [
        line for line in json_lines(stream.getvalue()) if line["logger"] == "analytics.access"
    ]
    assert len(access) == n
    assert sorted(int(str(a["status"])) for a in access) == statuses
    assert statuses.count(400) == n // 3


def test_records_logged_after_stop_are_still_written(restore_logging) -> None:
    stream = io.StringIO()
    setup = logs.configure("INFO", "text", stream)
    logging.getLogger("analytics.test").info("before")
    setup.stop()
    logging.getLogger("analytics.test").info("after")
    assert [line.rsplit(": ", 1)[1] for line in stream.getvalue().splitlines()] == [
        "before",
        "after",
    ]


def test_a_queued_message_keeps_the_arguments_it_was_logged_with(restore_logging) -> None:
    stream = io.StringIO()
    setup = logs.configure("INFO", "text", stream)
    changing = ["first"]
    logging.getLogger("analytics.test").info("value %s", changing)
    changing[0] = "changed"  # before the writer thread formats the line
    setup.stop()
    assert stream.getvalue().rstrip().endswith("value ['first']")


@pytest.mark.slow
def test_sigterm_writes_every_access_line_before_exit(tmp_path: Path) -> None:
    """The real ``serve``: N simultaneous requests, SIGTERM at once, N access lines."""
    log_path = tmp_path / "service.log"
    service = Service(
        tmp_path / "events.db", "--access-log", "true", "--log-format", "json", log_path=log_path
    )
    service.start()
    n = 200

    async def load() -> list[int]:
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> int:
                body = orjson.dumps(view(user=f"user-{i}"))
                async with session.post(service.url + "/events", data=body, headers=JSON) as r:
                    return r.status

            return await asyncio.gather(*(one(i) for i in range(n)))

    try:
        statuses = asyncio.run(load())
    finally:
        code = service.terminate()
    assert code == 0
    assert statuses == [202] * n
    lines = json_lines(log_path.read_text())
    posts = [
        line
        for line in lines
        if line.get("logger") == "analytics.access" and line["method"] == "POST"
    ]
    assert len(posts) == n
    # Under uvloop the loop's clock ticks in whole milliseconds; the access log's doesn't.
    assert any(p["duration_ms"] != int(p["duration_ms"]) for p in posts)
    messages = [line["message"] for line in lines]
    assert "writer drained, database closed" in messages
    assert messages[-1] == "stopped"  # the last line serve logs, just before it exits


@given(
    created=st.floats(min_value=0, max_value=4e9),
    method=st.sampled_from(["GET", "POST", "OPTIONS", "other"]),
    route=st.sampled_from(["/events", "/docs/static/{name}", "unmatched"]),
    path=st.text(min_size=1, max_size=40),
    status=st.integers(min_value=100, max_value=599),
    ms=st.floats(min_value=0, max_value=1e6),
)
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_an_access_line_is_the_same_without_its_log_record(
    log_format: str, created: float, method: str, route: str, path: str, status: int, ms: float
) -> None:
    """The writer formats access entries straight to text; the line must equal what the
    formatter makes of the entry's LogRecord (what any other handler receives)."""
    formatter = logs.formatter(log_format)
    entry = (created, method, route, path, status, ms)
    assert formatter.format_access(entry) == formatter.format(logs.access_record(entry))  # type: ignore[attr-defined]
