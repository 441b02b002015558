"""Deterministic analysis tools over the store. Each returns a ``ToolResult``: typed facts + its window.

Data they read (see docs/AGENT.md):
* ``events`` with kind='fault': device, code, duration_s (downtime);
* ``telemetry``: energy through ``line_agent.energy`` by the line's meters (``ToolConfig.meters``; default the
  documented contract: a device's ``energy_kwh``/``energy_wh`` counter, else its ``power_w``/``power_kw``), metric
  ``state`` per device (running when the value is in ``running_states``; without a state metric a device
  counts as stopped during its fault events);
* ``audit_log``: the line's own stops, slowdowns, safe states and restarts (``line_agent.downtime``);
* ``sparkplug_nodes``: the Sparkplug host state ingest keeps (one row per edge node and device of the line's
  group: current state, birth, death, last message), for the windows whose data is incomplete (``source_gaps``);
* ``inspections`` (one or more per part; a part is good when none of its decisions, or operator
  overrides, is reject/rework) and ``defects`` (class per detection).

Nothing here calls a model: the same inputs always give the same facts.
"""

from __future__ import annotations

import bisect
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from line_agent import downtime as downtime_mod
from line_agent import energy as energy_mod
from line_agent.meters import DEFAULT_SHIFTS, MetersConfig, ShiftConfig, shifts_between
from llm_ops.facts import Fact, ToolResult, Window


@dataclass(frozen=True)
class ToolConfig:
    meters: MetersConfig | None = None  # the line's meters (line YAML); None = plant default / the contract
    timezone: str = "UTC"  # the plant's zone: days and shifts of the breakdowns
    shifts: tuple[ShiftConfig, ...] = DEFAULT_SHIFTS
    state_metric: str = "state"
    running_states: tuple[float, ...] = (2.0,)
    bucket: timedelta = timedelta(hours=1)
    baseline_days: int = 7
    shift: timedelta = timedelta(hours=8)
    z_threshold: float = 3.5
    cause_horizon: timedelta = timedelta(minutes=30)  # how long after a fault its effects are looked for
    min_cause_support: int = 3  # defective parts needed after a fault to call it a candidate cause
    sparkplug_stale_s: float = 300.0  # a Sparkplug source silent this long is stale (LINEGUARD_SPARKPLUG_STALE_S)


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


def downtime_summary(conn: psycopg.Connection, w: Window, cfg: ToolConfig = ToolConfig()) -> ToolResult:
    """The line's own stops, slowdowns and restarts (audit_log): durations by cause, planned apart."""
    res = ToolResult("downtime_summary", w)
    dt = downtime_mod.read(conn, w.line, w.start, w.end)
    stops = dt.stops()
    slows = [e for e in dt.episodes if e.kind == "slow"]
    if not dt.episodes and not dt.restarts:
        res.notes.append("no stops or slowdowns of the line in window")
        return res
    res.facts.append(Fact("downtime.stops", res.tool, "stop_total", len(stops), "count", (), "line stops", True))
    res.facts.append(Fact("downtime.stopped", res.tool, "stopped_total", round(dt.seconds(), 1), "s", (),
                          "time the line stood stopped", True))
    unplanned = dt.seconds(planned=False)
    planned = dt.seconds(planned=True)
    res.facts.append(Fact("downtime.unplanned", res.tool, "stopped_unplanned", round(unplanned, 1), "s", (),
                          "unplanned stopped time", True))
    if planned:
        res.facts.append(Fact("downtime.planned", res.tool, "stopped_planned", round(planned, 1), "s", (),
                              "planned stopped time (a person's stop whose reason starts with 'planned')", True))
    if slows:
        res.facts.append(Fact("downtime.slow", res.tool, "slow_total", round(dt.seconds(kind="slow"), 1), "s", (),
                              "time the line ran slowed", True, extra={"slowdowns": len(slows)}))
    res.facts.append(Fact("downtime.restarts", res.tool, "restarts", dt.restarts, "count", (), "restarts"))
    for cause, (n, sec) in sorted(dt.by_cause().items(), key=lambda kv: (-kv[1][1], kv[0])):
        res.facts.append(Fact(f"downtime.cause.{cause}", res.tool, "stop_cause", n, "count", (),
                              f"stops by {cause}", True, extra={"cause": cause}))
        res.facts.append(Fact(f"downtime.cause.{cause}.time", res.tool, "stop_cause_time", round(sec, 1), "s", (),
                              f"stopped time after stops by {cause}", extra={"cause": cause}))
    for e in stops[:10]:
        res.facts.append(Fact(f"downtime.stop.{e.start:%Y%m%dT%H%M%S}", res.tool, "stop", round(e.duration_s, 1), "s",
                              (), f"stop by {e.cause}", False, at=_iso(e.start),
                              extra={"cause": e.cause, "actor": e.actor, "reason": e.reason, "planned": e.planned,
                                     "start": _iso(e.start), "end": _iso(e.end), "ongoing": e.ongoing}))
    return res


