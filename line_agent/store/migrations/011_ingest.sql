-- Ingest bookkeeping shared by both engines.
-- A dead letter is keyed by a digest of (source, topic, payload): a malformed message the broker
-- re-delivers after a worker restart is recorded once, like good data.
ALTER TABLE dead_letter ADD COLUMN IF NOT EXISTS digest bytea;
CREATE UNIQUE INDEX IF NOT EXISTS dead_letter_digest ON dead_letter (digest);
CREATE INDEX IF NOT EXISTS events_line_kind_ts ON events (line, kind, ts);
