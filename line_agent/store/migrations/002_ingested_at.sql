-- When each inspection reached the database: ingest lag = ingested_at - ts, measured per row
-- (lineguard bench lines reports its p99). Filled by the default at INSERT, whatever the writer.
ALTER TABLE inspections ADD COLUMN IF NOT EXISTS ingested_at timestamptz DEFAULT clock_timestamp();
