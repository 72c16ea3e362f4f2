"""Create or upgrade a PostgreSQL database: numbered ``migrations/NNNN_*.sql`` files above
the highest version recorded in ``schema_migrations`` are applied in order, each in its own
transaction together with its row there, so a failed migration leaves the database as it
was. A database of a newer schema is refused.

Several instances may start at once on one database: whoever migrates holds a session
advisory lock for the whole run, so the others wait for it and then find nothing to do.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import asyncpg

from schema.migration_files import numbered
from schema.postgres import locks
from schema.postgres.lifecycle import POSITIONS_PER_TRANSACTION
from schema.storage import SchemaTooNewError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

CREATE_VERSIONS_SQL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
CURRENT_VERSION_SQL = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
RECORD_VERSION_SQL = "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)"


def migrations() -> list[tuple[int, Path]]:
    return numbered(MIGRATIONS_DIR)


def latest_version() -> int:
    return len(migrations())


async def migrate(conn: asyncpg.Connection, description: str = "the database") -> int:
    """Bring the database of ``conn`` to the latest schema; return its version.

    Raises ``SchemaTooNewError`` for a newer schema; a failing migration's error propagates
    (its transaction rolled back)."""
    await conn.execute("SELECT pg_advisory_lock($1, $2)", locks.NAMESPACE, locks.MIGRATE)
    try:
        await conn.execute(CREATE_VERSIONS_SQL)
        current = await conn.fetchval(CURRENT_VERSION_SQL)
        known = migrations()
        if current > len(known):
            raise SchemaTooNewError(
                f"{description} has schema version {current}, this service knows up to {len(known)}"
            )
        for number, file in known[current:]:
            script = file.read_text(encoding="utf-8")
            async with conn.transaction():
                await conn.execute(script)  # no arguments: the simple protocol, many statements
                await conn.execute(RECORD_VERSION_SQL, number, file.name)
            log.info("applied migration %s", file.name)
        await align_positions(conn)
        return await conn.fetchval(CURRENT_VERSION_SQL)
    finally:
        # A broken connection has released the lock already; its error is the one to see.
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await conn.execute("SELECT pg_advisory_unlock($1, $2)", locks.NAMESPACE, locks.MIGRATE)


# The smallest offset that puts every position a transaction can take from now on
# ((xid + offset) × 65,536 + ordinal, xid >= the snapshot's xmax) above the log's highest;
# written only when it must rise (a start that changes nothing writes nothing).
ALIGN_POSITIONS_SQL = f"""
UPDATE log_state SET xid_offset = needed.least
FROM (
    SELECT (SELECT coalesce(max(seq), 0) FROM events) / {POSITIONS_PER_TRANSACTION} + 1
        - pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS least
) AS needed
WHERE log_state.xid_offset < needed.least
RETURNING xid_offset
"""


async def align_positions(conn: asyncpg.Connection) -> int:
    """Raise ``log_state.xid_offset`` so that new events are numbered above every stored
    one (needed after the database moved to a server whose transaction ids are smaller:
    migration 0003); returns the offset. Runs under the migration lock, before serving."""
    raised = await conn.fetchval(ALIGN_POSITIONS_SQL)
    if raised is not None:
        log.warning(
            "the log holds positions above this server's transaction ids (a restore from "
            "another server?): new positions continue above them (offset %d)",
            raised,
        )
        return raised
    return await conn.fetchval("SELECT xid_offset FROM log_state")
