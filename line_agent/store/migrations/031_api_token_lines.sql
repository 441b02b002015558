-- Tokens scoped to lines (issue 19): the lines a token may read and act on. NULL = every line this server
-- runs (all tokens made before this migration, and the bootstrap admin). A list is never empty: "all lines" is
-- NULL, so an empty array cannot be mistaken for either "all" or "none". The API checks the names against the
-- lines it serves when a token is created (422 for an unknown one) and enforces them on every request that
-- names a line (403), filtering list endpoints to the token's lines.
ALTER TABLE api_tokens ADD COLUMN IF NOT EXISTS lines text[];
ALTER TABLE api_tokens DROP CONSTRAINT IF EXISTS api_tokens_lines_not_empty;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_lines_not_empty
    CHECK (lines IS NULL OR (cardinality(lines) > 0 AND array_position(lines, NULL) IS NULL));
