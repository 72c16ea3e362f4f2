-- The append-only event log and its daily rollup.
--
-- events.timestamp is TEXT in one fixed UTC format, 'YYYY-MM-DDTHH:MM:SS.ffffffZ'
-- (27 characters): it sorts lexicographically in time order, so range predicates use
-- the index, and it is the very string the API returns in its 202 answer.

CREATE TABLE events (
    seq        INTEGER PRIMARY KEY,             -- rowid: insertion order, appended at the end
    event_id   TEXT    NOT NULL,                -- lowercase UUIDv7, time-ordered
    user_id    TEXT    NOT NULL,
    event_type TEXT    NOT NULL CHECK (event_type IN ('view', 'click', 'location')),
    timestamp  TEXT    NOT NULL CHECK (length(timestamp) = 27),
    payload    TEXT    NOT NULL                 -- JSON object, as sent
);

-- Looks up one event by id; UUIDv7 keys make inserts touch only the index's right edge.
CREATE UNIQUE INDEX "events#event_id" ON events (event_id);

-- Counts a type over a time range without touching the table (covering), and recounts
-- a day per type for reconciliation.
CREATE INDEX "events#event_type#timestamp" ON events (event_type, timestamp);

-- The log is append-only in the database itself, not only by convention.
CREATE TRIGGER "events#no_update" BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events is an append-only log: UPDATE is not allowed');
END;

CREATE TRIGGER "events#no_delete" BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events is an append-only log: DELETE is not allowed');
END;

-- Daily counts per event type: a cache of the log that can always be rebuilt from it.
CREATE TABLE daily_event_counts (
    day        TEXT    NOT NULL,                -- 'YYYY-MM-DD', a UTC day
    event_type TEXT    NOT NULL,
    count      INTEGER NOT NULL CHECK (count > 0),
    PRIMARY KEY (day, event_type)
) WITHOUT ROWID;

-- Idempotency-Key replays: the request's hash and the answer it got, written in the
-- same transaction as the events, so a replay after a crash still finds it.
CREATE TABLE idempotency_keys (
    key          TEXT NOT NULL PRIMARY KEY,
    request_hash BLOB NOT NULL,
    response     TEXT NOT NULL,                 -- the 202 body, JSON
    created_at   TEXT NOT NULL                  -- same format as events.timestamp
) WITHOUT ROWID;

CREATE INDEX "idempotency_keys#created_at" ON idempotency_keys (created_at);
