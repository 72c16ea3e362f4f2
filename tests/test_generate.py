"""generate_events.py: realistic, valid, deterministic sample data, written through the same
append path as the API (so the API's counts equal the log), or posted to a running service."""

from __future__ import annotations

import itertools
import os
import random
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from aiohttp.test_utils import TestClient

import generate_events as gen
from app.config import Config
from app.factory import create_app
from schema.events import check_event
from schema.timestamps import format_ts, parse_ts
from tests import helpers
from tests.databases import connect

ROOT = Path(__file__).resolve().parent.parent
Row = tuple[str, str, str, str, str]


async def generate(*args: str) -> gen.Summary:
    """Run the generator in-process, as the command line would (without progress output)."""
    return await gen.run(gen.parse_args(["--no-progress", *args]))


def read_rows(db: str | Path) -> list[Row]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT event_id, user_id, event_type, timestamp, payload FROM events ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


def scalar(db: str | Path, sql: str, *args: Any) -> Any:
    conn = connect(str(db))
    try:
        return conn.execute(sql, args).fetchone()[0]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> list[Row]:
    """The default run (5,000 events, May 2025), generated once for the read-only tests."""
    db = tmp_path_factory.mktemp("sample") / "events.db"
    assert gen.main(["--db", str(db), "--seed", "2025", "--no-progress"]) == 0
    return read_rows(db)


# --- the default sample --------------------------------------------------------------


def test_default_run_has_the_default_count_within_the_default_days(sample: list[Row]) -> None:
    assert len(sample) == gen.DEFAULT_COUNT == 5000
    stamps = [row[3] for row in sample]
    assert min(stamps) >= "2025-05-01T00:00:00.000000Z"
    assert max(stamps) <= "2025-05-29T23:59:59.999999Z"
    assert {s[:10] for s in stamps} == {f"2025-05-{d:02d}" for d in range(1, 30)}


def test_timestamps_are_in_the_log_format_and_rows_in_time_order(sample: list[Row]) -> None:
    stamps = [row[3] for row in sample]
    assert all(format_ts(parse_ts(s)) == s for s in stamps)
    assert stamps == sorted(stamps)


def test_type_mix_is_within_the_stated_ranges(sample: list[Row]) -> None:
    counts = Counter(row[2] for row in sample)
    share = {t: n / len(sample) for t, n in counts.items()}
    assert 0.60 <= share["view"] <= 0.70, share
    assert 0.20 <= share["click"] <= 0.30, share
    assert 0.05 <= share["location"] <= 0.10, share


def test_every_event_passes_the_api_validation(sample: list[Row]) -> None:
    for _, user_id, event_type, _, payload in sample:
        body = {"user_id": user_id, "event_type": event_type, "payload": orjson.loads(payload)}
        event, errors = check_event(body)
        assert errors == [] and event is not None, (body, errors)


def test_payloads_have_the_fields_of_their_type(sample: list[Row]) -> None:
    for _, _, event_type, _, raw in sample:
        payload = orjson.loads(raw)
        if event_type == "view":
            assert payload["url"].startswith(gen.SITE) and payload["title"]
        elif event_type == "click":
            assert payload["xpath"].startswith("/html/body/")
            assert (
                payload["element_id"] is None or payload["selector"] == "#" + payload["element_id"]
            )
        else:
            assert set(payload) == {"latitude", "longitude", "accuracy"}


def test_locations_are_plausible_fixes(sample: list[Row]) -> None:
    fixes = [orjson.loads(row[4]) for row in sample if row[2] == "location"]
    assert fixes
    for fix in fixes:
        assert -90 <= fix["latitude"] <= 90 and -180 <= fix["longitude"] <= 180
        assert 1 <= fix["accuracy"] <= 5_000  # metres: GPS to cell tower, not continents
        # The audience lives in Europe and North America.
        assert 10 <= fix["latitude"] <= 72 and -170 <= fix["longitude"] <= 45, fix


def test_a_users_locations_come_from_one_home_area(sample: list[Row]) -> None:
    by_user: defaultdict[str, list[tuple[float, float]]] = defaultdict(list)
    for _, user, event_type, _, raw in sample:
        if event_type == "location":
            fix = orjson.loads(raw)
            by_user[user].append((fix["latitude"], fix["longitude"]))
    for points in by_user.values():
        lats, lons = zip(*points, strict=True)
        assert max(lats) - min(lats) < 0.5 and max(lons) - min(lons) < 0.5  # ~50 km


