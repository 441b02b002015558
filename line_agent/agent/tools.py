"""Deterministic analysis tools over the store. Each returns a ``ToolResult``: typed facts + its window.

Data they read (see docs/AGENT.md):
* ``events`` with kind='fault': device, code, duration_s (downtime);
* ``telemetry`` metric ``power_kw`` per device (instantaneous kW; energy is integrated, each sample
  held until the next one, at most ``max_gap_s``), metric ``state`` per device (running when the
  value is in ``running_states``; without a state metric a device counts as stopped during its
  fault events);
* ``inspections`` (one or more per part; a part is good when none of its decisions, or operator
  overrides, is reject/rework) and ``defects`` (class per detection).

Nothing here calls a model: the same inputs always give the same facts.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from llm_ops.facts import Fact, ToolResult, Window


@dataclass(frozen=True)
class ToolConfig:
    power_metric: str = "power_kw"
    state_metric: str = "state"
    running_states: tuple[float, ...] = (2.0,)
    max_gap_s: float = 300.0  # a power sample stands for at most this long (a silent meter is not a load)
    bucket: timedelta = timedelta(hours=1)
    baseline_days: int = 7
    shift: timedelta = timedelta(hours=8)
    z_threshold: float = 3.5
    cause_horizon: timedelta = timedelta(minutes=30)  # how long after a fault its effects are looked for
    min_cause_support: int = 3  # defective parts needed after a fault to call it a candidate cause


def _iso(t: datetime) -> str:
    return t.isoformat()


def _params(w: Window, **extra: Any) -> dict[str, Any]:
    return {"line": w.line, "start": w.start, "end": w.end, **extra}


# ---------------------------------------------------------------------------------------------
# Faults and downtime
# ---------------------------------------------------------------------------------------------
def fault_summary(conn: psycopg.Connection, w: Window, cfg: ToolConfig = ToolConfig()) -> ToolResult:
    """Fault counts and downtime by machine and failure-mode code."""
    rows = conn.execute(
        "SELECT device, code, count(*), coalesce(sum(duration_s), 0) FROM events"
        " WHERE line = %(line)s AND kind = 'fault' AND ts >= %(start)s AND ts < %(end)s"
        " GROUP BY device, code ORDER BY 4 DESC, 3 DESC, device, code",
        _params(w),
    ).fetchall()
    res = ToolResult("fault_summary", w)
    if not rows:
        res.notes.append("no faults in window")
        res.facts.append(Fact("faults.total", res.tool, "fault_total", 0, "count", (), "faults in window", True))
        return res
    total = sum(int(r[2]) for r in rows)
    down = sum(float(r[3]) for r in rows)
    res.facts.append(Fact("faults.total", res.tool, "fault_total", total, "count", (), "faults in window", True))
    res.facts.append(Fact("faults.downtime", res.tool, "downtime_total", round(down, 1), "s", (),
                          "downtime in window", True))
    for i, (device, code, n, dur) in enumerate(rows):
        names = (str(device), str(code))
        res.facts.append(Fact(f"faults.count.{device}.{code}", res.tool, "fault_count", int(n), "count", names,
                              f"{code} faults on {device}", i < 3))
        res.facts.append(Fact(f"faults.downtime.{device}.{code}", res.tool, "downtime", round(float(dur), 1), "s",
                              names, f"downtime from {code} on {device}", i < 3))
    return res


# ---------------------------------------------------------------------------------------------
# Energy
# ---------------------------------------------------------------------------------------------
_ENERGY_SQL = """
SELECT device, date_bin(%(bucket)s, ts, %(origin)s) AS b,
       sum(value * LEAST(EXTRACT(EPOCH FROM (coalesce(nts, %(end)s) - ts)), %(gap)s)) / 3600.0 AS kwh
FROM (SELECT device, ts, value, lead(ts) OVER (PARTITION BY device ORDER BY ts) AS nts
      FROM telemetry
      WHERE line = %(line)s AND metric = %(metric)s AND ts >= %(start)s AND ts < %(end)s
        AND value IS NOT NULL) s
