"""The storage interface: everything the service asks of a database, whatever the backend.

``Storage`` is a ``Protocol``; ``schema.sqlite`` (the default, an embedded file) and
``schema.postgres`` implement it, each with its SQL and migrations beside it. Handlers,
the writer, the planner and the rollup jobs talk only to this interface; none of them
imports a database driver. ``schema.backends.open_storage`` picks the backend from
``--db``.

Guarantees every backend gives (the same test suite checks them on each):

- ``append`` is one transaction: the events, their rollup rows and their idempotency keys
  are committed together or not at all, and it returns only after the commit is durable.
- A key already stored by any writer (another instance, a concurrent transaction) is never
  an error: ``append`` skips that group and returns the stored answer instead.
- Every read is one snapshot: a count made of several statements cannot see half a commit,
  and concurrent reads never share a connection or a transaction.
- ``recount_day`` repairs a day under the backend's write exclusion, so the result is
  exact while ingestion goes on; it never touches a day before the retention horizon.
- Every event has a **position** (``seq``): positions grow with every append, are never
  given twice (not even after the newest events were erased) and become visible in order:
  once ``log_position`` returned a position, every event at or below it that will ever be
  committed already is (SQLite: one writer at a time numbers them; PostgreSQL: the
  appending transaction's id, ``schema/postgres/lifecycle.py``). Export cursors are
  positions.
- Erasure and retention are the only ways out of the log, each a series of bounded
  transactions that are consistent on their own (``erase_step``, ``expire_step``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Protocol

# A log row: (event_id, user_id, event_type, timestamp, payload JSON); timestamp in the
# log's one format (schema.timestamps), payload as JSON text.
EventRow = tuple[str, str, str, str, str]
# An idempotency row: (key, request_hash, response JSON, created_at timestamp).
KeyRow = tuple[str, bytes, str, str]
# A stored idempotency answer: (request_hash, response JSON).
StoredKey = tuple[bytes, str]


class StorageError(Exception):
    """The database refused or failed an operation (the backend's own error is the cause)."""


class StorageBusyError(StorageError):
    """The database could not take the operation within its busy timeout (answer 503)."""


class StorageIntegrityError(StorageError):
    """A constraint refused the write (e.g. an ``event_id`` that is already stored)."""


class StorageUnavailableError(StorageError):
    """The database cannot be reached or opened (answer 503; readiness fails)."""


class BeforeHorizonError(StorageError):
    """The answer needs raw events from before the retention ``horizon`` (a timestamp
    string), which retention deleted (answer 409, naming the horizon)."""

    def __init__(self, horizon: str):
        super().__init__(f"raw events before {horizon} were deleted by retention")
        self.horizon = horizon


class SchemaTooNewError(RuntimeError):
    """The database was written by a newer version of the service (migrate refuses it)."""


@dataclass(frozen=True)
class WriteGroup:
    """One request's rows and its optional idempotency key: written whole or skipped whole."""

    rows: Sequence[EventRow]
    key: KeyRow | None = None


@dataclass(frozen=True)
class CountPlan:
    """How to count ``intervals`` half-open UTC intervals (ids ``0 … intervals-1``) per
    event type: whole UTC days from the daily rollup, whole 15-minute buckets from the
    quarter-hour rollup, and only what no bucket covers whole from the log. Each part is
    ``(interval id, lo, hi)``, half-open:

    - ``days``: UTC dates ``'YYYY-MM-DD'`` (None: unbounded on that side);
    - ``quarters``: bucket starts in seconds since the Unix epoch (multiples of 900), with
      a sign: -1 subtracts the range (a whole day minus the rest of it is cheaper to read
      than most of a day's buckets);
    - ``log``: log timestamp strings (``hi`` None: unbounded).

    A backend reads each distinct range once, however many parts share it.
    """

    intervals: int
    days: tuple[tuple[int, str | None, str | None], ...] = ()
    quarters: tuple[tuple[int, int, int, int], ...] = ()
    log: tuple[tuple[int, str, str | None], ...] = ()


@dataclass(frozen=True)
class DayRecount:
    """One UTC day as the log counts it and as the daily rollup had it (``{event_type:
    n}``, types without events absent; ``stored`` may hold stray keys), how many of the
    day's 15-minute ``(bucket, event_type)`` rows differed from the log, and whether the
    day was repaired."""

    day: str
    counted: dict[str, int]
    stored: dict[str, int]
    quarters_differing: int = 0
    repaired: bool = False
    held_ms: float = 0.0  # how long a write transaction was held for the repair
    frozen: bool = False  # before the retention horizon: left alone, nothing counted

    @property
    def differs(self) -> bool:
        return self.counted != self.stored or self.quarters_differing > 0


@dataclass
class DayLook:
    """One UTC day's rollup rows (on PostgreSQL summed over their slots) beside the log's
    count of the same keys: what a recount compares before it repairs. Each backend
    subclasses it with the statements that write the log's numbers over the rollup."""

    counted: dict[str, int]  # per type: the log
    stored: dict[str, int]  # per type: the daily rollup
    counted_quarters: dict[tuple[int, str], int]  # per (bucket, type): the log
    stored_quarters: dict[tuple[int, str], int]  # per (bucket, type): the rollup

    @property
    def quarters_differing(self) -> int:
        keys = self.counted_quarters.keys() | self.stored_quarters.keys()
        return sum(self.counted_quarters.get(k) != self.stored_quarters.get(k) for k in keys)

    @property
    def differs(self) -> bool:
        return self.counted != self.stored or self.counted_quarters != self.stored_quarters

    def result(self, day: str, *, repaired: bool = False, held_ms: float = 0.0) -> DayRecount:
        return DayRecount(
            day,
            self.counted,
            self.stored,
            quarters_differing=self.quarters_differing,
            repaired=repaired,
            held_ms=held_ms,
        )


@dataclass(frozen=True)
class AuditEntry:
    """The audit record of one erasure or retention pass. Each step of the pass adds its
    deletions to it in the step's own transaction; the step that finishes the pass sets
    ``finished_at`` to ``at``. ``id`` None: the step creates the record."""

    operation: str  # "erasure" or "retention"
    started_at: str  # timestamp strings
    at: str
    user_id_sha256: str | None = None  # erasure: hex SHA-256 of the UTF-8 user_id, never the id
    before: str | None = None  # retention: the events before this instant
    id: int | None = None


@dataclass(frozen=True)
class LifecycleStep:
    """What one bounded lifecycle transaction did: events deleted, whether the pass is
    complete, the audit record's id, where the next step resumes (opaque, for the
    backend: pass it back), and how long the write exclusion was held (milliseconds)."""

    deleted: int
    done: bool
    audit_id: int
    resume: int = 0
    held_ms: float = 0.0


@dataclass(frozen=True)
class ExportFilter:
    """Which events an export streams: positions in ``(after, upto]`` whose type is one of
    ``types`` and whose timestamp is in ``[lo, hi)`` (timestamp strings; None: unbounded)."""

    types: tuple[str, ...]
    upto: int
    lo: str | None = None
    hi: str | None = None


# A log row with its position: (seq, event_id, user_id, event_type, timestamp, payload).
ExportRow = tuple[int, str, str, str, str, str]


@dataclass(frozen=True)
class ExportPage:
    """One page of an export, read in one snapshot: its rows in log order and the
    position the next page starts after (``reached == upto``: the export is complete)."""

    rows: list[ExportRow]
    reached: int


class Storage(Protocol):
    """What the service needs from a database. Every method may raise
    ``StorageBusyError``; none returns before its transaction has ended."""

    description: str  # for logs: the file path, or the URL without its password

    async def migrate(self) -> int:
        """Create or upgrade the schema; return its version. Refuses a newer schema."""

    async def open(self) -> None:
        """Connect (and migrate). Raises ``StorageUnavailableError`` when it cannot."""

    async def close(self) -> None:
        """Wait for running operations, then release every connection."""

    # --- writing -------------------------------------------------------------------

    async def append(self, groups: Sequence[WriteGroup]) -> dict[str, StoredKey]:
        """Append the groups' events, add them to every rollup and store their keys, in
        one durable transaction. A group whose key is already stored is skipped whole;
        the result maps each such key to its stored ``(request_hash, response)``."""

    async def prune_keys(self, older_than: str) -> int:
        """Forget idempotency keys created before ``older_than`` (a timestamp string)."""

    # --- reading (each call one snapshot, on a connection of its own) ---------------

    async def find_keys(self, keys: Sequence[str]) -> dict[str, StoredKey]:
        """The stored answers of those ``keys`` that were used."""

    async def count(self, plan: CountPlan, types: Iterable[str]) -> dict[tuple[int, str], int]:
        """``{(interval id, event_type): n}`` for the plan's intervals (absent: 0), all
        parts read in one snapshot. Raises ``BeforeHorizonError`` when a log part starts
        before the retention horizon (checked in the same snapshot)."""

    async def newest_bucket(self) -> int | None:
        """The start (Unix seconds) of the newest 15-minute bucket holding an event, or
        None when there are none."""

    async def ping(self) -> bool:
        """The database answers a trivial query."""

    async def log_position(self) -> int:
        """A position at or above every event committed before the call, below which no
        event can appear later. SQLite: the newest committed event's, or the newest ever
        deleted if that is higher (0 for a log that never held one). PostgreSQL: a bound
        of transaction ids, once the transactions below it have ended (it waits for them
        up to the busy timeout, then raises ``StorageBusyError``)."""

    async def horizon(self) -> str | None:
        """The retention horizon (a timestamp string), or None while retention never
        deleted anything."""

    async def export_page(self, spec: ExportFilter, after: int, limit: int) -> ExportPage:
        """At most ``limit`` matching rows at positions after ``after``, in log order, in
        one short snapshot (a page looks at a bounded number of positions, so a page of a
        narrow filter may be empty without the export being complete). Raises
        ``BeforeHorizonError`` when retention deleted an event the export would include
        (``lo`` before the horizon and ``after`` before the newest expired position)."""

    # --- rollup maintenance ----------------------------------------------------------

    async def days_to_check(self, start: date | None, end: date | None) -> list[str]:
        """Every UTC day in ``[start, end]`` that has events or rollup rows, in order;
        rollup keys that are not real dates come last (only when no range is given)."""

    async def recount_day(self, day: str, *, repair: bool) -> DayRecount:
        """Count ``day`` from the log and compare it with the rollup, in one snapshot;
        with ``repair``, a day that differs is recounted and rewritten under the write
        exclusion, so no commit can interleave. A day before the retention horizon is
        frozen: nothing is counted or written (``frozen``)."""

    # --- data lifecycle (each step one transaction under the write exclusion) --------

    async def erase_step(
        self, user_id: str, *, upto: int, limit: int, audit: AuditEntry, resume: int = 0
    ) -> LifecycleStep:
        """Delete up to ``limit`` events of ``user_id`` at positions ``<= upto`` and
        subtract each from every rollup, in one transaction with the audit update.
        ``done`` when no such event is left; ``resume``: the previous step's, 0 at first."""

    async def expire_step(
        self, before: str, *, resume: int, limit: int, audit: AuditEntry
    ) -> LifecycleStep:
        """Retention: raise the horizon to ``before`` (a UTC day's first instant) and
        delete events with a timestamp before it, in one short transaction with the audit
        update; rollups are kept. ``limit`` bounds the rows a step deletes one by one (a
        backend may instead drop a whole partition of expired events in a step);
        ``resume`` is the previous step's, 0 at first. ``done`` when no event before
        ``before`` is left."""

    async def oldest_timestamp(self) -> str | None:
        """The timestamp of the oldest event in the log, or None when it is empty."""

    # --- jobs that one instance at a time may run -----------------------------------

    async def try_lock_job(self, job: str) -> bool:
        """Take the lock of ``job`` (``"passes"``: reconcile, rebuild, erasure and
        retention passes, ``rollup.passes``) for this store's maintenance calls, or
        return False at once when another instance holds it. Held until ``unlock_job``
        or until the store closes (or its process dies)."""

    async def unlock_job(self, job: str) -> None:
        """Release the lock of ``job`` taken by ``try_lock_job`` (no-op if not held)."""