def test_event_ids_are_uuid7_of_the_event_timestamp(sample: list[Row]) -> None:
    ids = [row[0] for row in sample]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # time-ordered: the unique index only grows at its end
    for event_id, _, _, timestamp, _ in sample:
        parsed = uuid.UUID(event_id)
        assert str(parsed) == event_id  # canonical, lowercase
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        moment = parse_ts(timestamp)
        millis = int(moment.timestamp()) * 1000 + moment.microsecond // 1000
        assert parsed.int >> 80 == millis


def test_sessions_start_with_a_view_and_clicks_belong_to_the_viewed_page(
    sample: list[Row],
) -> None:
    traffic = gen.Traffic(gen.Options(count=1), seed=2025)  # the same site map as the sample
    elements = {page.url: {json for json, _ in page.elements} for page in traffic.pages}
    last_view: dict[str, str] = {}
    matched = clicks = 0
    for _, user, event_type, _, raw in sample:
        if user not in last_view:
            assert event_type == "view"  # a user's first event opens a session
        if event_type == "view":
            last_view[user] = orjson.loads(raw)["url"]
        elif event_type == "click":
            clicks += 1
            matched += raw in elements[last_view[user]]
    # Two sessions of one user may overlap in time; nearly every click still matches.
    assert matched >= 0.95 * clicks


def test_traffic_follows_a_daily_and_weekly_rhythm(sample: list[Row]) -> None:
    per_hour = Counter(int(row[3][11:13]) for row in sample)
    assert min(per_hour.values()) < 0.6 * max(per_hour.values())
    per_day = Counter(row[3][:10] for row in sample)
    weekend = [n for d, n in per_day.items() if date.fromisoformat(d).weekday() >= 5]
    weekday = [n for d, n in per_day.items() if date.fromisoformat(d).weekday() < 5]
    assert sum(weekend) / len(weekend) < 0.85 * sum(weekday) / len(weekday)


def test_activity_follows_each_users_local_clock_through_daylight_saving() -> None:
    """Users live in real IANA zones: their busy hours move by an hour in UTC when their
    clocks change, as real visitors' do (the time-zone tests rely on data like this)."""
    users = gen.build_users(400, random.Random(5))
    names = [z.key for z in users.zones]
    assert {"America/New_York", "Europe/Berlin"} & set(names)
    winter, summer = users.offsets_on(date(2025, 1, 15)), users.offsets_on(date(2025, 7, 15))
    for name, jan, jul in zip(names, winter, summer, strict=True):
        if name in ("America/New_York", "Europe/Berlin", "Europe/London"):
            assert jul - jan == 3600, name


def _noon_offset(day: date, zone: ZoneInfo) -> timedelta | None:
    return datetime(day.year, day.month, day.day, 12, tzinfo=zone).utcoffset()


@pytest.mark.slow
async def test_a_year_of_data_covers_every_dst_change_of_the_tested_zones(tmp_path: Path) -> None:
    db = tmp_path / "year.db"
    await generate(
        "--db",
        str(db),
        "--count",
        "60000",
        "--seed",
        "9",
        "--start",
        "2025-01-01",
        "--end",
        "2025-12-31",
    )
    days = {row[3][:10] for row in read_rows(db)}
    zones = ("Europe/Berlin", "America/New_York", "America/St_Johns", "Australia/Lord_Howe")
    for zone in map(ZoneInfo, (*zones, "Pacific/Chatham")):
        year = [date(2025, 1, 1) + timedelta(days=n) for n in range(365)]
        changes = [
            d for d, e in itertools.pairwise(year) if _noon_offset(d, zone) != _noon_offset(e, zone)
        ]
        assert len(changes) == 2, zone
        for day in changes:  # the UTC days around each change hold events
            assert {day.isoformat(), (day + timedelta(days=1)).isoformat()} <= days, (zone, day)


def test_users_have_sessions_of_several_events(sample: list[Row]) -> None:
    per_user = Counter(row[1] for row in sample)
    assert len(per_user) <= gen.Options().user_count
    assert sum(per_user.values()) / len(per_user) >= 5


