"""The advisory lock keys of the service: ``(NAMESPACE, key)`` pairs of int4, so they
cannot collide with single-bigint locks other software takes in the same database.

Session locks are held by one connection until it unlocks or closes (a crashed instance
releases its own), so they mark work that spans transactions:

- ``MIGRATE``: one instance at a time migrates (``schema.postgres.migrate``);
- ``SLOTS + s``: the writer connection that adds to rollup slot ``s`` (0..15);
- ``JOBS[name]``: the instance running a pass (``passes``: reconcile, rebuild, erasure,
  retention; ``rollup.passes``), for the whole pass.
"""

from __future__ import annotations

NAMESPACE = 0x616E6C79  # "anly"
MIGRATE = 1
SLOTS = 100  # 100..115
SLOT_COUNT = 16
JOBS = {"passes": 200}


def job(name: str) -> int:
    """The key of a named job; ``KeyError`` for one the service does not know."""
    return JOBS[name]
