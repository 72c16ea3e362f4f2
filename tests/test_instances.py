"""Several service processes on one PostgreSQL database, one killed with SIGKILL under
load: every acknowledged event is counted once, and every instance gives the same answers.
Drives ``scripts/instances_test.py`` (see there for what is checked)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from scripts.instances_test import run

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_three_instances_on_one_database_one_killed_under_load(
    pg_database: str, tmp_path: Path
) -> None:
    outcome = run(pg_database, tmp_path, instances=3, duration=2.5, seed=random.randrange(10**6))
    print(f"\n{outcome}")
    assert outcome.lost == 0
    assert outcome.acknowledged > 0 and outcome.statuses.get(202, 0) > 0
    assert set(outcome.statuses) <= {202, 503}, outcome.statuses
    assert outcome.rollup_slots >= 2  # the instances' writers added to rows of their own
