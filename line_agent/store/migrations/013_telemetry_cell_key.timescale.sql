-- The natural key of a telemetry point includes the cell (see 013_telemetry_cell_key.plain.sql), on the
-- hypertable. Compressed chunks are decompressed first (a key cannot change under them), the cell joins
-- the compression segments (so ON CONFLICT keeps de-duplicating late data in compressed chunks), and the
-- compression policy compresses them again on its next run.
SELECT decompress_chunk(c, if_compressed => true) FROM show_chunks('telemetry') c;
ALTER TABLE telemetry DROP CONSTRAINT IF EXISTS telemetry_pkey;
ALTER TABLE telemetry ADD CONSTRAINT telemetry_pkey PRIMARY KEY (line, cell, device, metric, ts);
ALTER TABLE telemetry SET (timescaledb.compress,
                           timescaledb.compress_segmentby = 'line, cell, device, metric',
                           timescaledb.compress_orderby = 'ts');
