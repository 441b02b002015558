-- The 1-minute / 1-hour continuous aggregates keep the cell (see 017_rollup_cell.plain.sql). A continuous
-- aggregate's grouping cannot be altered: both are dropped and made again with `cell`, their refresh
-- policies too. They are real-time (materialized_only = false), so queries see every bucket at once; the
-- policies materialise the recent ones on their next runs, refresh_rollups any window on demand.
DROP MATERIALIZED VIEW IF EXISTS telemetry_1h;
DROP MATERIALIZED VIEW IF EXISTS telemetry_1m;

CREATE MATERIALIZED VIEW telemetry_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(interval '1 minute', ts) AS bucket, line, cell, device, metric,
       count(*) AS n, sum(value) AS sum, min(value) AS min, max(value) AS max
FROM telemetry GROUP BY 1, 2, 3, 4, 5
WITH NO DATA;

CREATE MATERIALIZED VIEW telemetry_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(interval '1 hour', ts) AS bucket, line, cell, device, metric,
       count(*) AS n, sum(value) AS sum, min(value) AS min, max(value) AS max
FROM telemetry GROUP BY 1, 2, 3, 4, 5
WITH NO DATA;

SELECT add_continuous_aggregate_policy('telemetry_1m', start_offset => interval '2 hours',
    end_offset => interval '1 minute', schedule_interval => interval '1 minute', if_not_exists => true);
SELECT add_continuous_aggregate_policy('telemetry_1h', start_offset => interval '3 days',
    end_offset => interval '1 hour', schedule_interval => interval '10 minutes', if_not_exists => true);
