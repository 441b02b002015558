-- Time-series layout on plain PostgreSQL (no TimescaleDB): native range partitioning of telemetry by
-- day, BRIN indexes on time, and rollup tables that lg_refresh_telemetry_rollups() maintains.
-- The TimescaleDB twin (010_timeseries.timescale.sql) builds relations of the same names and columns,
-- so line_agent.store.queries reads both alike.

-- telemetry becomes a partitioned table (same columns and key as 001). Rows arrive through a DEFAULT
-- partition until lg_ensure_day_partition() has made the day's partition: nothing is ever refused.
DO $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'telemetry'::regclass) = 'r' THEN
        ALTER TABLE telemetry RENAME TO telemetry_unpartitioned;
        ALTER TABLE telemetry_unpartitioned RENAME CONSTRAINT telemetry_pkey TO telemetry_unpartitioned_pkey;
        CREATE TABLE telemetry (
            ts       timestamptz      NOT NULL,
            site     text             NOT NULL DEFAULT '',
            line     text             NOT NULL,
            cell     text             NOT NULL DEFAULT '',
            device   text             NOT NULL DEFAULT '',
            metric   text             NOT NULL,
            value    double precision,
            PRIMARY KEY (line, device, metric, ts)
        ) PARTITION BY RANGE (ts);
        CREATE TABLE telemetry_default PARTITION OF telemetry DEFAULT;
        INSERT INTO telemetry SELECT ts, site, line, cell, device, metric, value FROM telemetry_unpartitioned;
        DROP TABLE telemetry_unpartitioned;
    END IF;
END $$;

-- BRIN: rows arrive in time order, so a tiny block-range index answers time-window scans.
CREATE INDEX IF NOT EXISTS telemetry_ts_brin ON telemetry USING brin (ts);
CREATE INDEX IF NOT EXISTS events_ts_brin ON events USING brin (ts);
CREATE INDEX IF NOT EXISTS inspections_ts_brin ON inspections USING brin (ts);
CREATE INDEX IF NOT EXISTS defects_ts_brin ON defects USING brin (ts);

-- Make the partition for one UTC day, moving any rows the DEFAULT partition already holds for it.
-- Called by the ingest writer for each new day it sees (cached), and safe to call concurrently.
CREATE OR REPLACE FUNCTION lg_ensure_day_partition(day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    part text := 'telemetry_' || to_char(day, 'YYYYMMDD');
    lo timestamptz := (day::timestamp AT TIME ZONE 'UTC');
    hi timestamptz := ((day + 1)::timestamp AT TIME ZONE 'UTC');
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext(part));
    IF to_regclass(part) IS NOT NULL THEN  -- made by a concurrent caller while we waited
        RETURN;
    END IF;
    BEGIN
        EXECUTE format('CREATE TABLE %I (LIKE telemetry INCLUDING DEFAULTS)', part);
    EXCEPTION WHEN duplicate_table THEN
        RETURN;  -- a concurrent caller got there first (its catalog change was not visible to us yet)
    END;
    EXECUTE format(
        'WITH moved AS (DELETE FROM telemetry_default WHERE ts >= %L AND ts < %L RETURNING *) '
        'INSERT INTO %I SELECT * FROM moved', lo, hi, part);
    EXECUTE format('ALTER TABLE telemetry ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
END $$;

-- Retention: drop whole day partitions older than ``keep`` (cheap, unlike DELETE).
CREATE OR REPLACE FUNCTION lg_drop_old_partitions(keep interval) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    n integer := 0;
BEGIN
    FOR r IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'telemetry'::regclass AND c.relname ~ '^telemetry_[0-9]{8}$'
          AND to_date(substr(c.relname, 11), 'YYYYMMDD') < (now() - keep)::date
    LOOP
        EXECUTE format('DROP TABLE %I', r.relname);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- Rollups with the columns of the TimescaleDB continuous aggregates (bucket, line, device, metric,
-- n, sum, min, max, last_ts): avg = sum / n, and sums of sums stay exact across buckets.
CREATE TABLE IF NOT EXISTS telemetry_1m (
    bucket  timestamptz NOT NULL,
    line    text NOT NULL,
    device  text NOT NULL,
    metric  text NOT NULL,
    n       bigint NOT NULL,
    sum     double precision,
    min     double precision,
    max     double precision,
    PRIMARY KEY (line, device, metric, bucket)
);
CREATE TABLE IF NOT EXISTS telemetry_1h (LIKE telemetry_1m INCLUDING ALL);
CREATE INDEX IF NOT EXISTS telemetry_1m_bucket_brin ON telemetry_1m USING brin (bucket);
CREATE INDEX IF NOT EXISTS telemetry_1h_bucket_brin ON telemetry_1h USING brin (bucket);

-- Recompute the rollup buckets overlapping [lo, hi): minutes from the raw rows, hours from the minutes
-- (so the minutes of every hour touched are recomputed first). Idempotent: re-running it after late or
-- re-delivered data is always right.
CREATE OR REPLACE FUNCTION lg_refresh_telemetry_rollups(lo timestamptz, hi timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    -- Whole buckets only: [lo, hi) widened outward to bucket boundaries.
    lo_h timestamptz := date_trunc('hour', lo, 'UTC');
    hi_h timestamptz := date_trunc('hour', hi - interval '1 microsecond', 'UTC') + interval '1 hour';
    lo_m timestamptz := date_trunc('minute', lo, 'UTC');
    hi_m timestamptz := date_trunc('minute', hi - interval '1 microsecond', 'UTC') + interval '1 minute';
BEGIN
    -- One refresher at a time: concurrent workers would both re-insert the same buckets.
    PERFORM pg_advisory_xact_lock(7242010);
    DELETE FROM telemetry_1m WHERE bucket >= lo_m AND bucket < hi_m;
    INSERT INTO telemetry_1m
    SELECT date_trunc('minute', ts, 'UTC'), line, device, metric, count(*), sum(value), min(value), max(value)
    FROM telemetry WHERE ts >= lo_m AND ts < hi_m
    GROUP BY 1, 2, 3, 4;
    -- Hours from minutes (sums of sums, min of mins): cheap however much raw data an hour holds.
    DELETE FROM telemetry_1h WHERE bucket >= lo_h AND bucket < hi_h;
    INSERT INTO telemetry_1h
    SELECT date_trunc('hour', bucket, 'UTC'), line, device, metric, sum(n), sum(sum), min(min), max(max)
    FROM telemetry_1m WHERE bucket >= lo_h AND bucket < hi_h
    GROUP BY 1, 2, 3, 4;
END $$;
