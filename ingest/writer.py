"""The one writer: group commit with a bounded queue.

Handlers ``submit()`` validated events and wait. A single task takes everything that
queued up while the previous transaction ran, appends it to the log and the rollup in
one transaction, commits, and only then answers each waiting request. Under load, one
fsync covers hundreds of requests; at rest a lone event commits at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from schema.storage import (
    EventRow,
    KeyRow,
    Storage,
    StorageBusyError,
    StorageUnavailableError,
    StoredKey,
    WriteGroup,
)
from schema.timestamps import format_ts, now

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """More events are waiting for the writer than the configured bound."""


class WriterClosedError(Exception):
    """The service is shutting down and takes no more writes."""


class IdempotencyConflictError(Exception):
    """The Idempotency-Key was used before with a different request body."""


@dataclass
class WriteRequest:
    """One request's events, ready for the log, and the answer to give once committed."""

    rows: list[EventRow]
    response: str  # the 202 body, JSON
    key: str | None = None
    request_hash: bytes | None = None
    created_at: str = ""
    future: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass(frozen=True)
class CommitStats:
    """One group commit, for metrics: ``events_by_type`` ({"view": 12, …}) written,
    ``replays`` (requests answered from an Idempotency-Key stored earlier or earlier in
    the same batch, storing nothing) and ``seconds`` the transaction took."""

    events_by_type: dict[str, int]
    replays: int
    seconds: float


_STOP = object()


class Writer:
    PRUNE_EVERY_S = 600.0

    def __init__(
        self,
        store: Storage,
        *,
        queue_max_events: int,
        commit_max_events: int,
        key_ttl_hours: float = 24.0,
        on_commit: Callable[[CommitStats], None] | None = None,
    ):
        self.store = store
        self.on_commit = on_commit  # called on the loop after each commit, before the answers
        self.queue_max_events = queue_max_events
        self.commit_max_events = commit_max_events
        self.key_ttl = timedelta(hours=key_ttl_hours)
        self._last_prune = float("-inf")
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queued_events = 0
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.commits = 0

    @property
    def queued_events(self) -> int:
        """Events submitted and not yet answered (waiting, or in the commit under way)."""
        return self._queued_events

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-writer")

    async def close(self) -> None:
        """Stop taking writes, commit everything already queued, then return."""
        if self._task is None or self._closing:
            return
        self._closing = True
        self._queue.put_nowait(_STOP)
        await self._task

    async def submit(self, request: WriteRequest) -> str:
        """Queue a request and wait until it is committed; returns the 202 body."""
        if self._closing:
            raise WriterClosedError()
        n = len(request.rows)
        if self._queued_events + n > self.queue_max_events and self._queued_events > 0:
            raise QueueFullError()
        self._queued_events += n
        self._queue.put_nowait(request)
        # No asyncio.shield (an extra future and two callbacks per request): if the waiting
        # handler is cancelled, the queued rows are still committed, and _commit skips
        # futures that are already done, so the outcome in the log is the same.
        return await request.future

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            size = len(first.rows)
            while size < self.commit_max_events and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
                size += len(item.rows)
            try:
                await self._commit(batch)
            except Exception as exc:  # answer the waiters; the writer itself lives on
                if isinstance(exc, StorageBusyError | StorageUnavailableError):  # 503
                    log.warning("group commit of %d events: %s", size, exc)
                else:
                    log.error("group commit of %d events failed: %r", size, exc, exc_info=exc)
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
            finally:
                self._queued_events -= size
            await self._prune_keys_now_and_then()

    async def _prune_keys_now_and_then(self) -> None:
        """Forget expired Idempotency-Keys; done here because the writer is their only writer."""
        if time.monotonic() - self._last_prune < self.PRUNE_EVERY_S:
            return
        self._last_prune = time.monotonic()
        try:
            removed = await self.store.prune_keys(format_ts(now() - self.key_ttl))
        except Exception as exc:  # a failed prune only delays forgetting
            log.warning("pruning idempotency keys failed: %r", exc)
            return
        if removed:
            log.info("forgot %d idempotency keys older than %s", removed, self.key_ttl)

    async def _commit(self, batch: list[WriteRequest]) -> None:
        """One transaction for the batch; then answer each request. A key seen twice in
        the batch is written once (the first); a key another writer stored first is not
        written at all (the store returns its original answer)."""
        groups: list[WriteGroup] = []
        first: dict[str, StoredKey] = {}  # key -> (hash, answer) of its first request here
        for request in batch:
            key_row: KeyRow | None = None
            if request.key:
                if request.key in first:
                    continue
                assert request.request_hash is not None
                first[request.key] = (request.request_hash, request.response)
                key_row = (request.key, request.request_hash, request.response, request.created_at)
            groups.append(WriteGroup(request.rows, key_row))
        began = time.perf_counter()
        stored = await self.store.append(groups)
        seconds = time.perf_counter() - began
        self.commits += 1
        if self.on_commit is not None:
            self._observe(batch, groups, stored, first, seconds)
        for request in batch:
            if request.future.done():
                continue
            if not request.key:
                request.future.set_result(request.response)
                continue
            digest, response = stored.get(request.key) or first[request.key]
            if digest == request.request_hash:
                request.future.set_result(response)
            else:
                request.future.set_exception(IdempotencyConflictError())

    def _observe(
        self,
        batch: list[WriteRequest],
        groups: list[WriteGroup],
        stored: dict[str, StoredKey],
        first: dict[str, StoredKey],
        seconds: float,
    ) -> None:
        """Tell ``on_commit`` what the commit wrote; a metrics fault never fails a write."""
        try:
            written = Counter(
                row[2]
                for group in groups
                if group.key is None or group.key[0] not in stored  # not skipped by the store
                for row in group.rows
            )
            replays = 0
            for request in batch:
                if request.key:
                    digest, response = stored.get(request.key) or first[request.key]
                    # the same body, answered with another request's answer: a replay
                    if digest == request.request_hash and response != request.response:
                        replays += 1
            assert self.on_commit is not None
            self.on_commit(CommitStats(dict(written), replays, seconds))
        except Exception:
            log.exception("the commit observer failed")