GROUP BY device, b
"""

_PARTS_SQL = """
SELECT date_bin(%(bucket)s, ts, %(origin)s) AS b, count(*) AS parts,
       count(*) FILTER (WHERE NOT bad) AS good
FROM (SELECT part_id, min(ts) AS ts,
             bool_or(coalesce(override, decision) IN ('reject', 'rework')) AS bad
      FROM inspections WHERE line = %(line)s AND ts >= %(start)s AND ts < %(end)s
      GROUP BY part_id) p
GROUP BY b
"""


def _energy_buckets(conn: psycopg.Connection, line: str, start: datetime, end: datetime, bucket: timedelta,
                    origin: datetime, cfg: ToolConfig) -> dict[tuple[str, datetime], float]:
    rows = conn.execute(_ENERGY_SQL, {"line": line, "start": start, "end": end, "bucket": bucket,
                                      "origin": origin, "gap": cfg.max_gap_s, "metric": cfg.power_metric})
    return {(str(r[0]), r[1]): float(r[2] or 0.0) for r in rows.fetchall()}


def _part_buckets(conn: psycopg.Connection, line: str, start: datetime, end: datetime, bucket: timedelta,
                  origin: datetime) -> dict[datetime, tuple[int, int]]:
    rows = conn.execute(_PARTS_SQL, {"line": line, "start": start, "end": end, "bucket": bucket,
                                     "origin": origin})
    return {r[0]: (int(r[1]), int(r[2])) for r in rows.fetchall()}


def _per_part_slices(conn: psycopg.Connection, w: Window, length: timedelta, cfg: ToolConfig) -> list[float]:
    """kWh per good part of each ``length`` slice in the baseline period before the window."""
    start = w.start - timedelta(days=cfg.baseline_days)
    energy = _energy_buckets(conn, w.line, start, w.start, length, w.start, cfg)
    parts = _part_buckets(conn, w.line, start, w.start, length, w.start)
    per_slice: dict[datetime, float] = defaultdict(float)
    for (_dev, b), kwh in energy.items():
        per_slice[b] += kwh
    return [per_slice[b] / good for b, (_n, good) in parts.items() if good > 0 and per_slice.get(b, 0) > 0]


def energy_summary(conn: psycopg.Connection, w: Window, cfg: ToolConfig = ToolConfig()) -> ToolResult:
    """kWh in the window, per interval, per machine, per good part, and against the recent baseline."""
    res = ToolResult("energy_summary", w)
    energy = _energy_buckets(conn, w.line, w.start, w.end, cfg.bucket, w.start, cfg)
    if not energy:
        res.notes.append(f"no {cfg.power_metric} telemetry in window")
        return res
    total = sum(energy.values())
    res.facts.append(Fact("energy.total", res.tool, "energy_total", round(total, 2), "kWh", (),
                          "energy used in window", True))
    by_dev: dict[str, float] = defaultdict(float)
    by_bucket: dict[datetime, float] = defaultdict(float)
    for (dev, b), kwh in energy.items():
        by_dev[dev] += kwh
        by_bucket[b] += kwh
    for dev, kwh in sorted(by_dev.items(), key=lambda kv: -kv[1]):
        if dev:
            res.facts.append(Fact(f"energy.device.{dev}", res.tool, "energy_device", round(kwh, 2), "kWh", (dev,),
                                  f"energy used by {dev}"))
    for b in sorted(by_bucket)[:48]:
        res.facts.append(Fact(f"energy.interval.{b:%Y%m%dT%H%M}", res.tool, "energy_interval",
                              round(by_bucket[b], 2), "kWh", (), "energy in interval", at=_iso(b),
                              extra={"start": _iso(b), "end": _iso(min(b + cfg.bucket, w.end))}))
    good = sum(g for _n, g in _part_buckets(conn, w.line, w.start, w.end, w.end - w.start, w.start).values())
    if good > 0:
        per_part = total / good
        res.facts.append(Fact("energy.per_part", res.tool, "energy_per_part", round(per_part, 3), "kWh/part", (),
                              "energy per good part", True))
        slices = _per_part_slices(conn, w, w.end - w.start, cfg)
        if slices:
            base = statistics.median(slices)
            res.facts.append(Fact("energy.per_part.baseline", res.tool, "energy_per_part_baseline", round(base, 3),
                                  "kWh/part", (), f"median kWh per good part over the previous {cfg.baseline_days} "
                                  "days", True, extra={"slices": len(slices)}))
            # The delta is computed from the rounded figures the summary states, so it re-derives exactly.
            delta = (round(per_part, 3) - round(base, 3)) / round(base, 3) * 100 if round(base, 3) else 0.0
            res.facts.append(Fact("energy.per_part.delta", res.tool, "energy_per_part_delta", round(delta, 1), "%",
                                  (), "kWh per good part against baseline", True))
    else:
        res.notes.append("no good parts in window: kWh per good part undefined")
    return res


# ---------------------------------------------------------------------------------------------
# Quality
# ---------------------------------------------------------------------------------------------
def defect_summary(conn: psycopg.Connection, w: Window, cfg: ToolConfig = ToolConfig()) -> ToolResult:
    """Parts inspected, good, reject rate, and defect rate by class (share of parts with that class)."""
    res = ToolResult("defect_summary", w)
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE worst = 'pass'), count(*) FILTER (WHERE worst = 'reject'),"
        " count(*) FILTER (WHERE worst = 'rework') FROM ("
        "  SELECT part_id, CASE WHEN bool_or(coalesce(override, decision) = 'reject') THEN 'reject'"
        "   WHEN bool_or(coalesce(override, decision) = 'rework') THEN 'rework' ELSE 'pass' END AS worst"
        "  FROM inspections WHERE line = %(line)s AND ts >= %(start)s AND ts < %(end)s GROUP BY part_id) p",
        _params(w),
    ).fetchone()
    parts, good, rej, rew = (int(x) for x in (row or (0, 0, 0, 0)))
    if parts == 0:
        res.notes.append("no inspections in window")
        return res
    res.facts += [
        Fact("quality.inspected", res.tool, "inspected", parts, "count", (), "parts inspected", True),
        Fact("quality.good", res.tool, "good_parts", good, "count", (), "good parts", True),
        Fact("quality.reject_rate", res.tool, "reject_rate", round(rej / parts * 100, 1), "%", (),
             "share of parts rejected", True),
        Fact("quality.rework", res.tool, "rework_parts", rew, "count", (), "parts sent to rework"),
    ]
    rows = conn.execute(
        "SELECT d.cls, count(*), count(DISTINCT i.part_id) FROM defects d"
        " JOIN inspections i USING (inspection_id)"
        " WHERE d.line = %(line)s AND d.ts >= %(start)s AND d.ts < %(end)s"
        " GROUP BY d.cls ORDER BY 3 DESC, 2 DESC, d.cls",
        _params(w),
    ).fetchall()
    for i, (cls, n, nparts) in enumerate(rows):
        res.facts.append(Fact(f"defects.count.{cls}", res.tool, "defect_count", int(n), "count", (str(cls),),
                              f"{cls} defects detected", i < 3))
        res.facts.append(Fact(f"defects.rate.{cls}", res.tool, "defect_rate", round(int(nparts) / parts * 100, 1),
                              "%", (str(cls),), f"share of parts with {cls}", i < 3))
    return res


# ---------------------------------------------------------------------------------------------
# Anomalies
# ---------------------------------------------------------------------------------------------
def robust_z(x: float, ref: list[float]) -> float | None:
    """(x - median) / (1.4826 * MAD); None when the reference has no spread to measure against."""
    if len(ref) < 3:
        return None
    med = statistics.median(ref)
    mad = statistics.median(abs(r - med) for r in ref)
    if mad <= 0:
        mean_dev = statistics.fmean(abs(r - med) for r in ref)
        if mean_dev <= 0:
            return None
        return (x - med) / (1.2533 * mean_dev)
    return (x - med) / (1.4826 * mad)


def anomalies(conn: psycopg.Connection, w: Window, cfg: ToolConfig = ToolConfig()) -> ToolResult:
    """Hourly energy and defect rate far from the baseline (robust z-score beyond ``z_threshold``).

    The baseline is the same-size buckets of the previous ``baseline_days`` days; with fewer than six
    of those, the window's own buckets are the reference.
    """
    res = ToolResult("anomalies", w)
    base_start = w.start - timedelta(days=cfg.baseline_days)
    energy = _energy_buckets(conn, w.line, base_start, w.end, cfg.bucket, w.start, cfg)
    parts = _part_buckets(conn, w.line, base_start, w.end, cfg.bucket, w.start)
    e_by: dict[datetime, float] = defaultdict(float)
    for (_d, b), kwh in energy.items():
        e_by[b] += kwh
    series: dict[str, dict[datetime, float]] = {
        "energy": dict(e_by),
        "defect_rate": {b: (n - g) / n * 100 for b, (n, g) in parts.items() if n >= 5},
    }
    for metric, values in series.items():
        inside = {b: v for b, v in values.items() if w.start <= b < w.end}
        before = [v for b, v in values.items() if b < w.start]
        ref = before if len(before) >= 6 else list(inside.values())
        for b, v in sorted(inside.items()):
            z = robust_z(v, ref)
            if z is None or abs(z) < cfg.z_threshold:
                continue
            res.facts.append(Fact(
                f"anomaly.{metric}.{b:%Y%m%dT%H%M}", res.tool, "anomaly", round(z, 1), "z", (),
                f"{metric} far from baseline", True, at=_iso(b),
                extra={"metric": metric, "observed": round(v, 2), "baseline_median": round(statistics.median(ref), 2),
                       "start": _iso(b), "end": _iso(b + cfg.bucket)},
            ))
    if not res.facts:
        res.notes.append("no anomalies")
    return res


# ---------------------------------------------------------------------------------------------
# Energy waste
# ---------------------------------------------------------------------------------------------
_IDLE_SQL = """
SELECT s.device,
       sum(s.value * LEAST(EXTRACT(EPOCH FROM (coalesce(s.nts, %(end)s) - s.ts)), %(gap)s)) / 3600.0
