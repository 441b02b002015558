-- Core tables shared by the whole line. Later migrations (010+ store/ingest, 020+ control,
-- 030+ agent) extend them. Times are timestamptz, UTC.

-- Numeric telemetry points: energy, process values, machine state as numbers.
-- One value per (line, device, metric, ts): the natural key is also the de-duplication key, so a
-- re-delivered or replayed MQTT message is stored once.
CREATE TABLE IF NOT EXISTS telemetry (
    ts       timestamptz      NOT NULL,
    site     text             NOT NULL DEFAULT '',
    line     text             NOT NULL,
    cell     text             NOT NULL DEFAULT '',
    device   text             NOT NULL DEFAULT '',
    metric   text             NOT NULL,
    value    double precision,
    PRIMARY KEY (line, device, metric, ts)
);

-- Discrete events: faults (with a failure mode code), alarms, state changes.
CREATE TABLE IF NOT EXISTS events (
    event_id   text        PRIMARY KEY,          -- stable id from the source: dedupe key
    ts         timestamptz NOT NULL,
    site       text        NOT NULL DEFAULT '',
    line       text        NOT NULL,
    cell       text        NOT NULL DEFAULT '',
    device     text        NOT NULL DEFAULT '',
    kind       text        NOT NULL,             -- fault | alarm | state | ...
    code       text        NOT NULL DEFAULT '',  -- e.g. TWF, HDF, PWF, OSF, RNF
    severity   smallint    NOT NULL DEFAULT 0,
    duration_s double precision,
    payload    jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS events_line_ts ON events (line, ts);

-- One row per inspected part: the vision decision.
CREATE TABLE IF NOT EXISTS inspections (
    inspection_id text        PRIMARY KEY,
    ts            timestamptz NOT NULL,
    site          text        NOT NULL DEFAULT '',
    line          text        NOT NULL,
    camera        text        NOT NULL,
    part_id       text        NOT NULL,
    decision      text        NOT NULL CHECK (decision IN ('pass', 'reject', 'rework')),
    n_defects     integer     NOT NULL DEFAULT 0,
    latency_ms    double precision,
    model         text        NOT NULL DEFAULT '',
    frame_path    text,
    truth         jsonb,                          -- injected ground truth (simulation only)
    override      text                            -- operator's decision when it differs
);
CREATE INDEX IF NOT EXISTS inspections_line_ts ON inspections (line, ts);

CREATE TABLE IF NOT EXISTS defects (
    inspection_id text             NOT NULL REFERENCES inspections (inspection_id) ON DELETE CASCADE,
    idx           integer          NOT NULL,
    ts            timestamptz      NOT NULL,
    line          text             NOT NULL,
    camera        text             NOT NULL,
    cls           text             NOT NULL,
    confidence    double precision NOT NULL,
    x1 real NOT NULL, y1 real NOT NULL, x2 real NOT NULL, y2 real NOT NULL,
    PRIMARY KEY (inspection_id, idx)
);
CREATE INDEX IF NOT EXISTS defects_line_ts ON defects (line, ts);

-- Malformed input is never dropped: it lands here with the reason and the raw bytes.
CREATE TABLE IF NOT EXISTS dead_letter (
    id          bigserial   PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    source      text        NOT NULL,            -- e.g. mqtt
    topic       text        NOT NULL DEFAULT '',
    reason      text        NOT NULL,
    payload     bytea
);
