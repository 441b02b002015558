-- Control API (issues 6 and 7): API tokens, part decisions, line commands with idempotency keys,
-- label corrections sent to the training set, and an append-only audit trail.

-- Bearer tokens are stored as sha256(token) hex only: a database dump does not reveal a usable token.
CREATE TABLE IF NOT EXISTS api_tokens (
    token_id    bigserial   PRIMARY KEY,
    name        text        NOT NULL,
    token_hash  text        NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    role        text        NOT NULL CHECK (role IN ('viewer', 'operator', 'supervisor', 'admin')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text        NOT NULL DEFAULT '',
    revoked_at  timestamptz
);

-- Part decisions posted to the API (by a QA system or the runtime), with the reject-gate outcome.
CREATE TABLE IF NOT EXISTS decisions (
    decision_id   bigserial   PRIMARY KEY,
    ts            timestamptz NOT NULL DEFAULT now(),
    line          text        NOT NULL,
    part_id       text        NOT NULL,
    inspection_id text,
    camera        text        NOT NULL DEFAULT '',
    decision      text        NOT NULL CHECK (decision IN ('pass', 'reject', 'rework')),
    override      text        CHECK (override IN ('pass', 'reject', 'rework')),
    actor         text        NOT NULL,
    gate          text        NOT NULL DEFAULT 'none',  -- none | fired | refused | no_controller | error
    gate_reason   text        NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS decisions_line_ts ON decisions (line, ts);

-- Line commands. The idempotency key is unique: a replayed request finds the first row and gets
-- its stored response back instead of acting twice.
CREATE TABLE IF NOT EXISTS commands (
    command_id      bigserial   PRIMARY KEY,
    ts              timestamptz NOT NULL DEFAULT now(),
    idempotency_key text        NOT NULL UNIQUE,
    request_hash    text        NOT NULL,            -- sha256 of (command, body): a reused key with other content is refused
    line            text        NOT NULL,
    command         text        NOT NULL CHECK (command IN ('stop', 'start', 'slow', 'reset-rejects')),
    params          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    actor           text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'ok', 'refused', 'error')),
    reason          text        NOT NULL DEFAULT '',
    state_before    jsonb,
    state_after     jsonb,
    http_status     integer,
    response        jsonb,
    finished_at     timestamptz
);
CREATE INDEX IF NOT EXISTS commands_ts ON commands (ts);

-- Corrected labels an operator sent to the training set (the files are written in DeepPCB layout).
CREATE TABLE IF NOT EXISTS label_corrections (
    correction_id bigserial   PRIMARY KEY,
    ts            timestamptz NOT NULL DEFAULT now(),
    inspection_id text        NOT NULL REFERENCES inspections (inspection_id) ON DELETE CASCADE,
    actor         text        NOT NULL,
    labels        jsonb       NOT NULL,
    sample_path   text        NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS label_corrections_inspection ON label_corrections (inspection_id);

-- Who did what, when, with the values before and after and the result. Append-only: the trigger
-- below refuses UPDATE, DELETE and TRUNCATE for every role, the owner included.
CREATE TABLE IF NOT EXISTS audit_log (
    audit_id  bigserial   PRIMARY KEY,
    ts        timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor     text        NOT NULL,
    role      text        NOT NULL DEFAULT '',
    action    text        NOT NULL,           -- command.stop, decision.override, labels.save, token.create ...
    target    text        NOT NULL DEFAULT '',
    before    jsonb,
    after     jsonb,
    result    text        NOT NULL,           -- ok | refused | error | denied
    detail    jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS audit_log_ts ON audit_log (ts);

CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END;
$$;

DROP TRIGGER IF EXISTS audit_log_no_update_delete ON audit_log;
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
