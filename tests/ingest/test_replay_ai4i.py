"""The whole AI4I 2020 table replayed over MQTT (JSON and Sparkplug B): the store's failure counts per mode equal
the table's, and every part's points are stored once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from ingest_support import IngestHarness, assert_replay_stored, count, wait_for

from line_agent.replay import METRICS, load_ai4i, replay_ai4i
from line_agent.store import queries as q

TABLE_COUNTS = {"TWF": 46, "HDF": 115, "PWF": 95, "OSF": 98, "RNF": 19}  # from the data set's documentation
START = 1_780_000_000.0
CYCLE = 10.0


@pytest.fixture(scope="module")
def ai4i(shared: Path) -> Path:
    path = shared / "datasets" / "ai4i2020" / "ai4i2020.tsv"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


def test_table_ground_truth(ai4i: Path) -> None:
    rows = load_ai4i(ai4i)
    assert len(rows) == 10_000
    assert {m: sum(m in r.failures for r in rows) for m in TABLE_COUNTS} == TABLE_COUNTS


@pytest.mark.parametrize("fmt", ["json", "sparkplug"])
def test_replay_all_rows_failure_counts_match(ai4i: Path, harness: IngestHarness, fmt: str) -> None:
    line = f"AI4I{fmt[0].upper()}{harness.prefix}"[:30]
    # Sparkplug: worker 0 subscribes to this line's group only, so parallel tests cannot interfere.
    w = harness.start(sparkplug_filter=f"spBv1.0/{line}/#")
    res = replay_ai4i(ai4i, harness.mqtt_url, rate=20_000, fmt=fmt, line=line, site="s1", cycle_s=CYCLE,  # type: ignore[arg-type]
                      start_ts=START, progress=False, topic_prefix=harness.prefix)
    assert res.rows == 10_000 and res.faults == sum(TABLE_COUNTS.values())
    n = 10_000 * len(METRICS)
    wait_for(lambda: count(harness.db_url, "SELECT count(*) FROM telemetry WHERE line = %s", (line,)) >= n
             and count(harness.db_url, "SELECT count(*) FROM events WHERE line = %s AND kind = 'fault'", (line,))
             >= res.faults, 90)
    start = datetime.fromtimestamp(START, UTC)
    end = start + timedelta(seconds=10_000 * CYCLE)
    with psycopg.connect(harness.db_url) as conn:
        assert q.fault_counts_by_code(conn, line, start, end) == TABLE_COUNTS
        per_part = q.energy_per_part(conn, line, start, end, parts_metric="parts", max_gap_s=CYCLE)
        energy_wh = conn.execute("SELECT sum(value) FROM telemetry WHERE line = %s AND metric = 'energy_wh'",
                                 (line,)).fetchone()
    assert per_part.parts == 10_000
    # energy_wh (per-part energy) goes down too often to be the contract's counter, so line_agent.energy reads the
    # power: each part's power for its cycle (the last one for the observed period) = the sum of per-part energy
    assert per_part.kwh * 1000 == pytest.approx(float(energy_wh[0]), rel=1e-6)
    assert_replay_stored(harness.db_url, line, 10_000, TABLE_COUNTS, START, CYCLE)
    assert w.stats.dead == 0
