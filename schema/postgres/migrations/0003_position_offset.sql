-- Log positions are (transaction id + xid_offset) × 65,536 + ordinal. A database moved to
-- another server by pg_dump/pg_restore or logical replication keeps its rows' positions but
-- not the transaction-id counter they came from: the new server's ids may be smaller, and
-- new events would then be numbered below old ones, so an export cursor or an erasure bound
-- would miss the old ones. Each start raises the offset until every new position lies above
-- the log's highest (schema.postgres.migrate.align_positions); it never goes down.
ALTER TABLE log_state ADD COLUMN xid_offset bigint NOT NULL DEFAULT 0 CHECK (xid_offset >= 0);
