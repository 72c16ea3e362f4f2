"""Shared fixtures: every test gets the real app on a real database of its own, and runs
once per storage backend.

- **SQLite**: a file in the test's temp dir (not ``:memory:``: WAL and durability are what
  we test).
- **PostgreSQL**: one throwaway cluster for the whole session (``tests/postgres_cluster.py``,
  fsync on), one migrated template database, and a fresh database per test: a clone of
  the template, or one a previous test used, proven unchanged and emptied
  (``tests/postgres_databases.py``).

A test that uses ``config`` (or anything built on it: ``client``, ``db``, ``make_client``)
runs as ``[sqlite-…]`` and ``[postgres-…]``. Marks that keep a test on SQLite alone:
``sqlite_only`` (a test of SQLite itself: file pragmas, WAL, file locking) and
``backend_independent`` (HTTP behaviour above the storage: parsing, auth, OpenAPI).
``postgres`` is on every PostgreSQL run, so ``pytest -m "not postgres"`` needs no cluster.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.config import Config
from app.factory import create_app
from tests.databases import Database, connect
from tests.postgres_cluster import PostgresCluster, postgres_cluster
from tests.postgres_databases import TestDatabases

BACKENDS = ("sqlite", "postgres")
TEMPLATE = "template_migrated"
# A throwaway cluster: commits still fsync (durability is under test), but no checkpoint
# interrupts the run (each clone writes its template to the WAL).
CLUSTER_SETTINGS = {"max_wal_size": "8GB", "checkpoint_timeout": "1h", "max_connections": 200}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only(reason): a test of SQLite itself; not run on PostgreSQL"
    )
    config.addinivalue_line(
        "markers",
        "backend_independent: tests HTTP behaviour above the storage; runs once, on SQLite",
    )
    config.addinivalue_line("markers", "postgres: runs on the PostgreSQL backend")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that reaches the ``backend`` fixture runs on each backend."""
    if "backend" not in metafunc.fixturenames:
        return
    only_sqlite = any(
        metafunc.definition.get_closest_marker(name) is not None
        for name in ("sqlite_only", "backend_independent")
    )
    metafunc.parametrize(
        "backend",
        [
            pytest.param(name, marks=[pytest.mark.postgres] if name == "postgres" else [])
            for name in BACKENDS
            if name == "sqlite" or not only_sqlite
        ],
        scope="function",
    )


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """The session's PostgreSQL server (started on first use, removed at the end)."""
    with postgres_cluster(settings=CLUSTER_SETTINGS) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def pg_template(pg_cluster: PostgresCluster) -> str:
    """A database migrated by the service itself, marked a template for clones."""
    from schema.postgres.store import PostgresStore

    pg_cluster.create_database(TEMPLATE)
    asyncio.run(PostgresStore(pg_cluster.url_for(TEMPLATE)).migrate())
    pg_cluster.make_template(TEMPLATE)
    return TEMPLATE


@pytest.fixture(scope="session")
def pg_databases(pg_cluster: PostgresCluster, pg_template: str) -> Iterator[TestDatabases]:
    """Fresh migrated databases, one per test (see tests/postgres_databases.py)."""
    databases = TestDatabases(pg_cluster, pg_template)
    try:
        yield databases
    finally:
        databases.close()


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
def pg_database(pg_databases: TestDatabases) -> Iterator[str]:
    """A fresh migrated PostgreSQL database (for tests of PostgreSQL only)."""
    url = pg_databases.take()
    yield url
    pg_databases.give_back(url)


@pytest.fixture
def database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The ``--db`` of this test: a new SQLite file path or a fresh PostgreSQL database."""
    if backend == "sqlite":
        yield str(tmp_path / "events.db")
    else:
        yield request.getfixturevalue("pg_database")


@pytest.fixture
def config(database: str) -> Config:
    return Config(db=database, reconcile_minutes=0, access_log=False)


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
def db(config: Config, client: TestClient) -> Iterator[Database]:
    """A second, independent connection for assertions (opened after the app migrated)."""
    conn = connect(config.db)
    try:
        yield conn
    finally:
        conn.close()


def app_of(client: TestClient) -> web.Application:
    return client.server.app
