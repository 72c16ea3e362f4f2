"""The statements that run on every group commit or lifecycle step read by rowid or by an
index range, never by scanning a table: SQLite's planner picks per statement, and a new
index can change its mind (the ("events#day#user_id") index once turned the daily rollup
delta of every commit into a walk of the whole index)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from schema.sqlite import store
from schema.sqlite.migrate import migrate

TYPES3 = ("view", "click", "location")
STATEMENTS = {
    "last seq": (store.LAST_SEQ_SQL, ()),
    "daily delta": (store.ADD_TO_DAILY_SQL, (0,)),
    "quarter delta": (store.ADD_TO_QUARTERS_SQL, (0,)),
    "erasure: a user's day": (store.FIND_USER_EVENTS_SQL, ("2025-05-01", "u", 9, 10)),
    "erasure: delete": (store.DELETE_DOOMED_SQL, ()),
    "erasure: look": (store.LOOK_USER_EVENTS_SQL, ("2025-05-01", "u", 9, 10)),
    "erasure: touch ids": (store.TOUCH_EVENT_IDS_SQL, ('[["a", "view", "t"]]',)),
    "erasure: touch times": (store.TOUCH_TYPE_TIMESTAMPS_SQL, ('[["a", "view", "t"]]',)),
    "retention: window": (store.WINDOW_END_SQL, (0, 10)),
    "retention: delete": (store.EXPIRE_WINDOW_SQL, (0, 10, "2025-05-01")),
    "export page": (
        store.EXPORT_PAGE_SQL.format(marks="?, ?, ?"),
        (0, 10, *TYPES3, "", "~", 10),
    ),
    **{f"subtract {i}": (sql, ()) for i, sql in enumerate(store.SUBTRACT_SQL)},
}
BIG_TABLES = ("events", "daily_event_counts", "quarter_hour_event_counts")


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> sqlite3.Connection:
    path = Path(tmp_path_factory.mktemp("plans")) / "plans.db"
    migrate(path)
    db = sqlite3.connect(path, isolation_level=None)
    for sql in store.DOOMED_TABLES_SQL:
        db.execute(sql)
    return db


@pytest.mark.parametrize("name", STATEMENTS)
def test_no_statement_scans_a_table(conn, name):
    sql, args = STATEMENTS[name]
    plan = " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
    for table in BIG_TABLES:
        assert f"SCAN {table}" not in plan, plan
