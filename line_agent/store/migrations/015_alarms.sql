-- Alarms for the supervisor console (line_agent/api/alarms.py). The API derives them, it does not invent
-- them: an event alarm is one audit_log row the runtime wrote (line.safe_state, line.estop, a rule's
-- plc.stop by runtime:<line> ...), latched until a person clears it; a condition alarm is a readiness check
-- that fails (PLC link, camera, model, broker) or a threshold that is passed (reject rate, energy), open while
-- the condition lasts and cleared by the API when it goes. Acknowledgements are kept in alarm_acks (and
-- audited as alarm.ack). line_targets holds each line's targets and thresholds (console colours and alarms).
CREATE TABLE IF NOT EXISTS alarms (
    alarm_id    bigserial   PRIMARY KEY,
    key         text        NOT NULL,           -- audit:<audit_id> for events; cond:<check> for conditions
    line        text        NOT NULL,
    kind        text        NOT NULL,           -- rule_stop, safe_state, estop, plc_link, camera, reject_rate ...
    severity    text        NOT NULL CHECK (severity IN ('critical', 'high', 'medium', 'low')),
    title       text        NOT NULL,
    reason      text        NOT NULL DEFAULT '',
    source      text        NOT NULL DEFAULT '', -- who or what raised it: runtime:<line>, plc:<line>, readiness, threshold
    audit_id    bigint,                          -- the audit row an event alarm came from
    latched     boolean     NOT NULL,            -- true: a person clears it; false: it clears with its condition
    raised_at   timestamptz NOT NULL DEFAULT now(),
    cleared_at  timestamptz,
    cleared_by  text        NOT NULL DEFAULT ''
);
-- One open alarm per condition; one alarm per audit row.
CREATE UNIQUE INDEX IF NOT EXISTS alarms_open_key ON alarms (key) WHERE cleared_at IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS alarms_audit_id ON alarms (audit_id) WHERE audit_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS alarms_line_raised ON alarms (line, raised_at);

CREATE TABLE IF NOT EXISTS alarm_acks (
    alarm_id  bigint      PRIMARY KEY REFERENCES alarms (alarm_id) ON DELETE CASCADE,
    ts        timestamptz NOT NULL DEFAULT now(),
    actor     text        NOT NULL,
    role      text        NOT NULL,
    note      text        NOT NULL DEFAULT ''
);

-- How far the API has read audit_log for event alarms (one row).
CREATE TABLE IF NOT EXISTS alarm_cursor (
    id            integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    last_audit_id bigint  NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS line_targets (
    line               text             PRIMARY KEY,
    throughput_ppm     double precision,                        -- target parts per minute (none: no target)
    throughput_amber   double precision NOT NULL DEFAULT 0.9,   -- fraction of the target below which it is amber
    throughput_red     double precision NOT NULL DEFAULT 0.75,
    reject_amber       double precision NOT NULL DEFAULT 0.05,  -- reject rate (0..1) from which it is amber
    reject_red         double precision NOT NULL DEFAULT 0.10,  -- ... red, and an alarm
    reject_window_min  double precision NOT NULL DEFAULT 15,    -- the window the rate is taken over
    reject_min_parts   integer          NOT NULL DEFAULT 20,    -- fewer parts in the window: no rate alarm
    energy_kwh_h_max   double precision,                        -- kWh in the last hour above this: an alarm
    updated_at         timestamptz,
    updated_by         text             NOT NULL DEFAULT ''
);
