"""Shared fixtures: every test gets the real app on a real database of its own, and runs
once per storage backend.

- **SQLite**: a file in the test's temp dir (not ``:memory:``: WAL and durability are what
  we test).
- **PostgreSQL**: one throwaway cluster for the whole session (``tests/postgres_cluster.py``,
  fsync on), one migrated template database, and a fresh clone of it per test (tens of ms).

A test that uses ``config`` (or anything built on it: ``client``, ``db``, ``make_client``)
runs as ``[sqlite-…]`` and ``[postgres-…]``. Marks that keep a test on SQLite alone:
``sqlite_only`` (a test of SQLite itself: file pragmas, WAL, file locking) and
``backend_independent`` (HTTP behaviour above the storage: parsing, auth, OpenAPI).
``postgres`` is on every PostgreSQL run, so ``pytest -m "not postgres"`` needs no cluster.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
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

BACKENDS = ("sqlite", "postgres")
TEMPLATE = "template_migrated"
# A throwaway cluster: commits still fsync (durability is under test), but no checkpoint
# interrupts the run (each clone writes its template to the WAL).
CLUSTER_SETTINGS = {"max_wal_size": "8GB", "checkpoint_timeout": "1h", "max_connections": 200}
_numbers = itertools.count(1)


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


class _Clones:
    """Fresh clones of the template, made ``AHEAD`` at a time by a thread of their own
    while tests run (a clone costs ~50-300 ms, mostly the server's I/O). Never dropped:
    DROP DATABASE forces a checkpoint; the cluster's teardown removes them all."""

    AHEAD = 2

    def __init__(self, cluster: PostgresCluster, template: str) -> None:
        self._cluster = cluster
        self._template = template
        self._ready: queue.Queue[str | BaseException] = queue.Queue(maxsize=self.AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="pg-clones", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self._cluster.url_for("postgres"), autocommit=True) as admin:
                while not self._stop.is_set():
                    name = f"test_{next(_numbers)}"
                    admin.execute(f"CREATE DATABASE {name} TEMPLATE {self._template}")  # type: ignore[call-overload]
                    url = self._cluster.url_for(name)
                    while not self._stop.is_set():
                        try:
                            self._ready.put(url, timeout=0.2)
                            break
                        except queue.Full:
                            continue
        except BaseException as exc:  # handed to the test that waits for a clone
            self._ready.put(exc)

    def take(self) -> str:
        item = self._ready.get(timeout=120)
        if isinstance(item, BaseException):
            self._ready.put(item)  # every later test fails the same way
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture(scope="session")
def pg_clones(pg_cluster: PostgresCluster, pg_template: str) -> Iterator[_Clones]:
    clones = _Clones(pg_cluster, pg_template)
    try:
        yield clones
    finally:
        clones.close()


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
def pg_database(pg_clones: _Clones) -> str:
    """A fresh migrated PostgreSQL database (for tests of PostgreSQL only)."""
    return pg_clones.take()


@pytest.fixture
def database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The ``--db`` of this test: a new SQLite file path or a new PostgreSQL database URL."""
    if backend == "sqlite":
        return str(tmp_path / "events.db")
    return request.getfixturevalue("pg_clones").take()


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
