"""Settings: defaults, environment, flags winning, and clear errors for bad values."""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from app import config as settings
from app import server
from app.factory import create_app
from tests.postgres_cluster import free_port

ROOT = Path(__file__).resolve().parent.parent


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults() -> None:
    config = settings.load(parse(), environ={})
    assert (config.db, config.host, config.port) == ("data/events.db", "127.0.0.1", 5000)
    assert config.synchronous == "FULL" and config.admin_token == ""


def test_environment_then_flags_win() -> None:
    environ = {
        "ANALYTICS_DB": "/env.db",
        "ANALYTICS_PORT": "6000",
        "ANALYTICS_CORS_ORIGINS": "https://a.example/, *",
    }
    config = settings.load(parse("--port", "7000"), environ=environ)
    assert (config.db, config.port) == ("/env.db", 7000)
    assert config.cors_origins == ("https://a.example", "*")


@pytest.mark.parametrize(
    "environ",
    [
        {"ANALYTICS_PORT": "http"},
        {"ANALYTICS_SYNCHRONOUS": "OFF"},
        {"ANALYTICS_RECONCILE_MINUTES": "-1"},
        {"ANALYTICS_RECONCILE_MINUTES": "nan"},
        {"ANALYTICS_ACCESS_LOG": "maybe"},
        # A value is taken exactly as written: whitespace, a newline (a secret read from a
        # file), digit separators and non-ASCII digits are mistakes, not numbers.
        {"ANALYTICS_PORT": "5000\n"},
        {"ANALYTICS_PORT": " 5000"},
        {"ANALYTICS_PORT": "5_000"},
        {"ANALYTICS_PORT": "٥٠٠٠"},
        {"ANALYTICS_QUEUE_MAX_EVENTS": "+20"},
        {"ANALYTICS_RECONCILE_MINUTES": "1_0"},
        {"ANALYTICS_RECONCILE_MINUTES": " 10"},
        {"ANALYTICS_RECONCILE_MINUTES": "1e1"},
        {"ANALYTICS_RECONCILE_MINUTES": "inf"},
        {"ANALYTICS_ACCESS_LOG": "true\n"},
        {"ANALYTICS_ADMIN_TOKEN": "s3cret\n"},
        {"ANALYTICS_ADMIN_TOKEN": " s3cret"},
        {"ANALYTICS_DB": "data/events.db\n"},
        {"ANALYTICS_HOST": "127.0.0.1 "},
        {"ANALYTICS_SYNCHRONOUS": "FULL\n"},
        {"ANALYTICS_LOG_LEVEL": "INFO\n"},
        {"ANALYTICS_LOG_LEVEL": "LOUD"},
        {"ANALYTICS_CORS_ORIGINS": "https://a.example\n"},
        {"ANALYTICS_LOG_FORMAT": "xml"},
        {"ANALYTICS_LOG_FORMAT": "json\n"},
        {"ANALYTICS_METRICS": "sometimes"},
        # A TCP port is 0 (any free port) to 65535; the socket layer would take 70000 modulo 2**16.
        {"ANALYTICS_PORT": "70000"},
        {"ANALYTICS_PORT": "-1"},
        # Too large for what uses them (a timedelta, a timer): an error at startup, not an
        # OverflowError once the database is open.
        {"ANALYTICS_IDEMPOTENCY_HOURS": "99999999999999"},
        {"ANALYTICS_RECONCILE_MINUTES": "99999999999999"},
        {"ANALYTICS_RETENTION_DAYS": "99999999999999"},
        {"ANALYTICS_BODY_TIMEOUT_S": "99999999999999"},
        {"ANALYTICS_READ_CONNECTIONS": "100000"},
        # PostgreSQL numbers at most 65,535 events per transaction (log positions)
        {"ANALYTICS_DB": "postgresql://u@h/d", "ANALYTICS_COMMIT_MAX_EVENTS": "64001"},
    ],
)
def test_bad_settings_exit_with_a_message(environ: dict[str, str]) -> None:
    with pytest.raises(SystemExit, match="invalid"):
        settings.load(parse(), environ=environ)


def test_numbers_and_switches_in_their_plain_forms_are_read() -> None:
    environ = {
        "ANALYTICS_PORT": "8080",
        "ANALYTICS_RECONCILE_MINUTES": "2.5",
        "ANALYTICS_BODY_TIMEOUT_S": "0.25",
        "ANALYTICS_IDEMPOTENCY_HOURS": "48",
        "ANALYTICS_ACCESS_LOG": "off",
        "ANALYTICS_LOG_LEVEL": "debug",
    }
    config = settings.load(parse(), environ=environ)
    assert (config.port, config.reconcile_minutes, config.body_timeout_s) == (8080, 2.5, 0.25)
    assert (config.idempotency_hours, config.access_log) == (48.0, False)


def test_a_malformed_admin_token_is_not_quoted_in_the_error() -> None:
    with pytest.raises(SystemExit) as exc:
        settings.load(parse(), environ={"ANALYTICS_ADMIN_TOKEN": "s3cret-token\n"})
    assert "ADMIN_TOKEN" in str(exc.value) and "s3cret" not in str(exc.value)


def test_admin_token_is_not_in_repr() -> None:
    config = settings.load(parse(), environ={"ANALYTICS_ADMIN_TOKEN": "s3cret-token"})
    assert "s3cret-token" not in repr(config)


def test_log_format_and_metrics_from_environment_and_flags() -> None:
    assert settings.load(parse(), environ={}).log_format == "text"
    assert settings.load(parse(), environ={}).metrics is True
    environ = {"ANALYTICS_LOG_FORMAT": "JSON", "ANALYTICS_METRICS": "false"}
    config = settings.load(parse(), environ=environ)
    assert (config.log_format, config.metrics) == ("json", False)
    assert settings.load(parse("--log-format", "text"), environ=environ).log_format == "text"


def test_a_taken_port_is_one_clear_line_and_the_process_exits(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "app",
                "serve",
                "--db",
                str(tmp_path / "e.db"),
                "--port",
                f"{port}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"cannot start: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_failed_startup_closes_the_database_it_opened(tmp_path: Path) -> None:
    """A part that fails to start after the storage opened: the storage is closed again, so
    its reader threads do not keep a process alive that has nothing left to do."""
    config = settings.Config(db=str(tmp_path / "e.db"), port=free_port())
    app = create_app(config)

    async def fails_to_start(app: web.Application) -> AsyncIterator[None]:
        raise RuntimeError("a part that cannot start")
        yield

    app.cleanup_ctx.append(fails_to_start)
    with pytest.raises(RuntimeError, match="cannot start"):
        await server.serve(app, config, access_log=None)
    for _ in range(100):  # the reader threads end as their connections close
        if not [t for t in threading.enumerate() if "_connection_worker_thread" in t.name]:
            break
        await asyncio.sleep(0.05)
    assert not [t for t in threading.enumerate() if "_connection_worker_thread" in t.name]
