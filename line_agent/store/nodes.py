"""Sparkplug B edge nodes and devices: the host state ingest keeps (``sparkplug_nodes``, migration 016).

``save_host_state`` / ``load_host_state`` are the ingest worker's (line_agent/ingest/sparkplug.py: births with
aliases and types, bdSeq, seq, alive/dead, last message time, so a restarted worker decodes alias-only data
at once). ``list_nodes`` is what the API (``GET /api/nodes``) and anyone else reads:

* ``alive``: born (NBIRTH, and DBIRTH for a device), no death since, a message within ``stale_after_s``;
* ``stale``: born and not dead, but silent for longer than ``stale_after_s``;
* ``dead``: its NDEATH (matching bdSeq) or DDEATH arrived, or its node is dead;
* ``unknown``: data arrived but no birth has (ingest asked it for one).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

Status = Literal["alive", "stale", "dead", "unknown"]
DEFAULT_STALE_AFTER_S = 300.0


@dataclass
class HostStateRow:
    """One row of ``sparkplug_nodes`` as ingest writes it. ``full`` = the birth changed too (else only
    state, seq and times are updated, so a busy node does not rewrite its birth certificate each time)."""

    group_id: str
    edge_node: str
    device: str
    site: str
    state: str
    bd_seq: int | None
    next_seq: int | None
    birth: bytes | None
    metrics: list[dict[str, Any]]
    birth_at: float | None
    death_at: float | None
    last_seen: float | None
    full: bool = True


def _ts(v: float | None) -> datetime | None:
    return None if v is None else datetime.fromtimestamp(v, UTC)


_FULL = (
    "INSERT INTO sparkplug_nodes (group_id, edge_node, device, site, state, bd_seq, next_seq, birth, metrics,"
    " birth_at, death_at, last_seen, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())"
    " ON CONFLICT (group_id, edge_node, device) DO UPDATE SET site = EXCLUDED.site, state = EXCLUDED.state,"
    " bd_seq = EXCLUDED.bd_seq, next_seq = EXCLUDED.next_seq, birth = EXCLUDED.birth, metrics = EXCLUDED.metrics,"
    " birth_at = EXCLUDED.birth_at, death_at = EXCLUDED.death_at, last_seen = EXCLUDED.last_seen, updated_at = now()"
)
_LIGHT = (
    "INSERT INTO sparkplug_nodes (group_id, edge_node, device, site, state, bd_seq, next_seq, death_at, last_seen,"
    " updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now())"
    " ON CONFLICT (group_id, edge_node, device) DO UPDATE SET state = EXCLUDED.state, bd_seq = EXCLUDED.bd_seq,"
    " next_seq = EXCLUDED.next_seq, death_at = EXCLUDED.death_at, last_seen = EXCLUDED.last_seen, updated_at = now()"
)


def save_host_state(conn: psycopg.Connection, rows: Iterable[HostStateRow]) -> int:
    """Upsert ``rows`` (inside the caller's transaction); returns how many."""
    full, light = [], []
    for r in rows:
        if r.full:
            full.append((r.group_id, r.edge_node, r.device, r.site, r.state, r.bd_seq, r.next_seq, r.birth,
                         Jsonb(r.metrics), _ts(r.birth_at), _ts(r.death_at), _ts(r.last_seen)))
        else:
            light.append((r.group_id, r.edge_node, r.device, r.site, r.state, r.bd_seq, r.next_seq,
                          _ts(r.death_at), _ts(r.last_seen)))
    with conn.cursor() as cur:
        if full:
            cur.executemany(_FULL, full)
        if light:
            cur.executemany(_LIGHT, light)
    return len(full) + len(light)


def load_host_state(conn: psycopg.Connection) -> list[HostStateRow]:
    """Every stored node and device (the worker keeps those of its own slice)."""
    cur = conn.cursor(row_factory=dict_row)
    cur.execute("SELECT group_id, edge_node, device, site, state, bd_seq, next_seq, birth, metrics,"
                " extract(epoch FROM birth_at)::float8 AS birth_at, extract(epoch FROM death_at)::float8 AS death_at,"
                " extract(epoch FROM last_seen)::float8 AS last_seen FROM sparkplug_nodes"
                " ORDER BY group_id, edge_node, device")
    return [HostStateRow(r["group_id"], r["edge_node"], r["device"], r["site"], r["state"], r["bd_seq"],
                         r["next_seq"], bytes(r["birth"]) if r["birth"] is not None else None, r["metrics"] or [],
                         r["birth_at"], r["death_at"], r["last_seen"]) for r in cur.fetchall()]


@dataclass
class NodeStatus:
    group_id: str
    edge_node: str
    device: str
    line: str  # = group
    cell: str  # = edge node
    status: Status
    last_seen: datetime | None
    silent_s: float | None  # seconds since last_seen
    birth_at: datetime | None
    death_at: datetime | None
    bd_seq: int | None
    metrics: int  # how many metrics its birth defined


def status_of(state: str, node_state: str, silent_s: float | None, stale_after_s: float) -> Status:
    if state == "dead" or node_state == "dead":
        return "dead"
    if state != "alive" or node_state != "alive":
        return "unknown"
    if silent_s is None or silent_s > stale_after_s:
        return "stale"
    return "alive"


def list_nodes(target: str | psycopg.Connection, *, stale_after_s: float = DEFAULT_STALE_AFTER_S,
               group: str | None = None, status: Status | None = None,
               now: datetime | None = None) -> list[NodeStatus]:
    """Every Sparkplug edge node and device with its status (module docstring), ordered by group, node, device.
    A device's status also follows its node's (a dead node's devices are dead)."""
    if isinstance(target, str):
        with psycopg.connect(target) as conn:
            return list_nodes(conn, stale_after_s=stale_after_s, group=group, status=status, now=now)
    cur = target.cursor(row_factory=dict_row)
    cur.execute(
        "SELECT d.group_id, d.edge_node, d.device, d.state, coalesce(n.state, 'unknown') AS node_state,"
        " d.last_seen, d.birth_at, d.death_at, coalesce(d.bd_seq, n.bd_seq) AS bd_seq,"
        " jsonb_array_length(d.metrics) AS metrics"
        " FROM sparkplug_nodes d LEFT JOIN sparkplug_nodes n"
        " ON n.group_id = d.group_id AND n.edge_node = d.edge_node AND n.device = ''"
        " WHERE (%(g)s::text IS NULL OR d.group_id = %(g)s) ORDER BY d.group_id, d.edge_node, d.device",
        {"g": group})
    at = now or datetime.now(UTC)
    out: list[NodeStatus] = []
    for r in cur.fetchall():
        seen: datetime | None = r["last_seen"]
        silent = max(0.0, (at - seen).total_seconds()) if seen is not None else None
        st = status_of(r["state"], r["state"] if r["device"] == "" else r["node_state"], silent, stale_after_s)
        if status is not None and st != status:
            continue
        out.append(NodeStatus(r["group_id"], r["edge_node"], r["device"], r["group_id"], r["edge_node"], st, seen,
                              None if silent is None else round(silent, 3), r["birth_at"], r["death_at"],
                              r["bd_seq"], int(r["metrics"] or 0)))
    return out
