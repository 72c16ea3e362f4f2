-- Counts per 15-minute UTC bucket and event type, beside the daily rollup.
--
-- Since 1979 every UTC offset in the IANA database is a multiple of 15 minutes, so any
-- local day, hour, ISO week or month of any zone is a whole number of these buckets:
-- answers in every time zone come from rollups, and only a date-time bound that cuts a
-- bucket sends a query to the log. bucket is the bucket's first instant in seconds since
-- the Unix epoch (a multiple of 900): an integer compares and sums cheaply and means the
-- same on every backend.

CREATE TABLE quarter_hour_event_counts (
    bucket     INTEGER NOT NULL CHECK (bucket % 900 = 0),
    event_type TEXT    NOT NULL,
    count      INTEGER NOT NULL CHECK (count > 0),
    PRIMARY KEY (bucket, event_type)
) WITHOUT ROWID;

-- Fill it from the log that is already there (a database of an earlier version).
INSERT INTO quarter_hour_event_counts (bucket, event_type, count)
SELECT s - ((s % 900) + 900) % 900, event_type, COUNT(*)
FROM (SELECT unixepoch(substr(timestamp, 1, 19)) AS s, event_type FROM events)
GROUP BY 1, 2;
