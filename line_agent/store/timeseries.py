"""Engine-specific upkeep behind one interface: rollup refresh and retention on TimescaleDB or plain PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg


def is_timescale(conn: psycopg.Connection) -> bool:
    """True when the TimescaleDB extension is installed in this database (migrations chose hypertables)."""
    row = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return row is not None


def _as_dt(t: float | datetime) -> datetime:
    return t if isinstance(t, datetime) else datetime.fromtimestamp(t, UTC)


def refresh_rollups(target: str | psycopg.Connection, lo: float | datetime, hi: float | datetime) -> None:
    """Bring telemetry_1m / telemetry_1h up to date for [lo, hi) (whole buckets).

    TimescaleDB: refresh_continuous_aggregate (must run outside a transaction, hence autocommit).
    Plain PostgreSQL: lg_refresh_telemetry_rollups, which recomputes those buckets from raw rows.
    ``target``: a URL, or an open idle connection (used in autocommit for the call, then restored), so a
    single-connection server (PGlite) is not asked for a second one.
    """
    if isinstance(target, str):
        with psycopg.connect(target, autocommit=True) as conn:
            _refresh(conn, lo, hi)
        return
    saved = target.autocommit
    target.autocommit = True
    try:
        _refresh(target, lo, hi)
    finally:
        target.autocommit = saved


def _refresh(conn: psycopg.Connection, lo: float | datetime, hi: float | datetime) -> None:
    if is_timescale(conn):
        # A continuous aggregate refreshes whole buckets inside the window only: widen to hours.
        start = _as_dt(lo).replace(minute=0, second=0, microsecond=0)
        end = _as_dt(hi).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        for view in ("telemetry_1m", "telemetry_1h"):
            conn.execute("CALL refresh_continuous_aggregate(%s, %s, %s)", (view, start, end))
    else:
        conn.execute("SELECT lg_refresh_telemetry_rollups(%s, %s)", (_as_dt(lo), _as_dt(hi)))


def apply_retention(url: str, keep: timedelta) -> int:
    """Drop raw telemetry older than ``keep`` (whole chunks or day partitions); returns how many went."""
    with psycopg.connect(url, autocommit=True) as conn:
        if is_timescale(conn):
            rows = conn.execute("SELECT drop_chunks('telemetry', older_than => %s)", (keep,)).fetchall()
            return len(rows)
        row = conn.execute("SELECT lg_drop_old_partitions(%s)", (keep,)).fetchone()
        return int(row[0]) if row else 0


def compress_old(url: str, older_than: timedelta) -> int:
    """TimescaleDB: compress chunks older than ``older_than`` now (the policy does it on schedule).
    Plain PostgreSQL has no native compression: returns 0."""
    with psycopg.connect(url, autocommit=True) as conn:
        if not is_timescale(conn):
            return 0
        rows = conn.execute(
            "SELECT compress_chunk(c, if_not_compressed => true) FROM show_chunks('telemetry', older_than => %s) c",
            (older_than,),
        ).fetchall()
        return len(rows)
