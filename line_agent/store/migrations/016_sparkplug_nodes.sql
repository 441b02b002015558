-- Sparkplug B host-application state, per edge node (device = '') and per device, persisted by the ingest
-- worker that owns the node (line_agent/ingest/sparkplug.py), so a restarted worker still knows every
-- node's birth certificate (metric names, aliases, data types), bdSeq and next seq, and whether it is
-- alive. Read by line_agent/store/nodes.py (GET /api/nodes: alive / stale / dead, last seen).
CREATE TABLE IF NOT EXISTS sparkplug_nodes (
    group_id   text NOT NULL,                 -- Sparkplug group = line
    edge_node  text NOT NULL,                 -- edge node = cell
    device     text NOT NULL DEFAULT '',      -- '' = the node itself
    site       text NOT NULL DEFAULT '',
    state      text NOT NULL CHECK (state IN ('alive', 'dead', 'unknown')),
    bd_seq     bigint,                        -- node rows: bdSeq of the current session
    next_seq   smallint,                      -- node rows: the seq expected next (0-255)
    birth      bytea,                         -- the NBIRTH / DBIRTH payload as received (aliases, types)
    metrics    jsonb NOT NULL DEFAULT '[]',   -- from the birth: [{"name", "alias", "datatype"}]
    birth_at   timestamptz,
    death_at   timestamptz,
    last_seen  timestamptz,                   -- when the last message of the node / device arrived
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, edge_node, device)
);
CREATE INDEX IF NOT EXISTS sparkplug_nodes_last_seen ON sparkplug_nodes (last_seen);
