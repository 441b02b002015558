-- Bounded dead letters: a row keeps the first 4 KiB of the payload (ingest cuts it), with the whole
-- payload's size and SHA-256, so a 16 MiB bad message costs 4 KiB. digest (011) stays the
-- de-duplication key. Rows stored before keep their whole payload; their size and SHA-256 are filled in.
ALTER TABLE dead_letter ADD COLUMN IF NOT EXISTS payload_size bigint;
ALTER TABLE dead_letter ADD COLUMN IF NOT EXISTS payload_sha256 bytea;
UPDATE dead_letter SET payload_size = octet_length(payload), payload_sha256 = sha256(payload)
WHERE payload_size IS NULL AND payload IS NOT NULL;
