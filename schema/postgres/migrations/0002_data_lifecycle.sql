-- Data lifecycle: positions in the log that become visible in order across instances,
-- erasure of one user's events, retention of raw events, and their audit.
-- The README ("The data lifecycle on PostgreSQL") explains each choice.

-- Each event's position (export cursors, an erasure's bound): the id of the transaction
-- that appended it (xid8) × 65,536 + its ordinal in that transaction's one INSERT
-- (1..65,535), set by the store's append. Transactions of several instances commit in
-- any order, but a reader that takes only the transactions older than its snapshot's
-- xmin (all finished) sees a set that can never grow below it: a transaction that
-- finishes later has a larger xid, so larger positions. No counter row is shared by
-- the instances' commits. Rows stored before this migration are numbered 1..N in the
-- order they are met, all below every later position (checked).
CREATE SEQUENCE events_backfill_seq;
ALTER TABLE events ADD COLUMN seq bigint NOT NULL DEFAULT nextval('events_backfill_seq');
ALTER TABLE events ALTER COLUMN seq DROP DEFAULT;
DROP SEQUENCE events_backfill_seq;
DO $$
BEGIN
    IF (SELECT max(seq) FROM events) >= pg_current_xact_id()::text::bigint * 65536 THEN
        RAISE EXCEPTION 'too many events to number below the current transaction id';
    END IF;
END $$;

-- Export pages in log order: a keyset range of this index per page (one per partition,
-- merged in order).
CREATE INDEX "events#seq" ON events (seq);
-- One user's events in log order, for erasure: an index range per partition.
CREATE INDEX "events#user_id#seq" ON events (user_id, seq);

-- The log's lifecycle state, one row.
CREATE TABLE log_state (
    id          integer     PRIMARY KEY CHECK (id = 1),
    -- The retention horizon: the oldest instant the raw log still covers (the start of a
    -- UTC day); NULL while retention never deleted anything.
    horizon     timestamptz,
    -- The highest position retention ever deleted: an export resumed after it cannot
    -- miss an expired event.
    expired_seq bigint      NOT NULL DEFAULT 0
);
INSERT INTO log_state (id) VALUES (1);

-- One row per erasure or retention pass, updated by each of its transactions: a pass
-- that was interrupted keeps finished_at NULL and the number it had deleted.
CREATE TABLE lifecycle_audit (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    operation      text        NOT NULL CHECK (operation IN ('erasure', 'retention')),
    started_at     timestamptz NOT NULL,
    finished_at    timestamptz,
    events_deleted bigint      NOT NULL DEFAULT 0,
    user_id_sha256 text        CHECK (user_id_sha256 ~ '^[0-9a-f]{64}$'), -- never the id
    before         timestamptz                     -- retention: events before this instant
);
