-- What the ingest workers' dead-letter quota did (line_agent/ingest/writer.py), for the API's alarm
-- (line_agent/api/alarms.py, cond:dead_letter:<line>): the quota the workers enforce and how many bad messages
-- they acknowledged without a dead_letter row because the table was full, with the time of the last one.
-- The Prometheus counter (lineguard_dead_letters_dropped_total) lives in each worker's process; this row is
-- what another process can read. Written in the same transaction as the dead letters.
CREATE TABLE IF NOT EXISTS dead_letter_quota (
    id              integer     PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    quota_bytes     bigint      NOT NULL,             -- 0 = no limit
    dropped         bigint      NOT NULL DEFAULT 0,   -- since the table was created
    last_dropped_at timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
