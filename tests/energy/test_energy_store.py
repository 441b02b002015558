"""The energy computation over the store: the contract's meters without configuration (counter preferred,
never both added), configured meters, and ``queries.energy`` answering through it."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from line_agent import energy
from line_agent.ingest.rows import Batch, TelemetryRow
from line_agent.ingest.writer import BatchWriter
from line_agent.meters import MeterConfig, MeterKind, MetersConfig
from line_agent.store import queries as q
from line_agent.store.migrate import migrate

pytestmark = pytest.mark.timeout(120)
T0 = energy.WEEK_START


def _write(url: str, rows: list[TelemetryRow]) -> None:
    migrate(url)
    b = Batch()
    b.telemetry.extend(rows)
    w = BatchWriter(url)
    try:
        w.write(b)
    finally:
        w.close()


def test_contract_without_configuration(fresh_db: str) -> None:
    s = T0.timestamp()
    rows = []
    # a day of 15-minute readings: counter and average power from one meter, power only from another
    for k in range(97):
        ts = s + 900 * k
        rows.append(TelemetryRow(ts, "mill", "steel", "meter", "meter", "energy_kwh", 1000.0 + 25.0 * k))
        rows.append(TelemetryRow(ts, "mill", "steel", "meter", "meter", "power_w", 100_000.0))
        rows.append(TelemetryRow(ts, "mill", "steel", "press", "press1", "power_kw", 40.0))
    _write(fresh_db, rows)
    with psycopg.connect(fresh_db) as conn:
        res = energy.compute(conn, "steel", T0, T0 + timedelta(days=1))
        by = {d.device: d for d in res.devices}
        assert by["meter"].meter.metric == "energy_kwh"  # the counter, not the power as well
        assert by["meter"].total == pytest.approx(2400.0)
        assert by["press1"].total == pytest.approx(960.0)  # 40 kW for 24 h, never cut at 300 s
        hourly = q.energy(conn, "steel", T0, T0 + timedelta(days=1), 3600)
        assert sum(e.kwh for e in hourly) == pytest.approx(3360.0)
        assert {e.device for e in hourly} == {"meter", "press1"}
        only_power = q.energy(conn, "steel", T0, T0 + timedelta(days=1), 86400, metric="power_w")
        assert [e.kwh for e in only_power] == pytest.approx([2400.0])
        peak = energy.peak_demand(energy.compute(conn, "steel", T0, T0 + timedelta(days=1), bucket_s=900))
        assert peak is not None and peak.kw == pytest.approx(140.0)


def test_configured_meter_with_alias_and_unit(fresh_db: str) -> None:
    s = T0.timestamp()
    rows = [TelemetryRow(s + 900 * k, "mill", "L9", "edge1", "", "Energy/Total", 5.0 + 0.025 * k) for k in range(97)]
    _write(fresh_db, rows)
    meters = MetersConfig(devices=(MeterConfig(device="*", cell="edge1", metric="energy_mwh", aliases=("Energy/Total",),
                                               kind=MeterKind.COUNTER, unit="MWh", period_s=900),), auto=False)
    with psycopg.connect(fresh_db) as conn:
        res = energy.compute(conn, "L9", T0, T0 + timedelta(days=1), meters=meters)
        assert res.total == pytest.approx(2400.0)
        assert energy.compute(conn, "L9", T0, T0 + timedelta(days=1)).total == 0.0  # not a contract name
