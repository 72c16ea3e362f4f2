"""How the PostgreSQL backend reads: a count's statement is planned once per reader
connection, not at every call."""

from __future__ import annotations

import pytest

from schema.postgres.store import COUNT_PLAN_SQL, PostgresStore
from schema.storage import CountPlan, WriteGroup
from tests.helpers import row

pytestmark = pytest.mark.postgres

PLANS_SQL = "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1"


async def test_a_count_reuses_its_generic_plan(pg_database: str) -> None:
    """A count is one statement over three sources and every month's partition of the log;
    re-planning it for each call's bounds (PostgreSQL's custom plans) took ~0.7 ms of a
    ~2 ms count, and partition pruning happens at run time with a generic plan anyway."""
    store = PostgresStore(pg_database, readers=1)  # one reader: its prepared statements
    await store.open()
    try:
        await store.append([WriteGroup([row("view", "2025-05-01T10:00:00.000000Z")])])
        plan = CountPlan(
            1,
            days=((0, "2025-05-01", "2025-05-02"),),
            quarters=((0, 1746093600, 1746094500, 1),),  # 10:00-10:15 that day
            log=((0, "2025-05-01T10:00:00.000000Z", "2025-05-01T10:00:00.500000Z"),),
        )
        for _ in range(8):
            assert await store.count(plan, ["view"]) == {(0, "view"): 3}
        generic, custom = (await store._fetch(PLANS_SQL, COUNT_PLAN_SQL))[0]
        assert (generic, custom) == (8, 0)
    finally:
        await store.close()


async def test_a_read_is_one_round_trip(pg_database: str) -> None:
    """A reader goes back to the pool without asyncpg's reset query (advisory unlock, CLOSE
    ALL, UNLISTEN, RESET ALL: a second round trip per read, for session state that reads
    never create). asyncpg still rolls back a transaction left open before any reset."""
    store = PostgresStore(pg_database, readers=1)
    await store.open()
    try:
        logged: list[str] = []
        async with store._readers().acquire() as conn:
            conn.add_query_logger(lambda query: logged.append(query.query))
        plan = CountPlan(1, days=((0, "2025-05-01", "2025-05-02"),))
        assert await store.count(plan, ["view"]) == {}  # the first also looks up types
        logged.clear()
        assert await store.count(plan, ["view"]) == {}
        assert logged == [COUNT_PLAN_SQL]
    finally:
        await store.close()
