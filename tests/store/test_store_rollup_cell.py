"""The 1-minute / 1-hour rollups keep the cell (migration 017, both engines)."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest

from line_agent.ingest.rows import Batch, TelemetryRow
from line_agent.ingest.writer import BatchWriter
from line_agent.store.timeseries import refresh_rollups

pytestmark = pytest.mark.timeout(120)

T0S = datetime(2026, 9, 21, 8, 0, tzinfo=UTC).timestamp()


def _two_cells(url: str, line: str) -> None:
    # Two Sparkplug edge nodes (cells) of one group (line), node-level metric (device ''), same minutes.
    rows = [TelemetryRow(T0S + 10 * k, "", line, cell, "", "temp", v + k)
            for cell, v in (("press", 40.0), ("oven", 180.0)) for k in range(12)]
    w = BatchWriter(url)
    try:
        w.write(Batch(telemetry=rows))
    finally:
        w.close()
    refresh_rollups(url, T0S - 3600, T0S + 3600)


@pytest.mark.parametrize("view", ["telemetry_1m", "telemetry_1h"])
def test_rollups_group_by_cell(engine_url: str, view: str) -> None:
    line = f"R{abs(hash((engine_url, view))) % 100000}"
    _two_cells(engine_url, line)
    with psycopg.connect(engine_url) as conn:
        got = conn.execute(f"SELECT cell, device, sum(n)::int, min(min), max(max) FROM {view} WHERE line = %s"
                           " GROUP BY 1, 2 ORDER BY 1", (line,), prepare=False).fetchall()
    assert got == [("oven", "", 12, 180.0, 191.0), ("press", "", 12, 40.0, 51.0)]


def test_upgrade_recomputes_the_rollups_per_cell_plain(fresh_db: str) -> None:
    import line_agent.store.migrate as m

    everything = m.migration_files
    try:
        m.migration_files = lambda: [f for f in everything() if f[0] < "017"]  # type: ignore[assignment]
        m.migrate(fresh_db)
    finally:
        m.migration_files = everything  # type: ignore[assignment]
    _two_cells(fresh_db, "U")  # folded into one row per minute by the old rollups
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT sum(n) FROM telemetry_1m WHERE line = 'U'").fetchone() == (24,)
    assert "017_rollup_cell.plain.sql" in m.migrate(fresh_db)
    with psycopg.connect(fresh_db) as conn:
        got = conn.execute("SELECT cell, sum(n)::int FROM telemetry_1h WHERE line = 'U' GROUP BY 1 ORDER BY 1"
                           ).fetchall()
    assert got == [("oven", 12), ("press", 12)]
