"""The store's read API: the same questions, the same answers, on TimescaleDB and on plain PostgreSQL.

Every function takes an open psycopg connection and a [start, end) window (timezone-aware datetimes)
and returns frozen dataclasses. The SQL is engine-neutral (no time_bucket): raw tables and the
``telemetry_1m`` / ``telemetry_1h`` rollups have the same names and columns on both engines
(continuous aggregates on TimescaleDB, tables kept by ``refresh_rollups`` on plain PostgreSQL).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg

from line_agent import energy as energy_mod
from line_agent.meters import MetersConfig

Resolution = Literal["raw", "1m", "1h"]


@dataclass(frozen=True)
class EnergyInterval:
    start: datetime
    device: str
    kwh: float


@dataclass(frozen=True)
class EnergyPerPart:
    kwh: float
    parts: int
    kwh_per_part: float | None  # None when no part was produced


@dataclass(frozen=True)
class FaultCount:
    device: str
    code: str
    count: int
    downtime_s: float


@dataclass(frozen=True)
class DefectClassRate:
    cls: str
    defects: int
    parts_with: int
    rate: float  # parts_with / parts inspected


@dataclass(frozen=True)
class DefectRates:
    parts: int
    rejected: int
    reject_rate: float
    by_class: tuple[DefectClassRate, ...]


@dataclass(frozen=True)
class SeriesPoint:
    ts: datetime
    device: str
    avg: float | None
    min: float | None
    max: float | None
    n: int


def _utc(t: datetime) -> datetime:
    return t.astimezone(UTC)


def _line_filter(line: str | None, device: str | None = None) -> tuple[str, dict[str, Any]]:
    sql, params = "", {}
    if line is not None:
        sql += " AND line = %(line)s"
        params["line"] = line
    if device is not None:
        sql += " AND device = %(device)s"
        params["device"] = device
    return sql, params


def energy(
    conn: psycopg.Connection, line: str | None, start: datetime, end: datetime, interval_s: int = 3600, *,
    metric: str | None = None, source: Literal["power", "counter", "interval"] | None = None, unit_w: float = 1.0,
    device: str | None = None, max_gap_s: float | None = None, meters: MetersConfig | None = None,
) -> list[EnergyInterval]:
    """kWh per device per interval, computed by ``line_agent.energy`` (the one energy computation).

    Which reading counts is the line's meters (``meters``; default: the plant default, i.e. the documented
    contract: a device's ``energy_kwh``/``energy_wh`` counter, else its ``power_w``/``power_kw``). ``metric``
    (with ``source`` and ``unit_w``, W per unit of a power metric) reads that one metric instead, for every
    device that sends it; ``max_gap_s`` is then the power meter's nominal period.
    """
    if interval_s <= 0:
        raise ValueError("interval_s must be positive")
    if metric is not None:
        meters = _one_metric(metric, source, unit_w, max_gap_s)
    res = energy_mod.compute(conn, line, start, end, bucket_s=interval_s, meters=meters, device=device)
    out = [EnergyInterval(_utc(datetime.fromtimestamp(res.edges[k], UTC)), d.device, d.kwh[k])
           for d in res.devices for k in range(len(res.edges) - 1) if d.kwh[k] != 0.0]
    return sorted(out, key=lambda e: (e.start, e.device))


def _one_metric(metric: str, source: str | None, unit_w: float, period_s: float | None) -> MetersConfig:
    """A meters section that reads ``metric`` on every device (the ``metric=`` form of ``energy``)."""
    from line_agent.meters import MeterConfig, MeterKind

    kind = MeterKind(source) if source else (MeterKind.COUNTER if metric.startswith("energy") else MeterKind.POWER)
    if kind is MeterKind.POWER:
        unit = {1.0: "W", 1000.0: "kW", 1e6: "MW"}.get(unit_w)
        if unit is None:
            raise ValueError(f"unit_w must be 1 (W), 1000 (kW) or 1e6 (MW), not {unit_w}")
    else:
        unit = "Wh" if metric.endswith("_wh") else "MWh" if metric.endswith("_mwh") else "kWh"
    return MetersConfig(devices=(MeterConfig(device="*", metric=metric, kind=kind, unit=unit, period_s=period_s),),
                        auto=False)


def parts_produced(conn: psycopg.Connection, line: str | None, start: datetime, end: datetime, *,
                   parts_metric: str | None = None) -> int:
    """Parts in the window: distinct inspected parts, or the sum of a part-counter metric (e.g. ``parts``)."""
    filt, params = _line_filter(line)
    params.update(start=start, end=end, metric=parts_metric)
    if parts_metric is None:
        sql = f"SELECT count(DISTINCT part_id) FROM inspections WHERE ts >= %(start)s AND ts < %(end)s {filt}"
    else:
        sql = (f"SELECT coalesce(sum(value), 0) FROM telemetry WHERE metric = %(metric)s"
               f" AND ts >= %(start)s AND ts < %(end)s {filt}")
    row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def energy_per_part(
    conn: psycopg.Connection, line: str | None, start: datetime, end: datetime, *,
    metric: str | None = None, source: Literal["power", "counter", "interval"] | None = None, unit_w: float = 1.0,
    parts_metric: str | None = None, max_gap_s: float | None = None, meters: MetersConfig | None = None,
) -> EnergyPerPart:
    """Energy of the window (all devices of the line, by its meters) divided by the parts produced in it."""
    if metric is not None:
        meters = _one_metric(metric, source, unit_w, max_gap_s)
    kwh = energy_mod.compute(conn, line, start, end, meters=meters).total
    parts = parts_produced(conn, line, start, end, parts_metric=parts_metric)
    return EnergyPerPart(kwh, parts, kwh / parts if parts else None)


def fault_counts(conn: psycopg.Connection, line: str | None, start: datetime, end: datetime, *,
                 kind: str = "fault") -> list[FaultCount]:
    """Fault events and summed downtime (``duration_s``) by device and code."""
    filt, params = _line_filter(line)
    params.update(start=start, end=end, kind=kind)
    rows = conn.execute(
        f"SELECT device, code, count(*), coalesce(sum(duration_s), 0) FROM events"
        f" WHERE kind = %(kind)s AND ts >= %(start)s AND ts < %(end)s {filt} GROUP BY 1, 2 ORDER BY 1, 2",
        params,
    ).fetchall()
    return [FaultCount(d, c, int(n), float(s)) for d, c, n, s in rows]


def fault_counts_by_code(conn: psycopg.Connection, line: str | None, start: datetime, end: datetime) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in fault_counts(conn, line, start, end):
        out[f.code] = out.get(f.code, 0) + f.count
    return out


def defect_rates(conn: psycopg.Connection, line: str | None, start: datetime, end: datetime) -> DefectRates:
    """Parts inspected, reject rate, and for each defect class the share of parts that showed it."""
    filt, params = _line_filter(line)
    params.update(start=start, end=end)
    row = conn.execute(
        f"SELECT count(*), count(*) FILTER (WHERE coalesce(override, decision) = 'reject') FROM inspections"
        f" WHERE ts >= %(start)s AND ts < %(end)s {filt}",
        params,
    ).fetchone()
    parts, rejected = (int(row[0]), int(row[1])) if row else (0, 0)
    rows = conn.execute(
        f"SELECT cls, count(*), count(DISTINCT inspection_id) FROM defects"
        f" WHERE ts >= %(start)s AND ts < %(end)s {filt} GROUP BY 1 ORDER BY 1",
        params,
    ).fetchall()
    by_class = tuple(DefectClassRate(c, int(n), int(p), int(p) / parts if parts else 0.0) for c, n, p in rows)
    return DefectRates(parts, rejected, rejected / parts if parts else 0.0, by_class)


def telemetry_series(
    conn: psycopg.Connection, line: str | None, metric: str, start: datetime, end: datetime, *,
    device: str | None = None, resolution: Resolution = "raw",
) -> list[SeriesPoint]:
    """A metric over time for charts: raw points, or 1-minute / 1-hour rollups (avg, min, max, n)."""
    filt, params = _line_filter(line, device)
    params.update(metric=metric, start=start, end=end)
    if resolution == "raw":
        sql = (f"SELECT ts, device, value, value, value, 1 FROM telemetry WHERE metric = %(metric)s"
               f" AND ts >= %(start)s AND ts < %(end)s {filt} ORDER BY ts, device")
    elif resolution in ("1m", "1h"):
        view = "telemetry_1m" if resolution == "1m" else "telemetry_1h"
        # Several lines may share a device name: fold them so one point per (bucket, device).
        sql = (f"SELECT bucket, device, sum(sum) / nullif(sum(n), 0), min(min), max(max), sum(n) FROM {view}"
               f" WHERE metric = %(metric)s AND bucket >= %(start)s AND bucket < %(end)s {filt}"
               f" GROUP BY 1, 2 ORDER BY 1, 2")
    else:
        raise ValueError(f"resolution must be raw, 1m or 1h, not {resolution!r}")
    rows = conn.execute(sql, params).fetchall()
    return [SeriesPoint(_utc(t), d, _f(a), _f(lo), _f(hi), int(n)) for t, d, a, lo, hi, n in rows]


def _f(v: Any) -> float | None:
    return None if v is None else float(v)
