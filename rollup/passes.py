"""One pass at a time, across instances: reconcile, rebuild, erasure and retention passes
each hold the storage's job lock for their whole run (a PostgreSQL session advisory lock;
on SQLite every step already takes the file's write lock, which is what keeps it exact).

Within one process the runner (``rollup.service``) already serialises passes; this lock
covers the other instances and the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from schema.storage import Storage

log = logging.getLogger(__name__)

JOB = "passes"  # the storage job lock every lifecycle pass holds
LOCK_POLL_S = 0.5  # how often a waiting pass tries the lock again


class PassBusyError(Exception):
    """Another instance is running a pass, and the caller chose not to wait."""


@contextlib.asynccontextmanager
async def one_at_a_time(
    store: Storage, *, stop: asyncio.Event | None = None, wait: bool = True
) -> AsyncIterator[bool]:
    """Hold the job lock for the block: yields True once held, or False when ``stop`` was
    set while waiting (the pass then ends at once). Without ``wait``, raises
    ``PassBusyError`` when another instance holds it."""
    waiting = False
    while not await store.try_lock_job(JOB):
        if not wait:
            raise PassBusyError()
        if not waiting:
            log.info("another instance is running a pass; waiting for it to finish")
            waiting = True
        stop = stop or asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), LOCK_POLL_S)
        if stop.is_set():
            yield False
            return
    try:
        yield True
    finally:
        await store.unlock_job(JOB)
