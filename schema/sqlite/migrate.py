"""Create or upgrade the database: numbered ``migrations/NNNN_*.sql`` files above
``PRAGMA user_version`` are applied in order, each in its own transaction together
with the new version number, so a failed migration leaves the database as it was.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from schema.migration_files import numbered
from schema.storage import SchemaTooNewError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def migrations() -> list[tuple[int, Path]]:
    return numbered(MIGRATIONS_DIR)


def latest_version() -> int:
    return len(migrations())


def migrate(db_path: str | Path) -> int:
    """Bring the database at ``db_path`` to the latest schema; return its version."""
    path = Path(db_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        known = migrations()
        if current > len(known):
            raise SchemaTooNewError(
                f"{path} has schema version {current}, this service knows up to {len(known)}"
            )
        for number, file in known[current:]:
            script = file.read_text(encoding="utf-8")
            # executescript() commits on its own, so the transaction is spelled out.
            try:
                conn.executescript(
                    f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
                )
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            log.info("applied migration %s", file.name)
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()
