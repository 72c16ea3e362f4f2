"""A fresh, migrated PostgreSQL database for every test, fast and without filling the disk.

A new database is a clone of the migrated template (``CREATE DATABASE … TEMPLATE``): ~8 MB
of catalog copied through the WAL, 50-300 ms. Hundreds of them per run cost gigabytes of
writes and a long teardown, so a database is used again once a test is done with it, if
it can be proven to be as migrated:

- nobody is connected to it any more (the test's app, processes and connections closed);
- its schema (tables, functions, triggers, constraints, migration versions) has the
  template's fingerprint, partitions aside;
- then one transaction empties it (the log through the sanctioned-delete setting) and
  drops the partitions the template does not have.

Anything else (a renamed table, a left-over trigger, a process still connected) and the
database is simply not used again. Clones are made ahead by a thread of their own, for
when no database is free. DROP DATABASE is never used: it forces a checkpoint (~1 s with
fsync on); the cluster's teardown removes everything.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time

from tests.postgres_cluster import PostgresCluster

_PARTITION = r"^events_[0-9]{4}_[0-9]{2}"  # a monthly partition, and its indexes' names
FINGERPRINT_SQL = f"""
SELECT md5(concat_ws(' | ',
    (SELECT string_agg(relname || ':' || relkind::text, ',' ORDER BY relname) FROM pg_class
     WHERE relnamespace = 'public'::regnamespace AND relname !~ '{_PARTITION}'),
    (SELECT string_agg(t.tgname || ':' || c.relname || ':' || t.tgenabled::text, ','
                       ORDER BY c.relname, t.tgname)
     FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid
     WHERE NOT t.tgisinternal AND c.relnamespace = 'public'::regnamespace
       AND c.relname !~ '{_PARTITION}'),
    (SELECT string_agg(p.proname || ':' || md5(p.prosrc), ',' ORDER BY p.proname)
     FROM pg_proc AS p WHERE p.pronamespace = 'public'::regnamespace),
    (SELECT string_agg(c.relname || '.' || k.conname || ':' || pg_get_constraintdef(k.oid), ','
                       ORDER BY c.relname, k.conname)
     FROM pg_constraint AS k JOIN pg_class AS c ON c.oid = k.conrelid
     WHERE k.connamespace = 'public'::regnamespace AND c.relname !~ '{_PARTITION}'),
    (SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations)
))
"""
PARTITIONS_SQL = f"""
SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
WHERE i.inhparent = 'events'::regclass AND c.relname ~ '{_PARTITION}$'
"""
OTHERS_CONNECTED_SQL = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND pid <> pg_backend_pid()"
)
EMPTY_SQL = [
    "SET LOCAL analytics.sanctioned_delete = 'test reset'",
    "DELETE FROM events",
    "DELETE FROM daily_event_counts",
    "DELETE FROM quarter_hour_event_counts",
    "DELETE FROM idempotency_keys",
    "DELETE FROM lifecycle_audit",
    "UPDATE log_state SET horizon = NULL, expired_seq = 0",
]
DISCONNECT_WAIT_S = 1.0  # a closed client's server process may take a moment to exit


class TestDatabases:
    """``take()`` a database URL; ``give_back(url)`` when the test is done with it."""

    __test__ = False  # not a test class
    AHEAD = 2  # clones made ahead

    def __init__(self, cluster: PostgresCluster, template: str) -> None:
        self._cluster = cluster
        self._template = template
        self._names = itertools.count(1)
        self._used: list[str] = []
        self._ready: queue.Queue[str | BaseException] = queue.Queue(maxsize=self.AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._clone_ahead, name="pg-clones", daemon=True)
        self._thread.start()
        first = self._take_clone()  # the template takes no connections: read a clone
        self._fingerprint, self._partitions = _shape(first)
        self._used.append(first)
        self.reused = self.cloned = 0

    def take(self) -> str:
        while self._used:
            url = self._used.pop()
            if _reset(url, self._fingerprint, self._partitions):
                self.reused += 1
                return url
        self.cloned += 1
        return self._take_clone()

    def give_back(self, url: str) -> None:
        """The test is done with ``url``. It is emptied when the next test asks, not now:
        fixtures are torn down in an order of their own, so the app of the test that used
        it may still be running."""
        self._used.append(url)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _take_clone(self) -> str:
        item = self._ready.get(timeout=120)
        if isinstance(item, BaseException):
            self._ready.put(item)  # every later test fails the same way
            raise item
        return item

    def _clone_ahead(self) -> None:
        import psycopg

        try:
            admin_url = self._cluster.url_for("postgres")
            with psycopg.connect(admin_url, autocommit=True) as admin:
                while not self._stop.is_set():
                    name = f"test_{next(self._names)}"
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


def _shape(url: str) -> tuple[str, set[str]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        (fingerprint,) = conn.execute(FINGERPRINT_SQL).fetchone()  # type: ignore[misc]
        partitions = {name for (name,) in conn.execute(PARTITIONS_SQL)}
    return fingerprint, partitions


def _reset(url: str, fingerprint: str, partitions: set[str]) -> bool:
    """Empty the database at ``url`` back to the template's state; False if it cannot be
    proven to be in that state (then it is not used again)."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True) as conn:
            deadline = time.monotonic() + DISCONNECT_WAIT_S
            while conn.execute(OTHERS_CONNECTED_SQL).fetchone() != (0,):
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.02)
            if conn.execute(FINGERPRINT_SQL).fetchone() != (fingerprint,):
                return False
            extra = {name for (name,) in conn.execute(PARTITIONS_SQL)} - partitions
            with conn.transaction():
                for statement in EMPTY_SQL:
                    conn.execute(statement)  # type: ignore[call-overload]
                for name in sorted(extra):
                    conn.execute(f'DROP TABLE "{name}"')  # type: ignore[call-overload]
            return True
    except psycopg.Error:
        return False
