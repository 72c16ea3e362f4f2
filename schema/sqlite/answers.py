"""Count answers kept until the database changes (SQLite only).

Dashboards ask the same few questions over and over, and between two commits the answer
cannot change. ``PRAGMA data_version`` on a connection of this cache's own, which never
writes, changes whenever any other connection — the writer, the maintenance lane, a CLI
``erase`` or ``rebuild`` in another process — has committed since the last call
(https://www.sqlite.org/pragma.html#pragma_data_version). An answer is stored under the
version read **before** its statement ran, and served only while that is still the
version: a commit between the two reads makes the version differ, so the answer (older or
newer than the label) is never served. The pragma reads the WAL index in shared memory:
microseconds, on the event loop's thread, against a reader thread's hand-off.

PostgreSQL has no such cheap, cross-instance signal, so it has no cache.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Hashable
from typing import Any

log = logging.getLogger(__name__)

MOST_ANSWERS = 4096  # distinct questions kept per database version; then start again


class AnswerCache:
    """Answers keyed by their question (a count plan and its event types), for one
    database version at a time.
    Use from one thread (the event loop's); ``close()`` when the store closes."""

    def __init__(self, path: str, busy_timeout_ms: int = 0):  # never wait on the loop
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self._conn.execute("PRAGMA query_only = ON")
        self._version: int | None = None
        self._answers: dict[Hashable, Any] = {}

    def version(self) -> int | None:
        """The database's version as this connection sees it now; None when it cannot
        tell (say, a lock held during WAL recovery): then nothing is cached or served."""
        try:
            return self._conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error as exc:
            log.warning("answer cache bypassed: %s", exc)
            return None

    def get(self, version: int | None, key: Hashable) -> Any:
        if version is None or version != self._version:
            return None
        return self._answers.get(key)

    def put(self, version: int | None, key: Hashable, answer: Any) -> None:
        if version is None:
            return
        if version != self._version:
            self._answers.clear()
            self._version = version
        elif len(self._answers) >= MOST_ANSWERS:
            self._answers.clear()
        self._answers[key] = answer

    def close(self) -> None:
        self._conn.close()
