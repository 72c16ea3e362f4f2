"""The storage layer on each backend: choosing it from ``--db``, migrations, the
append-only log. (What only PostgreSQL has is in ``test_postgres.py``.)"""

from __future__ import annotations

import pytest

from schema.backends import UnknownBackendError, describe, open_storage
from schema.postgres.store import PostgresStore
from schema.sqlite.store import SQLiteStore
from schema.storage import SchemaTooNewError
from tests.databases import Database, connect


@pytest.mark.parametrize(
    ("db", "kind"),
    [
        ("data/events.db", SQLiteStore),
        ("/abs/path/with:colon.db", SQLiteStore),
        ("postgresql://u@localhost/analytics", PostgresStore),
        ("postgres://u@localhost:5433/analytics?sslmode=require", PostgresStore),
        ("PostgreSQL://u@localhost/analytics", PostgresStore),
    ],
)
def test_the_backend_is_chosen_by_the_db_value(db: str, kind: type) -> None:
    assert isinstance(open_storage(db), kind)


@pytest.mark.parametrize("db", ["mysql://u@h/db", "sqlite:///x.db", "http://example.com/"])
def test_an_unknown_url_scheme_is_an_error_not_a_file(db: str) -> None:
    with pytest.raises(UnknownBackendError, match="file path"):
        open_storage(db)


@pytest.mark.parametrize(
    ("db", "shown"),
    [
        ("postgresql://app:s3cr%40t@db:5432/analytics", "postgresql://app:***@db:5432/analytics"),
        ("postgres://app@db/analytics?password=s3cret&sslmode=require", "password=%2A%2A%2A"),
        ("postgresql://app@db/analytics", "postgresql://app@db/analytics"),
        ("data/events.db", "data/events.db"),
    ],
)
def test_logs_show_a_database_url_without_its_password(db: str, shown: str) -> None:
    assert shown in describe(db)
    assert "s3cr" not in describe(db)
    if "://" in db:
        assert open_storage(db).description == describe(db)


async def test_migrate_is_idempotent_and_refuses_a_newer_schema(database: str) -> None:
    store = open_storage(database)
    version = await store.migrate()
    assert version >= 1
    assert await store.migrate() == version
    conn = connect(database)
    try:
        if conn.backend == "sqlite":
            conn.execute(f"PRAGMA user_version = {version + 1}")
        else:
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (?, 'from the future')",
                (version + 1,),
            )
    finally:
        conn.close()
    with pytest.raises(SchemaTooNewError, match=f"version {version + 1}"):
        await store.migrate()


async def test_the_log_is_append_only(client, db: Database) -> None:  # type: ignore[no-untyped-def]
    assert (
        await client.post("/events", json={"user_id": "u", "event_type": "click", "payload": {}})
    ).status == 202
    for statement in ("UPDATE events SET user_id = 'x'", "DELETE FROM events"):
        with pytest.raises(Exception, match="append-only"):
            db.execute(statement)
    assert db.execute("SELECT user_id FROM events").fetchall() == [("u",)]
