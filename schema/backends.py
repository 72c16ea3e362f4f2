"""Choose the storage backend from ``--db`` / ``ANALYTICS_DB``.

A value with a URL scheme names a database server (``postgresql://user@host/db``); any
other value is the path of an embedded SQLite file. A scheme the service does not know is
a clear error at startup, never a file of that odd name.
"""

from __future__ import annotations

import re

from schema.sqlite.store import SQLiteStore
from schema.storage import Storage

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")
POSTGRES_SCHEMES = ("postgresql", "postgres")


class UnknownBackendError(ValueError):
    """``--db`` looks like a URL whose scheme no backend serves."""


def is_url(db: str) -> bool:
    return _SCHEME.match(db) is not None


def describe(db: str) -> str:
    """``db`` fit for logs: a URL loses its password, a path stays as it is."""
    if not is_url(db):
        return db
    from schema.postgres.store import redact

    return redact(db)


def open_storage(
    db: str,
    *,
    synchronous: str = "FULL",
    busy_timeout_ms: int = 5000,
    readers: int = 4,
    answer_cache: bool = True,
) -> Storage:
    """The (not yet opened) store for ``db``: a file path or a ``postgresql://`` URL.
    ``answer_cache`` is SQLite's (schema/sqlite/answers.py); PostgreSQL has none."""
    match = _SCHEME.match(db)
    if match is None:
        return SQLiteStore(
            db,
            synchronous=synchronous,
            busy_timeout_ms=busy_timeout_ms,
            readers=readers,
            answer_cache=answer_cache,
        )
    scheme = match.group(1).lower()
    if scheme in POSTGRES_SCHEMES:
        from schema.postgres.store import PostgresStore  # asyncpg only when it is used

        return PostgresStore(
            db, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms, readers=readers
        )
    raise UnknownBackendError(
        f"--db {scheme}://… is not a database this service knows: give a file path "
        "(SQLite) or a postgresql:// URL"
    )
