-- The append-only event log, its daily and 15-minute rollups, and idempotency keys.
--
-- The same tables and column names as on SQLite (schema/sqlite/migrations), in
-- PostgreSQL's own types: timestamptz (microseconds, as the API's timestamps), uuid, date.
-- The README ("Storage backends") explains each choice.

-- The log, range-partitioned by UTC month of its timestamp: retention drops a whole
-- month in one cheap DDL statement, a day's recount reads one partition, and a year is
-- twelve partitions (planning stays fast even for counts that prune none).
CREATE TABLE events (
    event_id   uuid        NOT NULL,            -- UUIDv7, server-assigned, time-ordered
    user_id    text        NOT NULL,            -- never holds U+0000 (refused with a 400)
    event_type text        NOT NULL CHECK (event_type IN ('view', 'click', 'location')),
    timestamp  timestamptz NOT NULL,            -- the API's timestamp, microseconds
    payload    json        NOT NULL,            -- JSON text exactly as serialised (not jsonb:
                                                -- jsonb reorders keys and refuses \u0000)
    -- A partitioned table's unique key must hold the partition key. In this order it is
    -- also the log's order (a keyset cursor for export) and appends at the index's right
    -- edge; a lookup by event_id derives the timestamp's millisecond from the UUIDv7.
    PRIMARY KEY (timestamp, event_id)
) PARTITION BY RANGE (timestamp);

-- Counts a type over a time range, and recounts a day per type, index-only.
CREATE INDEX "events#event_type#timestamp" ON events (event_type, timestamp);

-- A row no monthly partition covers (a month not created yet: clock skew, a backfill)
-- lands here instead of failing its whole group commit; ensure_event_partition moves
-- such rows into their month when it creates it.
CREATE TABLE events_default PARTITION OF events DEFAULT;

-- Append-only in the database itself. The one sanctioned way to delete rows (erasure,
-- retention, partition maintenance) is a transaction that first runs
--     SET LOCAL analytics.sanctioned_delete = '<operation>';
-- UPDATE is never allowed. A guard against mistakes, not a privilege boundary (that is
-- the database role's job); dropping a whole partition is DDL and fires no row trigger.
CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       AND coalesce(current_setting('analytics.sanctioned_delete', true), '') <> '' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'events is an append-only log: % is not allowed', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

-- Row triggers of a partitioned table are cloned to every partition; TRUNCATE triggers
-- are not (a TRUNCATE of events fires those of its partitions), so each partition gets
-- its own (see ensure_event_partition).
CREATE TRIGGER "events#no_update_delete" BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();
CREATE TRIGGER "events#no_truncate" BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();
CREATE TRIGGER "events#no_truncate" BEFORE TRUNCATE ON events_default
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();

-- Daily counts per UTC day and event type: a cache of the log that can always be
-- rebuilt from it. One logical counter is spread over up to 16 rows (slot 0..15): each
-- writer connection adds to a slot of its own, so instances committing at the same
-- moment never wait on each other's row lock; readers SUM over the slots. A recount
-- rewrites a key as slot 0 alone. fillfactor leaves room on each page for HOT updates.
CREATE TABLE daily_event_counts (
    day        date     NOT NULL,
    event_type text     NOT NULL,
    slot       smallint NOT NULL DEFAULT 0 CHECK (slot BETWEEN 0 AND 15),
    count      bigint   NOT NULL CHECK (count > 0),
    PRIMARY KEY (day, event_type, slot)
) WITH (fillfactor = 70);

-- Counts per 15-minute UTC bucket (its first instant in Unix seconds, as on SQLite) and
-- event type, slotted like the daily rollup.
CREATE TABLE quarter_hour_event_counts (
    bucket     bigint   NOT NULL CHECK (bucket % 900 = 0),
    event_type text     NOT NULL,
    slot       smallint NOT NULL DEFAULT 0 CHECK (slot BETWEEN 0 AND 15),
    count      bigint   NOT NULL CHECK (count > 0),
    PRIMARY KEY (bucket, event_type, slot)
) WITH (fillfactor = 70);

-- The 15-minute bucket of an instant: its first second since the Unix epoch, floored to
-- a multiple of 900 (also before 1970), in integers (numeric division rounds). One
-- definition for appending and recounting; the planner inlines it.
CREATE FUNCTION quarter_hour_of(moment timestamptz) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT floor(extract(epoch FROM moment))::bigint
        - ((floor(extract(epoch FROM moment))::bigint % 900) + 900) % 900
$$;

-- Idempotency-Key replays: the request's hash and the answer it got, written in the
-- same transaction as the events. The primary key makes a key unique across instances.
CREATE TABLE idempotency_keys (
    key          text        PRIMARY KEY,
    request_hash bytea       NOT NULL,
    response     text        NOT NULL,          -- the 202 body, JSON
    created_at   timestamptz NOT NULL
);

CREATE INDEX "idempotency_keys#created_at" ON idempotency_keys (created_at);

-- The monthly partition holding ``month`` (any day of it), created when missing; true
-- when this call created it. Idempotent and safe from any instance while others insert:
-- a standalone table + ATTACH takes SHARE UPDATE EXCLUSIVE on events, which inserts and
-- reads do not wait for (CREATE TABLE … PARTITION OF would take ACCESS EXCLUSIVE). Rows
-- of that month already in the DEFAULT partition are moved first, under a lock on the
-- DEFAULT partition only. Callers set a short lock_timeout and retry later.
CREATE FUNCTION ensure_event_partition(month date) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    first date := date_trunc('month', month)::date;
    lo timestamptz := first::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (first + interval '1 month')::timestamp AT TIME ZONE 'UTC';
    name text := 'events_' || to_char(first, 'YYYY_MM');
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('analytics.ensure_event_partition'));
    -- Another instance may have made it meanwhile. Not to_regclass() again: this session's
    -- catalog cache may still hold "no such table" (an advisory lock processes no cache
    -- invalidations); a query of pg_class reads the committed rows.
    IF EXISTS (SELECT FROM pg_class WHERE relname = name
               AND relnamespace = current_schema()::regnamespace) THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                   name);
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (timestamp >= %L AND timestamp < %L)',
                   name, name || '_bound', lo, hi);
    LOCK TABLE events_default IN ACCESS EXCLUSIVE MODE;  -- ATTACH needs it anyway
    PERFORM set_config('analytics.sanctioned_delete', 'partition_maintenance', true);
    EXECUTE format('WITH moved AS (DELETE FROM events_default WHERE timestamp >= %L '
                   'AND timestamp < %L RETURNING *) INSERT INTO %I SELECT * FROM moved',
                   lo, hi, name);
    PERFORM set_config('analytics.sanctioned_delete', '', true);
    -- The CHECK constraint proves the bound: ATTACH skips its validation scan.
    EXECUTE format('ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   name, lo, hi);
    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', name, name || '_bound');
    EXECUTE format('CREATE TRIGGER "events#no_truncate" BEFORE TRUNCATE ON %I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION events_append_only()', name);
    RETURN true;
END $$;