# ---------------------------------------------------------------------------------------------
# Energy
# ---------------------------------------------------------------------------------------------
_PARTS_SQL = """
SELECT date_bin(%(bucket)s, ts, %(origin)s) AS b, count(*) AS parts,
       count(*) FILTER (WHERE NOT bad) AS good
FROM (SELECT part_id, min(ts) AS ts,
             bool_or(coalesce(override, decision) IN ('reject', 'rework')) AS bad
      FROM inspections WHERE line = %(line)s AND ts >= %(start)s AND ts < %(end)s
      GROUP BY part_id) p
GROUP BY b
"""


def _energy_result(conn: psycopg.Connection, line: str, start: datetime, end: datetime, bucket: timedelta,
                   origin: datetime, cfg: ToolConfig) -> energy_mod.EnergyResult:
    width = bucket.total_seconds()
    return energy_mod.compute(conn, line, start, end, meters=cfg.meters,
                              edges=energy_mod.bucket_edges(start, end, width, origin.timestamp()))


def _energy_buckets(conn: psycopg.Connection, line: str, start: datetime, end: datetime, bucket: timedelta,
                    origin: datetime, cfg: ToolConfig) -> dict[tuple[str, datetime], float]:
    """kWh per (device, bucket start aligned to ``origin``), by ``line_agent.energy``."""
    res = _energy_result(conn, line, start, end, bucket, origin, cfg)
    width, o = bucket.total_seconds(), origin.timestamp()
    keys = [datetime.fromtimestamp(o + (x - o) // width * width, UTC).astimezone(start.tzinfo or UTC)
            for x in res.edges[:-1]]
    out: dict[tuple[str, datetime], float] = defaultdict(float)
    for d in res.devices:
        for k, kwh in enumerate(d.kwh):
            if kwh:
                out[(d.device, keys[k])] += kwh
    return dict(out)


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


def _interval(w: Window) -> timedelta:
    """Interval facts: hours for up to two days, else days."""
    return timedelta(hours=1) if w.end - w.start <= timedelta(hours=48) else timedelta(days=1)


def energy_summary(conn: psycopg.Connection, w: Window, cfg: ToolConfig = ToolConfig()) -> ToolResult:
    """kWh in the window, per interval, per day and shift, per machine, per good part, peak 15-minute demand,
    and against the recent baseline."""
    res = ToolResult("energy_summary", w)
    quarter = energy_mod.compute(conn, w.line, w.start, w.end, meters=cfg.meters,
                                 edges=energy_mod.bucket_edges(w.start, w.end, 900.0))
    if not quarter.devices:
        res.notes.append("no energy readings in window (energy_kwh/energy_wh counter or power_w/power_kw, "
                         "or the line's meters)")
        return res
    res.notes += list(quarter.notes)
    total = quarter.total
    res.facts.append(Fact("energy.total", res.tool, "energy_total", round(total, 2), "kWh", (),
                          "energy used in window", True,
                          extra={"meters": [{"device": d.device, "metric": d.meter.metric, "kind": d.meter.kind.value,
                                             "unit": d.meter.unit, "period_s": d.quality.period_s}
                                            for d in quarter.devices]}))
    for dev, kwh in sorted(quarter.by_device().items(), key=lambda kv: -kv[1]):
        if dev:
            res.facts.append(Fact(f"energy.device.{dev}", res.tool, "energy_device", round(kwh, 2), "kWh", (dev,),
                                  f"energy used by {dev}"))
    peak = energy_mod.peak_demand(quarter)
    if peak is not None and peak.kw > 0:
        res.facts.append(Fact("energy.peak_15min", res.tool, "energy_peak", round(peak.kw, 1), "kW", (),
                              "peak 15-minute demand", True, at=_iso(peak.start),
                              extra={"start": _iso(peak.start), "end": _iso(peak.end)}))
    step = _interval(w)
    by_bucket = _energy_buckets(conn, w.line, w.start, w.end, step, w.start, cfg)
    per: dict[datetime, float] = defaultdict(float)
    for (_dev, b), kwh in by_bucket.items():
        per[b] += kwh
    for b in sorted(per)[:48]:
        res.facts.append(Fact(f"energy.interval.{b:%Y%m%dT%H%M}", res.tool, "energy_interval",
                              round(per[b], 2), "kWh", (), "energy in interval", at=_iso(b),
                              extra={"start": _iso(b), "end": _iso(min(b + step, w.end))}))
    edges, days = energy_mod.day_edges(w.start, w.end, cfg.timezone)
    if len(days) > 1:
        daily = energy_mod.compute(conn, w.line, w.start, w.end, meters=cfg.meters, edges=edges).per_bucket
        for k, (d, kwh) in enumerate(zip(days, daily, strict=True)):
            res.facts.append(Fact(f"energy.day.{d.isoformat()}", res.tool, "energy_day", round(kwh, 2), "kWh", (),
                                  f"energy on {d.isoformat()} ({cfg.timezone})", at=_iso(datetime.fromtimestamp(
                                      edges[k], UTC)), extra={"day": d.isoformat(), "start": _iso(
                                      datetime.fromtimestamp(edges[k], UTC)), "end": _iso(
                                      datetime.fromtimestamp(edges[k + 1], UTC))}))
    shifts = shifts_between(cfg.shifts, w.start, w.end, cfg.timezone)[:60]
    if len(shifts) > 1:
        bounds = sorted({x.timestamp() for _d, _n, a, b in shifts for x in (a, b)})
        sres = energy_mod.compute(conn, w.line, w.start, w.end, meters=cfg.meters, edges=bounds)
        per_b = sres.per_bucket
        for d, name, a, b in shifts:
            k = bounds.index(a.timestamp())
            kwh = sum(per_b[k:bounds.index(b.timestamp())])
            res.facts.append(Fact(f"energy.shift.{d.isoformat()}.{name}", res.tool, "energy_shift", round(kwh, 2),
                                  "kWh", (), f"energy in shift {name} of {d.isoformat()}", at=_iso(a),
                                  extra={"day": d.isoformat(), "shift": name, "start": _iso(a), "end": _iso(b)}))
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
def _fine_step(w: Window) -> float:
    """Bucket width for state-by-state energy: one minute, coarser for long windows (at most ~20,000 buckets)."""
    return max(60.0, (w.end - w.start).total_seconds() / 20_000)


def _idle_energy(conn: psycopg.Connection, w: Window, cfg: ToolConfig) -> dict[str, float]:
    """kWh per device in fine buckets whose start finds the device not running (its ``state`` metric; with no
    state metric, inside one of its faults)."""
    step = _fine_step(w)
    res = energy_mod.compute(conn, w.line, w.start, w.end, meters=cfg.meters,
                             edges=energy_mod.bucket_edges(w.start, w.end, step, w.start.timestamp()))
    states = conn.execute(
        "SELECT device, extract(epoch FROM ts)::float8, value FROM telemetry WHERE line = %(line)s AND metric ="
        " %(state)s AND ts >= %(start)s - interval '1 day' AND ts < %(end)s ORDER BY device, ts",
        _params(w, state=cfg.state_metric)).fetchall()
    by_dev: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for dev, t, v in states:
        by_dev[str(dev)][0].append(float(t))
        by_dev[str(dev)][1].append(float(v))
    faults = conn.execute(
        "SELECT device, extract(epoch FROM ts)::float8, coalesce(duration_s, 0) FROM events WHERE line = %(line)s"
        " AND kind = 'fault' AND ts >= %(start)s - interval '1 day' AND ts < %(end)s", _params(w)).fetchall()
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for dev, t, d in faults:
        spans[str(dev)].append((float(t), float(t) + float(d)))
    running = set(cfg.running_states)
    out: dict[str, float] = defaultdict(float)
    for d in res.devices:
        st = by_dev.get(d.device)
        for k, kwh in enumerate(d.kwh):
            if not kwh:
                continue
            t = res.edges[k]
            if st is not None:
                i = bisect.bisect_right(st[0], t) - 1
                idle = i >= 0 and st[1][i] not in running
            else:
                idle = any(a <= t < b for a, b in spans.get(d.device, ()))
            if idle:
                out[d.device] += kwh
    return dict(out)


def energy_waste(conn: psycopg.Connection, w: Window, cfg: ToolConfig = ToolConfig()) -> ToolResult:
    """kWh drawn while machines were stopped/idle, and kWh per good part against the best recent shift."""
    res = ToolResult("energy_waste", w)
    idle = sorted(((d, k) for d, k in _idle_energy(conn, w, cfg).items() if k > 0.005), key=lambda x: (-x[1], x[0]))
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
        step = _fine_step(w)
        fine = energy_mod.compute(conn, w.line, w.start, w.end, meters=cfg.meters,
                                  edges=energy_mod.bucket_edges(w.start, w.end, step, w.start.timestamp()))
        rw = sorted(r.timestamp() for r in rework_times)
        near: list[float] = []
        far: list[float] = []
        for k, kwh in enumerate(fine.per_bucket):
            a, b = fine.edges[k], fine.edges[k + 1]
            kw = kwh * 3600.0 / (b - a)
            i = bisect.bisect_left(rw, a - 60.0)
            (near if i < len(rw) and rw[i] < b + 60.0 else far).append(kw)
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
# Data completeness: Sparkplug sources dead or silent
# ---------------------------------------------------------------------------------------------
def source_gaps(conn: psycopg.Connection, w: Window, cfg: ToolConfig = ToolConfig()) -> ToolResult:
    """Sparkplug edge nodes and devices of the line (its group) whose data is missing from part of the window.

    ``sparkplug_nodes`` holds each source's *current* state, not its history: its last birth, its last death and
    its last message. So what can honestly be said is: a source dead now was dead from its death to the end of
    the window (no birth since); a source born again after its last death was dead from that death to that birth;
    a source stale now sent nothing from its last message on. An earlier death and rebirth that a later one
    overwrote cannot be seen (the label says "last death"). A device of a dead or silent node is in the node's
    fact, not one of its own."""
    from line_agent.store.nodes import list_nodes

    res = ToolResult("source_gaps", w)
    rows = list_nodes(conn, stale_after_s=cfg.sparkplug_stale_s, group=w.line)
    if not rows:
        res.notes.append("no Sparkplug sources on this line")
        return res
    gaps: dict[tuple[str, str], tuple[datetime, datetime, str, bool]] = {}
    for n in rows:
        gap: tuple[datetime, datetime, str, bool] | None = None
        if n.status == "dead" and n.death_at is not None and n.death_at < w.end:
            gap = (max(n.death_at, w.start), w.end, "dead", True)
        elif (n.death_at is not None and n.birth_at is not None and n.death_at < n.birth_at
              and n.birth_at > w.start and n.death_at < w.end):
            gap = (max(n.death_at, w.start), min(n.birth_at, w.end), "dead", False)
        if gap is None and n.status == "stale" and n.last_seen is not None and n.last_seen < w.end \
                and (w.end - n.last_seen).total_seconds() > cfg.sparkplug_stale_s:
            gap = (max(n.last_seen, w.start), w.end, "silent", True)
        if gap is None or gap[1] <= gap[0]:
            continue
        parent = gaps.get((n.edge_node, ""))  # rows come node first, then its devices
        if n.device and parent is not None and parent[0] <= gap[0] and parent[1] >= gap[1]:
            continue  # inside its node's gap: said there
        gaps[(n.edge_node, n.device)] = gap
    for (node, device), (a, b, cause, still) in gaps.items():
        src = f"{w.line}/{node}" + (f"/{device}" if device else "")
        what = f"device {src}" if device else f"edge node {src}"
        names = (node, device) if device else (node,)
        res.facts.append(Fact(
            f"gaps.{node}" + (f".{device}" if device else ""), res.tool, "data_gap",
            round((b - a).total_seconds()), "s", names,
            f"data from Sparkplug {what} missing ({'dead: last death' if cause == 'dead' else 'silent'})", True,
            at=_iso(a), extra={"start": _iso(a), "end": _iso(b), "cause": cause, "still": still,
                               "source": src, "kind": "device" if device else "edge node"}))
    if not res.facts:
        res.notes.append("every Sparkplug source of the line reported through the window")
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
        ToolSpec("downtime_summary", downtime_summary, "The line's stops, slowdowns and restarts with causes and "
                 "durations, planned and unplanned apart."),
        ToolSpec("energy_summary", energy_summary, "Energy kWh total, per interval, per machine, per good part, "
                 "and against the recent baseline."),
        ToolSpec("defect_summary", defect_summary, "Parts inspected, good, reject rate, defect rate by class."),
        ToolSpec("anomalies", anomalies, "Hours whose energy or defect rate is far from the baseline."),
        ToolSpec("energy_waste", energy_waste, "Energy drawn while stopped or idle; kWh per good part vs the "
                 "best recent shift."),
        ToolSpec("candidate_causes", candidate_causes, "Defect bursts after machine faults; power during rework."),
        ToolSpec("source_gaps", source_gaps, "Sparkplug edge nodes and devices dead or silent during the window: "
                 "when their data is missing (every summary gets it)."),
    )
}

FIXED_PLAN: tuple[str, ...] = tuple(TOOLS)
ALERT_PLAN: tuple[str, ...] = ("anomalies", "fault_summary", "downtime_summary", "defect_summary", "source_gaps")
#: Run for every summary whatever the plan: the other facts are only as complete as their sources.
ALWAYS: tuple[str, ...] = ("source_gaps",)


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
        "SELECT DISTINCT edge_node FROM sparkplug_nodes WHERE group_id = %s",
        "SELECT DISTINCT device FROM sparkplug_nodes WHERE group_id = %s",
    ):
        out.update(str(r[0]) for r in conn.execute(sql, (line,)).fetchall() if r[0])
    return out
