"""The tests' own connection to the service's database, the same on every backend.

Tests count the log for reference answers (``COUNT(*)``) and tamper with rollups, with
plain SQL that both backends understand. ``connect(db)`` opens that connection for a
``--db`` value (a SQLite file or a ``postgresql://`` URL). The PostgreSQL one (psycopg,
a test-only dependency, so the service's own driver stays out of the tests' assertions)
speaks like ``sqlite3``: ``?`` placeholders, autocommit, rows as tuples, and values in the
text forms the SQLite file holds (timestamps as ``schema.timestamps`` strings, days as
``YYYY-MM-DD``, ids as strings, payloads as JSON text, sums as ints).

A few things differ by nature, so each is one method with a meaning: ``holding_writes()``
(another process holds the write lock) and ``failing_inserts(table)`` (the database
refuses inserts into a table, as a full disk would).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Protocol

from schema.backends import is_url
from schema.timestamps import format_ts


class Rows(Protocol):
    def fetchone(self) -> tuple[Any, ...] | None: ...
    def fetchall(self) -> list[tuple[Any, ...]]: ...
    def __iter__(self) -> Iterator[tuple[Any, ...]]: ...


class Database(Protocol):
    backend: str

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Rows: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    def close(self) -> None: ...
    def holding_writes(self) -> Any: ...
    def snapshot(self) -> Any: ...
    def failing_inserts(self, table: str, message: str) -> Any: ...
    def table_names(self) -> list[str]: ...
    def column_names(self, table: str) -> list[str]: ...


def connect(db: str) -> Database:
    """A connection to the database ``db`` names (``--db``)."""
    return PostgresDatabase(db) if is_url(db) else SQLiteDatabase(db)


class SQLiteDatabase:
    backend = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None)

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Rows:
        return self.conn.execute(sql, args)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def close(self) -> None:
        self.conn.close()

    def table_names(self) -> list[str]:
        sql = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
        return [name for (name,) in self.conn.execute(sql)]

    def column_names(self, table: str) -> list[str]:
        return [c[1] for c in self.conn.execute(f'PRAGMA table_info("{table}")')]

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every statement of the block reads one snapshot of the database."""
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    @contextmanager
    def holding_writes(self) -> Iterator[None]:
        """Another connection holds the write lock (readers go on) until the block ends."""
        blocker = sqlite3.connect(self.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()

    @contextmanager
    def failing_inserts(self, table: str, message: str) -> Iterator[None]:
        """Every insert into ``table`` fails with ``message`` until the block ends."""
        self.conn.execute(
            f"CREATE TRIGGER fail_{table} BEFORE INSERT ON {table}"
            f" BEGIN SELECT RAISE(ABORT, '{message}'); END"
        )
        try:
            yield
        finally:
            self.conn.execute(f"DROP TRIGGER fail_{table}")


class PostgresDatabase:
    backend = "postgres"

    def __init__(self, url: str) -> None:
        import psycopg
        from psycopg.types.string import TextLoader

        self.url = url
        self.conn = psycopg.connect(url, autocommit=True)
        # json as its text, exactly as stored (the service reads it the same way).
        self.conn.adapters.register_loader("json", TextLoader)

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Rows:
        if args:
            cursor = self.conn.execute(_placeholders(sql), list(args))  # type: ignore[call-overload]
        else:
            cursor = self.conn.execute(sql)  # type: ignore[call-overload]
        rows = (
            [tuple(_as_text_form(v) for v in row) for row in cursor] if cursor.description else []
        )
        return _Rows(rows)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.conn.cursor() as cursor:
            cursor.executemany(_placeholders(sql), [list(r) for r in rows])  # type: ignore[call-overload]

    def close(self) -> None:
        self.conn.close()

    def table_names(self) -> list[str]:
        """The tables of the schema, monthly partitions of the log aside (they are parts of
        ``events``, not tables of their own to the tests)."""
        sql = (
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            " AND tablename !~ '^events_' ORDER BY 1"
        )
        return [name for (name,) in self.execute(sql)]

    def column_names(self, table: str) -> list[str]:
        sql = (
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position"
        )
        return [name for (name,) in self.execute(sql, (table,))]

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every statement of the block reads one snapshot of the database."""
        self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    @contextmanager
    def holding_writes(self) -> Iterator[None]:
        """Another session locks the tables a group commit writes (readers go on)."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as blocker:
            blocker.execute("BEGIN")
            blocker.execute(
                "LOCK TABLE events, idempotency_keys, daily_event_counts,"
                " quarter_hour_event_counts IN EXCLUSIVE MODE"
            )
            try:
                yield
            finally:
                blocker.execute("ROLLBACK")

    @contextmanager
    def failing_inserts(self, table: str, message: str) -> Iterator[None]:
        self.conn.execute(
            f"CREATE FUNCTION fail_{table}() RETURNS trigger LANGUAGE plpgsql AS $$"
            f" BEGIN RAISE EXCEPTION '{message}'; END $$"
        )
        self.conn.execute(
            f"CREATE TRIGGER fail_{table} BEFORE INSERT ON {table}"
            f" FOR EACH ROW EXECUTE FUNCTION fail_{table}()"
        )
        try:
            yield
        finally:
            self.conn.execute(f"DROP TRIGGER fail_{table} ON {table}")
            self.conn.execute(f"DROP FUNCTION fail_{table}()")


class _Rows:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self._rows = rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self._rows)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._rows)


def _placeholders(sql: str) -> str:
    """``?`` → ``%s`` outside string literals; a literal ``%`` is doubled (psycopg)."""
    out: list[str] = []
    quoted = False
    for char in sql:
        if char == "'":
            quoted = not quoted
        if char == "?" and not quoted:
            out.append("%s")
        elif char == "%":
            out.append("%%")
        else:
            out.append(char)
    return "".join(out)


def _as_text_form(value: Any) -> Any:
    """A PostgreSQL value in the form the SQLite file holds it."""
    if isinstance(value, datetime):
        return format_ts(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return value
