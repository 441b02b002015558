-- The line agent (issue 5): stored summaries with their verification verdict, and the
-- accounting of every LLM call (tokens, latency, cost). Totals per day and per line are views.

CREATE TABLE IF NOT EXISTS summaries (
    summary_id     bigserial        PRIMARY KEY,
    created_at     timestamptz      NOT NULL DEFAULT now(),
    line           text             NOT NULL,
    window_start   timestamptz      NOT NULL,
    window_end     timestamptz      NOT NULL,
    trigger        text             NOT NULL,    -- on_demand | shift | hourly | alarm | eval
    lang           text             NOT NULL DEFAULT 'en' CHECK (lang IN ('en', 'zh')),
    backend        text             NOT NULL DEFAULT '',  -- backend whose text was kept
    model          text             NOT NULL DEFAULT '',
    -- verified: model text passed; regenerated: passed on the 2nd try; fallback_template: the
    -- template narrator wrote it after the model failed; template: template chosen directly;
    -- no_data: the window held nothing to summarise; error: nothing could be written.
    verdict        text             NOT NULL
        CHECK (verdict IN ('verified', 'regenerated', 'fallback_template', 'template', 'no_data', 'error')),
    verdict_detail jsonb            NOT NULL DEFAULT '{}'::jsonb,  -- unsupported claims, attempts, errors
    headline       text             NOT NULL DEFAULT '',
    summary        jsonb            NOT NULL DEFAULT '{}'::jsonb,  -- headline, findings, checks
    prose          text             NOT NULL DEFAULT '',
    facts          jsonb            NOT NULL DEFAULT '[]'::jsonb,  -- the tool results it rests on
    tokens_in      integer          NOT NULL DEFAULT 0,
    tokens_out     integer          NOT NULL DEFAULT 0,
    latency_ms     double precision NOT NULL DEFAULT 0,
    cost_usd       double precision NOT NULL DEFAULT 0,
    published      boolean          NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS summaries_line_created ON summaries (line, created_at);
CREATE INDEX IF NOT EXISTS summaries_line_trigger_window ON summaries (line, trigger, window_start);

CREATE TABLE IF NOT EXISTS llm_calls (
    call_id     bigserial        PRIMARY KEY,
    ts          timestamptz      NOT NULL DEFAULT now(),
    line        text             NOT NULL DEFAULT '',
    summary_id  bigint           REFERENCES summaries (summary_id) ON DELETE SET NULL,
    purpose     text             NOT NULL DEFAULT '',   -- plan | narrate | regenerate | alert
    backend     text             NOT NULL,
    model       text             NOT NULL DEFAULT '',
    tokens_in   integer          NOT NULL DEFAULT 0,
    tokens_out  integer          NOT NULL DEFAULT 0,
    latency_ms  double precision NOT NULL DEFAULT 0,
    cost_usd    double precision NOT NULL DEFAULT 0,
    ok          boolean          NOT NULL,
    error       text             NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS llm_calls_ts ON llm_calls (ts);
CREATE INDEX IF NOT EXISTS llm_calls_line_ts ON llm_calls (line, ts);

CREATE OR REPLACE VIEW llm_cost_daily AS
SELECT date_trunc('day', ts AT TIME ZONE 'UTC')::date AS day, line, backend, model,
       count(*) AS calls, count(*) FILTER (WHERE NOT ok) AS failed,
       sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out,
       sum(cost_usd) AS cost_usd, avg(latency_ms) AS mean_latency_ms
FROM llm_calls GROUP BY 1, 2, 3, 4;