FROM (SELECT device, ts, value, lead(ts) OVER (PARTITION BY device ORDER BY ts) AS nts
      FROM telemetry WHERE line = %(line)s AND metric = %(metric)s AND ts >= %(start)s AND ts < %(end)s
        AND value IS NOT NULL) s
LEFT JOIN LATERAL (
    SELECT t.value FROM telemetry t
    WHERE t.line = %(line)s AND t.device = s.device AND t.metric = %(state)s AND t.ts <= s.ts
    ORDER BY t.ts DESC LIMIT 1) st ON true
WHERE (st.value IS NOT NULL AND NOT (st.value = ANY(%(running)s)))
   OR (st.value IS NULL AND EXISTS (
        SELECT 1 FROM events e WHERE e.line = %(line)s AND e.device = s.device AND e.kind = 'fault'
          AND e.ts <= s.ts AND s.ts < e.ts + make_interval(secs => coalesce(e.duration_s, 0))))
GROUP BY s.device ORDER BY 2 DESC
"""


def energy_waste(conn: psycopg.Connection, w: Window, cfg: ToolConfig = ToolConfig()) -> ToolResult:
    """kWh drawn while machines were stopped/idle, and kWh per good part against the best recent shift."""
    res = ToolResult("energy_waste", w)
    rows = conn.execute(_IDLE_SQL, _params(w, gap=cfg.max_gap_s, metric=cfg.power_metric,
                                           state=cfg.state_metric, running=list(cfg.running_states))).fetchall()
    idle = [(str(d), float(k or 0)) for d, k in rows if (k or 0) > 0.005]
    total_idle = sum(k for _d, k in idle)
    res.facts.append(Fact("waste.idle", res.tool, "waste_idle", round(total_idle, 2), "kWh",
                          tuple(d for d, _k in idle[:3] if d), "energy drawn while stopped or idle",
                          total_idle > 0))
    for dev, kwh in idle:
        res.facts.append(Fact(f"waste.idle.{dev}", res.tool, "waste_idle_device", round(kwh, 2), "kWh", (dev,),
                              f"energy drawn by {dev} while stopped or idle"))
    energy = _energy_buckets(conn, w.line, w.start, w.end, w.end - w.start, w.start, cfg)
    good = sum(g for _n, g in _part_buckets(conn, w.line, w.start, w.end, w.end - w.start, w.start).values())
    shifts = _per_part_slices(conn, w, cfg.shift, cfg)
    if good > 0 and energy and shifts:
        per_part = round(sum(energy.values()) / good, 3)
        best = round(min(shifts), 3)
        res.facts.append(Fact("waste.best_shift", res.tool, "energy_per_part_best", best, "kWh/part", (),
                              f"best kWh per good part of the shifts in the previous {cfg.baseline_days} days"))
        excess = max(0.0, (per_part - best) * good)
        res.facts.append(Fact("waste.vs_best", res.tool, "waste_vs_best", round(excess, 2), "kWh", (),
                              "energy above the best recent shift's rate for this window's good parts", excess > 0))
    return res


# ---------------------------------------------------------------------------------------------
# Candidate causes
# ---------------------------------------------------------------------------------------------
def candidate_causes(conn: psycopg.Connection, w: Window, cfg: ToolConfig = ToolConfig()) -> ToolResult:
    """Rank (machine fault -> defect class) pairs by how much the class rises after the fault, and check
    whether power runs higher while parts are being reworked. Co-occurrence in time, not proof."""
    res = ToolResult("candidate_causes", w)
    faults = conn.execute(
        "SELECT device, code, ts, ts + make_interval(secs => coalesce(duration_s, 0)) FROM events"
        " WHERE line = %(line)s AND kind = 'fault' AND ts >= %(start)s AND ts < %(end)s ORDER BY ts",
        _params(w),
    ).fetchall()
    parts = conn.execute(
        "SELECT i.part_id, min(i.ts), array_remove(array_agg(DISTINCT d.cls), NULL),"
        " bool_or(coalesce(i.override, i.decision) = 'rework')"
        " FROM inspections i LEFT JOIN defects d USING (inspection_id)"
        " WHERE i.line = %(line)s AND i.ts >= %(start)s AND i.ts < %(end)s GROUP BY i.part_id",
        _params(w),
    ).fetchall()
    if faults and parts:
        spans: dict[tuple[str, str], list[tuple[datetime, datetime]]] = defaultdict(list)
        for dev, code, t0, t1 in faults:
            spans[(str(dev), str(code))].append((t0, t1 + cfg.cause_horizon))
        classes = sorted({c for p in parts for c in (p[2] or [])})
        scored: list[tuple[float, int, str, str, str, dict[str, Any]]] = []
        for (dev, code), sp in spans.items():
            after = [p for p in parts if any(a <= p[1] < b for a, b in sp)]
            other = [p for p in parts if not any(a <= p[1] < b for a, b in sp)]
            for cls in classes:
                k_a = sum(1 for p in after if cls in (p[2] or []))
                k_o = sum(1 for p in other if cls in (p[2] or []))
                if k_a < cfg.min_cause_support:
                    continue
                # Laplace-smoothed rates: a class never seen outside the bursts still gets a finite lift.
                lift = ((k_a + 0.5) / (len(after) + 1)) / ((k_o + 0.5) / (len(other) + 1))
                if lift >= 2.0:
                    scored.append((lift, k_a, dev, code, cls,
                                   {"parts_after": len(after), "defective_after": k_a,
                                    "parts_other": len(other), "defective_other": k_o}))
        scored.sort(key=lambda s: (-s[0] * s[1], s[2], s[3], s[4]))
        for i, (lift, _k, dev, code, cls, extra) in enumerate(scored[:5]):
            res.facts.append(Fact(f"cause.{dev}.{code}.{cls}", res.tool, "cause", round(lift, 1), "x",
                                  (dev, code, cls), f"{cls} rate after {code} on {dev} vs otherwise", i == 0,
                                  extra={**extra, "type": "defect_after_fault"}))
    rework_times = [p[1] for p in parts if p[3]]
    if len(rework_times) >= cfg.min_cause_support:
        rows = conn.execute(
            "SELECT ts, sum(value) FROM telemetry WHERE line = %(line)s AND metric = %(metric)s"
            " AND ts >= %(start)s AND ts < %(end)s GROUP BY ts ORDER BY ts",
            _params(w, metric=cfg.power_metric),
        ).fetchall()
        near = [float(v) for t, v in rows if any(abs((t - r).total_seconds()) <= 60 for r in rework_times)]
        far = [float(v) for t, v in rows if not any(abs((t - r).total_seconds()) <= 60 for r in rework_times)]
        if near and far and statistics.fmean(far) > 0:
            ratio = statistics.fmean(near) / statistics.fmean(far)
            if ratio >= 1.2:
                res.facts.append(Fact("cause.rework_energy", res.tool, "cause", round(ratio, 1), "x", (),
                                      "mean line power near rework parts vs otherwise", False,
                                      extra={"type": "rework_energy", "samples_near": len(near)}))
    if not res.facts:
        res.notes.append("no candidate causes")
    return res


# ---------------------------------------------------------------------------------------------
# Registry, vocabulary
# ---------------------------------------------------------------------------------------------
ToolFn = Callable[[psycopg.Connection, Window, ToolConfig], ToolResult]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    fn: ToolFn
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def openai_schema(self) -> dict[str, Any]:
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


TOOLS: dict[str, ToolSpec] = {
    t.name: t
    for t in (
        ToolSpec("fault_summary", fault_summary, "Fault counts and downtime by machine and failure code."),
        ToolSpec("energy_summary", energy_summary, "Energy kWh total, per interval, per machine, per good part, "
                 "and against the recent baseline."),
        ToolSpec("defect_summary", defect_summary, "Parts inspected, good, reject rate, defect rate by class."),
        ToolSpec("anomalies", anomalies, "Hours whose energy or defect rate is far from the baseline."),
        ToolSpec("energy_waste", energy_waste, "Energy drawn while stopped or idle; kWh per good part vs the "
                 "best recent shift."),
        ToolSpec("candidate_causes", candidate_causes, "Defect bursts after machine faults; power during rework."),
    )
}

FIXED_PLAN: tuple[str, ...] = tuple(TOOLS)
ALERT_PLAN: tuple[str, ...] = ("anomalies", "fault_summary", "defect_summary")


def run_tools(conn: psycopg.Connection, w: Window, names: tuple[str, ...] | list[str] = FIXED_PLAN,
              cfg: ToolConfig = ToolConfig()) -> list[ToolResult]:
    """Run the named tools (unknown names are skipped) in the given order."""
    return [TOOLS[n].fn(conn, w, cfg) for n in names if n in TOOLS]


def vocabulary(conn: psycopg.Connection, line: str) -> set[str]:
    """Every machine, fault code and defect class the store knows for ``line``: names a summary could claim."""
    out: set[str] = set()
    for sql in (
        "SELECT DISTINCT device FROM events WHERE line = %s",
        "SELECT DISTINCT code FROM events WHERE line = %s",
        "SELECT DISTINCT device FROM telemetry WHERE line = %s",
        "SELECT DISTINCT cls FROM defects WHERE line = %s",
        "SELECT DISTINCT camera FROM inspections WHERE line = %s",
    ):
        out.update(str(r[0]) for r in conn.execute(sql, (line,)).fetchall() if r[0])
    return out
