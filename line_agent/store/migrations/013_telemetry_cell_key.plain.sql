-- The natural key of a telemetry point includes the cell: two Sparkplug edge nodes (cells) of one group
-- (line) publish node-level metrics as device '' and must not overwrite each other. Plain PostgreSQL:
-- the primary key of the partitioned table (and so of every day partition) becomes
-- (line, cell, device, metric, ts). The TimescaleDB twin is 013_telemetry_cell_key.timescale.sql.
ALTER TABLE telemetry DROP CONSTRAINT IF EXISTS telemetry_pkey;
ALTER TABLE telemetry ADD CONSTRAINT telemetry_pkey PRIMARY KEY (line, cell, device, metric, ts);
