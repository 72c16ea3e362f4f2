"""Shared fixtures: every test gets the real app on a real SQLite file in its own temp dir."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.config import Config
from app.factory import create_app


@pytest.fixture(autouse=True)
def no_error_logs(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """Every test fails if anything logged an ERROR or a traceback: a client's mistake
    is a warning at most (the contract), so only tests that cause a server fault on
    purpose may, and say so with ``@pytest.mark.server_fault``."""
    yield
    if request.node.get_closest_marker("server_fault"):
        return
    bad = [
        f"{r.name} {r.levelname}: {r.getMessage()[:200]}"
        for when in ("setup", "call")
        for r in caplog.get_records(when)
        if r.levelno >= logging.ERROR or r.exc_info
    ]
    assert not bad, bad


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """A file database under tmp_path (not :memory:: WAL and durability are what we test)."""
    return Config(db=str(tmp_path / "events.db"), reconcile_minutes=0, access_log=False)


@pytest.fixture
async def client(aiohttp_client: Callable[..., TestClient], config: Config) -> TestClient:
    """The real application, served on a local port."""
    return await aiohttp_client(create_app(config))


@pytest.fixture
def make_client(aiohttp_client: Callable[..., TestClient], config: Config):
    """Build a client for a variant of the config: ``await make_client(queue_max_events=5)``."""

    async def make(**changes: object) -> TestClient:
        return await aiohttp_client(create_app(replace(config, **changes)))

    return make


@pytest.fixture
def db(config: Config, client: TestClient) -> Iterator[sqlite3.Connection]:
    """A second, independent connection for assertions (opened after the app migrated)."""
    conn = sqlite3.connect(config.db, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def app_of(client: TestClient) -> web.Application:
    return client.server.app
