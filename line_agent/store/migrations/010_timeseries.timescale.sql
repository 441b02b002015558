-- Time-series layout on TimescaleDB: telemetry as a hypertable (1-day chunks), compression and
-- retention policies, and continuous aggregates telemetry_1m / telemetry_1h with the same names and
-- columns as the plain-PostgreSQL rollup tables (010_timeseries.plain.sql).
CREATE EXTENSION IF NOT EXISTS timescaledb;

SELECT create_hypertable('telemetry', 'ts', chunk_time_interval => interval '1 day',
                         migrate_data => true, if_not_exists => true);

-- Compressed chunks keep one segment per series; ON CONFLICT DO NOTHING still de-duplicates late data.
ALTER TABLE telemetry SET (timescaledb.compress,
                           timescaledb.compress_segmentby = 'line, device, metric',
                           timescaledb.compress_orderby = 'ts');
SELECT add_compression_policy('telemetry', interval '7 days', if_not_exists => true);
SELECT add_retention_policy('telemetry', interval '400 days', if_not_exists => true);

CREATE INDEX IF NOT EXISTS events_ts_brin ON events USING brin (ts);
CREATE INDEX IF NOT EXISTS inspections_ts_brin ON inspections USING brin (ts);
CREATE INDEX IF NOT EXISTS defects_ts_brin ON defects USING brin (ts);

-- WITH NO DATA: a continuous aggregate cannot be filled inside the migration's transaction.
-- materialized_only = false: queries see rows newer than the last refresh too (real-time aggregation).
CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(interval '1 minute', ts) AS bucket, line, device, metric,
       count(*) AS n, sum(value) AS sum, min(value) AS min, max(value) AS max
FROM telemetry GROUP BY 1, 2, 3, 4
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(interval '1 hour', ts) AS bucket, line, device, metric,
       count(*) AS n, sum(value) AS sum, min(value) AS min, max(value) AS max
FROM telemetry GROUP BY 1, 2, 3, 4
WITH NO DATA;

SELECT add_continuous_aggregate_policy('telemetry_1m', start_offset => interval '2 hours',
    end_offset => interval '1 minute', schedule_interval => interval '1 minute', if_not_exists => true);
SELECT add_continuous_aggregate_policy('telemetry_1h', start_offset => interval '3 days',
    end_offset => interval '1 hour', schedule_interval => interval '10 minutes', if_not_exists => true);
