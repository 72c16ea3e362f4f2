"""Erasure of one person's events (the right to be forgotten).

Every event of the ``user_id`` leaves the log and is subtracted from every rollup in the
same transaction (``Storage.erase_step``), so no answer ever counts an erased event and
the exactness invariant holds after every step. A person with many events is erased in
bounded steps (at most ``MOST_STEP`` events, sized to ``rollup.steps.TARGET_MS``), each a
short transaction on the writer lane, so
ingestion keeps flowing between them. The erasure covers every event committed before it
began (positions up to ``log_position()`` at the start): events that arrive while it runs,
or later, are stored as usual and counted as usual.

The audit record keeps when, how many events and a SHA-256 of the ``user_id`` — never
the id itself; logs carry only the first characters of that digest.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, replace

from rollup import passes
from rollup.steps import StepSize, percentiles
from schema.storage import AuditEntry, Storage
from schema.timestamps import format_ts, now

log = logging.getLogger(__name__)

# Events per transaction: from FIRST_STEP, sized to the time budget (rollup.steps); a
# scattered event costs about 10 µs of write lock on a 10M-event log, so ~500 fit 40 ms.
FIRST_STEP, LEAST_STEP, MOST_STEP = 500, 50, 5_000


def user_id_digest(user_id: str) -> str:
    """The hex SHA-256 of the UTF-8 ``user_id``: what the audit keeps instead of the id."""
    return hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Erasure:
    """The outcome of one erasure: the answer's three fields, and how it went."""

    user_id: str
    events_deleted: int
    erased_at: str  # when the last step committed (the audit's finished_at)
    transactions: int
    ms: float
    longest_transaction_ms: float
    median_transaction_ms: float = 0.0
    p99_transaction_ms: float = 0.0

    def to_dict(self) -> dict[str, object]:
        """The API's answer: ``{"user_id", "events_deleted", "erased_at"}``."""
        return {
            "user_id": self.user_id,
            "events_deleted": self.events_deleted,
            "erased_at": self.erased_at,
        }

    def redacted(self) -> dict[str, object]:
        """For status pages and logs: everything but the user id."""
        return {
            "kind": "erasure",
            "events_deleted": self.events_deleted,
            "erased_at": self.erased_at,
            "transactions": self.transactions,
            "ms": round(self.ms, 1),
            "longest_transaction_ms": round(self.longest_transaction_ms, 2),
            "median_transaction_ms": self.median_transaction_ms,
            "p99_transaction_ms": self.p99_transaction_ms,
        }


async def erase(store: Storage, user_id: str, *, most: int = MOST_STEP) -> Erasure:
    """Erase every event of ``user_id`` committed before this call, in steps of at most
    ``most`` events; repeating it deletes 0. Raises ``StorageError`` (a step that fails
    rolls back alone: the steps before it stay done, and the audit says how far it got).
    Waits while another instance runs a pass (``rollup.passes``)."""
    async with passes.one_at_a_time(store):
        return await _erase(store, user_id, most)


async def _erase(store: Storage, user_id: str, most: int) -> Erasure:
    began = time.perf_counter()
    started_at = format_ts(now())
    digest = user_id_digest(user_id)
    upto = await store.log_position()
    audit = AuditEntry("erasure", started_at, started_at, user_id_sha256=digest)
    size = StepSize(min(FIRST_STEP, most), min(LEAST_STEP, most), most)
    deleted = steps = resume = 0
    longest = 0.0
    held: list[float] = []
    while True:
        audit = replace(audit, at=format_ts(now()))
        step = await store.erase_step(
            user_id, upto=upto, limit=size.rows, audit=audit, resume=resume
        )
        audit, resume = replace(audit, id=step.audit_id), step.resume
        deleted += step.deleted
        steps += 1
        longest = max(longest, step.held_ms)
        held.append(step.held_ms)
        if step.done:
            break
        size.after(step.held_ms)
    median, p99 = percentiles(held)
    result = Erasure(
        user_id,
        deleted,
        audit.at,
        steps,
        (time.perf_counter() - began) * 1000,
        longest,
        median,
        p99,
    )
    log.info(
        "erasure of user sha256:%s…: %d events deleted in %d transaction%s, %.1f ms "
        "(longest transaction %.2f ms)",
        digest[:12],
        deleted,
        steps,
        "" if steps == 1 else "s",
        result.ms,
        longest,
    )
    return result
