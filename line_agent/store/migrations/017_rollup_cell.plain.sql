-- The 1-minute / 1-hour rollups keep the cell (see 013: the cell is part of a point's key). Two Sparkplug
-- edge nodes of one group publishing node-level metrics (device '') no longer fold into one rollup row.
-- Plain PostgreSQL: the rollup tables get a `cell` column and the key (line, cell, device, metric, bucket);
-- the refresh function groups by it; existing buckets are recomputed from the raw rows. The TimescaleDB
-- twin is 017_rollup_cell.timescale.sql.
ALTER TABLE telemetry_1m ADD COLUMN IF NOT EXISTS cell text NOT NULL DEFAULT '';
ALTER TABLE telemetry_1h ADD COLUMN IF NOT EXISTS cell text NOT NULL DEFAULT '';
ALTER TABLE telemetry_1m DROP CONSTRAINT IF EXISTS telemetry_1m_pkey;
ALTER TABLE telemetry_1h DROP CONSTRAINT IF EXISTS telemetry_1h_pkey;
TRUNCATE telemetry_1m, telemetry_1h;
ALTER TABLE telemetry_1m ADD CONSTRAINT telemetry_1m_pkey PRIMARY KEY (line, cell, device, metric, bucket);
ALTER TABLE telemetry_1h ADD CONSTRAINT telemetry_1h_pkey PRIMARY KEY (line, cell, device, metric, bucket);

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
    INSERT INTO telemetry_1m (bucket, line, cell, device, metric, n, sum, min, max)
    SELECT date_trunc('minute', ts, 'UTC'), line, cell, device, metric, count(*), sum(value), min(value), max(value)
    FROM telemetry WHERE ts >= lo_m AND ts < hi_m
    GROUP BY 1, 2, 3, 4, 5;
    -- Hours from minutes (sums of sums, min of mins): cheap however much raw data an hour holds.
    DELETE FROM telemetry_1h WHERE bucket >= lo_h AND bucket < hi_h;
    INSERT INTO telemetry_1h (bucket, line, cell, device, metric, n, sum, min, max)
    SELECT date_trunc('hour', bucket, 'UTC'), line, cell, device, metric, sum(n), sum(sum), min(min), max(max)
    FROM telemetry_1m WHERE bucket >= lo_h AND bucket < hi_h
    GROUP BY 1, 2, 3, 4, 5;
END $$;

-- The buckets that existed, recomputed per cell (one pass over the raw rows; nothing when empty).
SELECT lg_refresh_telemetry_rollups(min(ts), max(ts) + interval '1 microsecond') FROM telemetry HAVING count(*) > 0;