# --- options and determinism ---------------------------------------------------------


async def test_same_seed_gives_identical_rows_and_another_seed_does_not(tmp_path: Path) -> None:
    for name, seed in (("a", "11"), ("b", "11"), ("c", "12")):
        await generate("--db", str(tmp_path / f"{name}.db"), "--count", "1500", "--seed", seed)
    first, again, other = (read_rows(tmp_path / f"{n}.db") for n in "abc")
    assert first == again
    assert first != other


async def test_count_range_users_and_small_batches_are_honoured(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    summary = await generate(
        "--db", str(db), "--count", "777", "--start", "2025-06-10", "--end", "2025-06-11",
        "--users", "5", "--batch-size", "100", "--seed", "1",
    )  # fmt: skip
    rows = read_rows(db)
    assert len(rows) == summary.events == 777
    assert {row[3][:10] for row in rows} == {"2025-06-10", "2025-06-11"}
    assert len({row[1] for row in rows}) <= 5
    assert summary.by_type == dict(Counter(row[2] for row in rows))


async def test_the_rollup_is_written_with_the_log(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    await generate("--db", str(db), "--count", "2000", "--seed", "4", "--batch-size", "300")
    conn = sqlite3.connect(db)
    try:
        log = conn.execute(
            "SELECT substr(timestamp, 1, 10), event_type, COUNT(*) FROM events GROUP BY 1, 2"
        ).fetchall()
        rollup = conn.execute("SELECT day, event_type, count FROM daily_event_counts").fetchall()
    finally:
        conn.close()
    assert sorted(log) == sorted(rollup)


async def test_if_empty_fills_an_empty_database_and_leaves_a_full_one_alone(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "e.db")
    first = await generate("--db", db, "--count", "300", "--if-empty")
    assert first.events == 300 and first.skipped is None
    before = read_rows(db)
    second = await generate("--db", db, "--count", "300", "--if-empty")
    assert second.skipped and second.events == 0
    assert read_rows(db) == before


def test_rerunning_a_seed_into_the_same_database_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "e.db")
    args = ["--db", db, "--count", "200", "--seed", "9", "--no-progress"]
    assert gen.main(args) == 0
    assert gen.main(args) == 1
    assert "already stored" in capsys.readouterr().err
    assert scalar(db, "SELECT COUNT(*) FROM events") == 200  # the failed batch left nothing


def test_db_comes_from_the_flag_then_analytics_db_then_the_default() -> None:
    env = {"ANALYTICS_DB": "/tmp/from-env.db"}
    assert gen.parse_args([], environ={}).db == "data/events.db"
    assert gen.parse_args([], environ=env).db == "/tmp/from-env.db"
    assert gen.parse_args(["--db", "/tmp/flag.db"], environ=env).db == "/tmp/flag.db"


@pytest.mark.parametrize(
    "args",
    [
        ["--end", "2025-04-30"],
        ["--count", "-1"],
        ["--batch-size", "0"],
        ["--users", "0"],
        # Taken exactly as written (issue 10): no week dates, basic dates, whitespace,
        # digit separators or non-finite numbers.
        ["--start", "20250501"],
        ["--start", "2025-W18-4"],
        ["--end", "2025-05-29\n"],
        ["--count", " 10"],
        ["--count", "1_000"],
        ["--seed", "7\n"],
        ["--seed", "٧"],
        ["--timeout", "nan"],
        ["--timeout", "inf"],
        ["--timeout", "0"],
    ],
)
def test_bad_options_are_refused(args: list[str]) -> None:
    with pytest.raises(SystemExit):
        gen.parse_args(args, environ={})


def test_zero_events_is_a_valid_request(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    assert gen.main(["--db", str(db), "--count", "0", "--no-progress"]) == 0
    assert scalar(db, "SELECT COUNT(*) FROM events") == 0


def test_command_line_runs_as_a_script(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_")}
    env["ANALYTICS_DB"] = str(db)  # what `make run` relies on when no --db is given
    command = [sys.executable, "generate_events.py", "--count", "400", "--seed", "3"]
    done = subprocess.run(
        [*command, "--if-empty"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "400 events" in done.stdout and "view" in done.stdout and "seed 3" in done.stdout
    assert done.stderr == ""  # no progress line on a short run without a terminal
    again = subprocess.run(
        [*command, "--if-empty"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0 and "nothing generated" in again.stdout
    assert scalar(db, "SELECT COUNT(*) FROM events") == 400


# --- through the API -------------------------------------------------------------------


async def test_api_counts_equal_the_log_after_generation(
    config: Config, aiohttp_client: Callable[..., Any]
) -> None:
    await generate("--db", config.db, "--count", "3000", "--seed", "5")
    client: TestClient = await aiohttp_client(create_app(config))  # started after generation

    def log_count(event_type: str | None = None, lo: str = "", hi: str = "~") -> int:
        conn = connect(config.db)
        try:
            return helpers.log_count(conn, event_type, lo, hi)
        finally:
            conn.close()

    async def api(path: str, **params: str) -> Any:
        response = await client.get(path, params=params)
        assert response.status == 200, await response.text()
        return await response.json()

    assert log_count() == 3000
    assert (await api("/analytics/event-counts"))["total_events"] == 3000
    cases = [
        ({}, None, "", "~"),
        ({"start_date": "2025-05-05", "end_date": "2025-05-11"}, None,
         "2025-05-05", "2025-05-12"),
        ({"start_date": "2025-05-05T09:30:00+02:00", "end_date": "2025-05-20T17:45:10Z"}, None,
         "2025-05-05T07:30:00.000000Z", "2025-05-20T17:45:10.000001Z"),
        ({"start_date": "2025-05-29"}, None, "2025-05-29", "~"),
        ({"end_date": "2025-05-01T12:00:00-05:00"}, None, "", "2025-05-01T17:00:00.000001Z"),
    ]  # fmt: skip
    for params, _, lo, hi in cases:
        for event_type in gen.EVENT_TYPES:
            body = await api("/analytics/event-counts", event_type=event_type, **params)
            assert body["total_events"] == log_count(event_type, lo, hi), (event_type, params)
        total = (await api("/analytics/event-counts", **params))["total_events"]
        assert total == log_count(None, lo, hi), params
        by_type = await api("/analytics/event-counts-by-type", **params)
        expected = {t: log_count(t, lo, hi) for t in gen.EVENT_TYPES}
        assert by_type == {t: n for t, n in expected.items() if n}, params

    days = (await api("/analytics/event-counts-by-day", start_date="2025-05-01",
                      end_date="2025-05-29"))["days"]  # fmt: skip
    assert len(days) == 29
    for day in days:
        for event_type in gen.EVENT_TYPES:
            lo = day["date"]
            hi = (date.fromisoformat(lo) + timedelta(days=1)).isoformat()
            assert day[event_type] == log_count(event_type, lo, hi), day


async def test_url_mode_posts_the_events_to_a_running_service(
    client: TestClient, config: Config
) -> None:
    url = str(client.make_url("")).rstrip("/")
    assert url.startswith("http://127.0.0.1:")  # tests only ever talk to this machine
    summary = await generate("--url", url, "--count", "2500", "--seed", "8", "--timeout", "60")
    assert summary.events == 2500 and summary.failed == 0
    response = await client.get("/analytics/event-counts-by-type")
    assert await response.json() == summary.by_type
    assert scalar(config.db, "SELECT COUNT(*) FROM events") == 2500

    again = await generate("--url", url, "--count", "10", "--if-empty")
    assert again.skipped and again.events == 0
    assert scalar(config.db, "SELECT COUNT(*) FROM events") == 2500


async def test_url_mode_reports_refused_batches(
    aiohttp_server: Callable[..., Any],
) -> None:
    from aiohttp import web

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"status": 400, "detail": "no"}, status=400)

    async def no_events(request: web.Request) -> web.Response:
        return web.json_response({"total_events": 0})

    app = web.Application()
    app.router.add_post("/events/batch", refuse)
    app.router.add_get("/analytics/event-counts", no_events)
    server = await aiohttp_server(app)
    summary = await generate("--url", str(server.make_url("")).rstrip("/"), "--count", "1200")
    assert summary.events == 0 and summary.failed == 1200


def test_url_mode_fails_fast_when_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a local port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert gen.main(["--url", f"http://127.0.0.1:{port}", "--count", "10"]) == 1
    assert "cannot reach the service" in capsys.readouterr().err
