"""The one energy computation: kWh per interval from what meters actually send.

Used by the API (charts, shift table, summary endpoint), the store's ``queries.energy``, the agent's tools
and ``lineguard bench energy``. Which reading of which device counts is configuration
(``line_agent/meters.py``); with none, the documented contract (docs/MQTT.md).

Rules, per device (a device is read through one meter, never two added):

* **counter** (cumulative Wh/kWh/MWh register): each increment between two readings is spread evenly over the
  span between them, so an increment is counted in the interval it closes: a reading stamped 00:00 closes the
  previous day's last interval. A decrease is a reset (counted from zero) or, when the old value was near the
  register's top (``rollover`` configured, or the next power of ten), a wrap; a single reading out of line with
  both neighbours (a dip or a spike that comes back) is dropped as a glitch. A gap loses nothing: the increment
  after it holds the energy of the gap (spread over it).
* **power** (W/kW): a reading stands for the span until the next one (``stamp: start``, the default) or since
  the previous one (``stamp: end``, an interval average stamped at its end), at most ``gap_factor`` x the
  meter's period (configured, else observed: the median spacing). A longer silence counts one period, then
  nothing: a silent meter is not a load. A regular 15-minute meter is never cut.
* **interval** (energy of each reporting period): counted over the period that closes at the reading
  (``stamp: end``, default) or opens at it.

Readings are sorted by time; a repeated time keeps its first value; late and out-of-order readings are placed
where their time says. Non-finite values are ignored.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from line_agent.meters import (
    CONTRACT_COUNTERS,
    CONTRACT_POWER,
    MeterConfig,
    MeterKind,
    MetersConfig,
    contract_meter,
    for_line,
)

#: How far beyond the window readings are fetched (a power reading before the window may reach into it, a
#: counter increment after it may close the window's last interval).
DEFAULT_MARGIN_S = 86400.0
#: A "counter" that goes down in more than this share of its steps is not a counter (e.g. per-part energy).
NOT_A_COUNTER_SHARE = 0.2


# ---- pure computation ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    """``kwh`` spread evenly over (a, b] (epoch seconds); a == b is a point at b."""

    a: float
    b: float
    kwh: float


@dataclass
class Quality:
    """What the computation met in one device's readings (reported with the numbers, never hidden)."""

    readings: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    resets: int = 0
    rollovers: int = 0
    glitches: int = 0
    gaps: int = 0  # spans longer than the gap limit
    period_s: float | None = None
    not_a_counter: bool = False

    def notes(self, device: str) -> list[str]:
        out = []
        for name in ("duplicates", "out_of_order", "resets", "rollovers", "glitches", "gaps"):
            n = getattr(self, name)
            if n:
                out.append(f"{device}: {n} {name.replace('_', '-')}")
        if self.not_a_counter:
            out.append(f"{device}: values go down too often to be a counter")
        return out


def clean(ts: Sequence[float], values: Sequence[float], q: Quality | None = None) -> tuple[list[float], list[float]]:
    """Sorted by time, one value per time (the first received wins), finite values only."""
    q = q if q is not None else Quality()
    pairs = [(float(t), i, float(v)) for i, (t, v) in enumerate(zip(ts, values, strict=True))
             if v is not None and math.isfinite(float(v)) and math.isfinite(float(t))]
    q.out_of_order += sum(1 for k in range(1, len(pairs)) if pairs[k][0] < pairs[k - 1][0])
    pairs.sort()
    out_t: list[float] = []
    out_v: list[float] = []
    for t, _i, v in pairs:
        if out_t and t == out_t[-1]:
            q.duplicates += 1
            continue
        out_t.append(t)
        out_v.append(v)
    q.readings = len(out_t)
    return out_t, out_v


def observed_period(ts: Sequence[float]) -> float | None:
    """The median spacing of sorted, distinct times (None with fewer than two)."""
    d = [b - a for a, b in itertools.pairwise(ts) if b > a]
    return float(statistics.median(d)) if d else None


def counter_segments(ts: Sequence[float], values: Sequence[float], factor: float = 1.0,
                     rollover: float | None = None, q: Quality | None = None) -> list[Segment]:
    """Increments of a cumulative register (clean input), in kWh (``factor``: kWh per unit)."""
    q = q if q is not None else Quality()
    t, v = list(ts), list(values)
    # Glitches: a reading out of line with both neighbours while the neighbours agree with each other.
    keep = [True] * len(v)
    for i in range(1, len(v) - 1):
        a, b, c = v[i - 1], v[i], v[i + 1]
        if (b < a <= c) or (b > c >= a):
            keep[i] = False
            q.glitches += 1
    t = [x for x, k in zip(t, keep, strict=True) if k]
    v = [x for x, k in zip(v, keep, strict=True) if k]
    rates = [(v[i] - v[i - 1]) / (t[i] - t[i - 1]) for i in range(1, len(v)) if v[i] >= v[i - 1]]
    typical = statistics.median(rates) if rates else 0.0
    downs = sum(1 for i in range(1, len(v)) if v[i] < v[i - 1])
    if len(v) >= 6 and downs > NOT_A_COUNTER_SHARE * (len(v) - 1):
        q.not_a_counter = True
    out: list[Segment] = []
    for i in range(1, len(v)):
        d = v[i] - v[i - 1]
        if d < 0:
            top = rollover
            if top is None and v[i - 1] > 0:
                top = 10.0 ** math.ceil(math.log10(v[i - 1]))
                if v[i - 1] < 0.9 * top:
                    top = None
            wrapped = v[i] + top - v[i - 1] if top is not None and v[i - 1] <= top else None
            plausible = max(typical * (t[i] - t[i - 1]) * 10.0, 1e-9) if typical > 0 else math.inf
            if wrapped is not None and 0 <= wrapped <= plausible:
                d = wrapped
                q.rollovers += 1
            else:
                d = v[i]  # a reset: counted from zero (what ran before the reset since the last reading is lost)
                q.resets += 1
        out.append(Segment(t[i - 1], t[i], d * factor))
    return out


def power_segments(ts: Sequence[float], values: Sequence[float], factor_w: float = 1.0, *,
                   period_s: float | None = None, gap_factor: float = 2.5, start_stamped: bool = True,
                   q: Quality | None = None) -> list[Segment]:
    """Power readings (clean input) integrated: kWh per reading's span (``factor_w``: W per unit)."""
    q = q if q is not None else Quality()
    period = period_s or observed_period(ts) or 0.0
    q.period_s = period or None
    limit = gap_factor * period
    out: list[Segment] = []
    n = len(ts)
    for i in range(n):
        j = i + 1 if start_stamped else i - 1
        dt = abs(ts[j] - ts[i]) if 0 <= j < n else None
        if dt is None:
            span = period
        elif dt <= limit + 1e-9:
            span = dt
        else:
            span = period
            q.gaps += 1
        if span <= 0:
            continue
        kwh = values[i] * factor_w * span / 3.6e6
        out.append(Segment(ts[i], ts[i] + span, kwh) if start_stamped else Segment(ts[i] - span, ts[i], kwh))
    return out


def interval_segments(ts: Sequence[float], values: Sequence[float], factor: float = 1.0, *,
                      period_s: float | None = None, start_stamped: bool = False,
                      q: Quality | None = None) -> list[Segment]:
    """Energy per reporting interval (clean input), in kWh."""
    q = q if q is not None else Quality()
    period = period_s or observed_period(ts) or 0.0
    q.period_s = period or None
    return [Segment(t, t + period, v * factor) if start_stamped else Segment(t - period, t, v * factor)
            for t, v in zip(ts, values, strict=True)]


def spread(segments: Iterable[Segment], edges: Sequence[float]) -> list[float]:
    """kWh per bucket [edges[k], edges[k+1]); what lies outside [edges[0], edges[-1]) is not counted."""
    out = [0.0] * (len(edges) - 1)
    if not out:
        return out
    lo, hi = edges[0], edges[-1]
    for s in segments:
        if s.kwh == 0:
            continue
        if s.b <= s.a:  # a point: the bucket that closes at or after it
            if lo < s.b <= hi:
                out[max(0, bisect.bisect_left(edges, s.b) - 1)] += s.kwh
            continue
        a, b = max(s.a, lo), min(s.b, hi)
        if b <= a:
            continue
        width = s.b - s.a
        k = max(0, bisect.bisect_right(edges, a) - 1)
        while k < len(out) and edges[k] < b:
            ov = min(b, edges[k + 1]) - max(a, edges[k])
            if ov > 0:
                out[k] += s.kwh * ov / width
            k += 1
    return out


def series_energy(ts: Sequence[float], values: Sequence[float], meter: MeterConfig, edges: Sequence[float],
                  gap_factor: float = 2.5) -> tuple[list[float], Quality]:
    """One device's readings -> kWh per bucket, and what was met on the way."""
    q = Quality()
    t, v = clean(ts, values, q)
    if meter.kind is MeterKind.COUNTER:
        segs = counter_segments(t, v, meter.factor, meter.rollover, q)
        q.period_s = meter.period_s or observed_period(t)
        if q.period_s:
            q.gaps = sum(1 for s in segs if s.b - s.a > gap_factor * q.period_s + 1e-9)
    elif meter.kind is MeterKind.POWER:
        segs = power_segments(t, v, meter.factor, period_s=meter.period_s, gap_factor=gap_factor,
                              start_stamped=meter.start_stamped, q=q)
    else:
        segs = interval_segments(t, v, meter.factor, period_s=meter.period_s, start_stamped=meter.start_stamped,
                                 q=q)
    return spread(segs, edges), q


# ---- windows -------------------------------------------------------------------------------------------
def _ts(t: datetime) -> float:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def bucket_edges(start: datetime, end: datetime, width_s: float, origin: float = 0.0) -> list[float]:
    """[start, aligned boundaries..., end]: buckets of ``width_s`` aligned to ``origin`` (epoch), cut at the window."""
    if width_s <= 0:
        raise ValueError("bucket width must be positive")
    s, e = _ts(start), _ts(end)
    edges = [s]
    k = math.floor((s - origin) / width_s) + 1
    while origin + k * width_s < e:
        edges.append(origin + k * width_s)
        k += 1
    if e > s:
        edges.append(e)
    return edges


def day_edges(start: datetime, end: datetime, tz: str = "UTC") -> tuple[list[float], list[date]]:
    """Local midnights of ``tz`` cutting [start, end) (days of 23 or 25 hours at a DST change), and each day."""
    zone = ZoneInfo(tz)
    s, e = _ts(start), _ts(end)
    edges, days = [s], []
    d = datetime.fromtimestamp(s, zone).date()
    days.append(d)
    while True:
        d = d + timedelta(days=1)
        m = datetime(d.year, d.month, d.day, tzinfo=zone).timestamp()
        if m >= e:
            break
        edges.append(m)
        days.append(d)
    edges.append(e)
    return edges, days


# ---- reading the store ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceEnergy:
    cell: str
    device: str
    meter: MeterConfig
    kwh: tuple[float, ...]  # per bucket
    quality: Quality

    @property
    def total(self) -> float:
        return sum(self.kwh)


@dataclass(frozen=True)
class EnergyResult:
    line: str | None
    edges: tuple[float, ...]
    devices: tuple[DeviceEnergy, ...]
    notes: tuple[str, ...] = ()

    @property
    def starts(self) -> list[datetime]:
        return [datetime.fromtimestamp(e, UTC) for e in self.edges[:-1]]

    @property
    def per_bucket(self) -> list[float]:
        return [sum(d.kwh[k] for d in self.devices) for k in range(len(self.edges) - 1)]

    @property
    def total(self) -> float:
        return sum(d.total for d in self.devices)

    def by_device(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for d in self.devices:
            out[d.device] += d.total
        return dict(out)


@dataclass
class _Raw:
    ts: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


def _fetch(conn: Any, line: str | None, names: Sequence[str], s: float, e: float, margin: float,
           device: str | None) -> dict[tuple[str, str, str], _Raw]:
    params: dict[str, Any] = {"names": list(names), "s": datetime.fromtimestamp(s - margin, UTC),
                              "e": datetime.fromtimestamp(e + margin, UTC), "line": line, "device": device}
    rows = conn.execute(
        "SELECT cell, device, metric, extract(epoch FROM ts)::float8, value FROM telemetry"
        " WHERE metric = ANY(%(names)s) AND ts >= %(s)s AND ts <= %(e)s"
        " AND (%(line)s::text IS NULL OR line = %(line)s) AND (%(device)s::text IS NULL OR device = %(device)s)"
        " AND value IS NOT NULL ORDER BY ts", params).fetchall()
    out: dict[tuple[str, str, str], _Raw] = defaultdict(_Raw)
    for cell, dev, metric, t, v in rows:
        r = out[(str(cell), str(dev), str(metric))]
        r.ts.append(float(t))
        r.values.append(float(v))
    return out


def _bound(conn: Any, line: str | None, key: tuple[str, str, str], at: float,
           before: bool) -> tuple[float, float] | None:
    op, order = ("<", "DESC") if before else (">", "ASC")
    row = conn.execute(
        f"SELECT extract(epoch FROM ts)::float8, value FROM telemetry WHERE cell = %(c)s AND device = %(d)s"
        f" AND metric = %(m)s AND (%(line)s::text IS NULL OR line = %(line)s) AND value IS NOT NULL"
        f" AND ts {op} %(t)s ORDER BY ts {order} LIMIT 1",
        {"c": key[0], "d": key[1], "m": key[2], "line": line, "t": datetime.fromtimestamp(at, UTC)}).fetchone()
    return (float(row[0]), float(row[1])) if row else None


def choose_meters(available: Iterable[tuple[str, str, str]],
                  meters: MetersConfig) -> list[tuple[str, str, MeterConfig]]:
    """(cell, device, meter) for each device: its configured meter, else (auto) the contract's counter, else
    its power; never two meters for one device."""
    by_dev: dict[tuple[str, str], set[str]] = defaultdict(set)
    for cell, dev, metric in available:
        by_dev[(cell, dev)].add(metric)
    out: list[tuple[str, str, MeterConfig]] = []
    for (cell, dev), metrics in sorted(by_dev.items()):
        conf = next((m for m in meters.devices if m.device == dev and m.cell in (None, cell)), None) or next(
            (m for m in meters.devices if m.device == "*" and m.cell in (None, cell) and set(m.names) & metrics),
            None)
        if conf is not None:
            if set(conf.names) & metrics:
                out.append((cell, dev, conf))
            continue
        if not meters.auto:
            continue
        for name in (*CONTRACT_COUNTERS, *CONTRACT_POWER):
            if name in metrics:
                out.append((cell, dev, contract_meter(dev, name, cell)))
                break
    return out


def _names(meters: MetersConfig) -> list[str]:
    names = {n for m in meters.devices for n in m.names}
    if meters.auto:
        names |= {*CONTRACT_COUNTERS, *CONTRACT_POWER}
    return sorted(names)


def compute(conn: Any, line: str | None, start: datetime, end: datetime, *, edges: Sequence[float] | None = None,
            bucket_s: float | None = None, meters: MetersConfig | None = None, device: str | None = None,
            margin_s: float = DEFAULT_MARGIN_S) -> EnergyResult:
    """kWh of ``line`` (all lines: None) in [start, end), per bucket (``edges`` in epoch seconds, or buckets of
    ``bucket_s`` aligned to the epoch, or one bucket) and per device, by the line's meters."""
    meters = for_line(meters)
    s, e = _ts(start), _ts(end)
    if edges is None:
        edges = bucket_edges(start, end, bucket_s) if bucket_s else ([s, e] if e > s else [s])
    raw = _fetch(conn, line, _names(meters), s, e, margin_s, device)
    chosen = choose_meters(raw, meters)
    devices: list[DeviceEnergy] = []
    notes: list[str] = []
    fallback: set[tuple[str, str]] = set()
    for attempt in (0, 1):
        for cell, dev, meter in chosen:
            if attempt == 1 and (cell, dev) not in fallback:
                continue
            series = _Raw()
            for name in meter.names:
                r = raw.get((cell, dev, name))
                if r is None:
                    continue
                series.ts += r.ts
                series.values += r.values
                if meter.kind is MeterKind.COUNTER:  # the readings around the window's margins, for long gaps
                    for at, before in ((s - margin_s, True), (e + margin_s, False)):
                        b = _bound(conn, line, (cell, dev, name), at, before)
                        if b is not None:
                            series.ts.append(b[0])
                            series.values.append(b[1])
            kwh, q = series_energy(series.ts, series.values, meter, edges, meters.gap_factor)
            if q.not_a_counter and attempt == 0:
                # Not a register after all (a per-part energy under a counter's name): read the device's power.
                notes.append(f"{dev}: {meter.metric} goes down too often to be a counter; not counted")
                fallback.add((cell, dev))
                continue
            devices.append(DeviceEnergy(cell, dev, meter, tuple(kwh), q))
            notes += q.notes(dev)
        if attempt == 0 and fallback:
            power = {k for k in raw if (k[0], k[1]) in fallback and k[2] in CONTRACT_POWER}
            chosen = choose_meters(power, MetersConfig(auto=True, gap_factor=meters.gap_factor))
    return EnergyResult(line, tuple(edges), tuple(devices), tuple(notes))


@dataclass(frozen=True)
class Peak:
    kw: float
    start: datetime
    end: datetime


def peak_demand(result: EnergyResult) -> Peak | None:
    """The highest average demand over one bucket of ``result`` (use 15-minute buckets for the billing peak).

    Buckets cut short by the window's edges are skipped (their average would be over a shorter span)."""
    best: Peak | None = None
    per = result.per_bucket
    widths = [b - a for a, b in itertools.pairwise(result.edges)]
    full = max(widths) if widths else 0
    for k, kwh in enumerate(per):
        if widths[k] < full - 1e-6 or widths[k] <= 0:
            continue
        kw = kwh * 3600.0 / widths[k]
        if best is None or kw > best.kw:
            best = Peak(kw, datetime.fromtimestamp(result.edges[k], UTC),
                        datetime.fromtimestamp(result.edges[k + 1], UTC))
    return best


# ---- synthetic meters: the quirks real meters have, with known truth (tests, ``lineguard bench energy``) ----
WEEK_START = datetime(2018, 1, 1, tzinfo=UTC)  # a Monday
PERIOD_15M = 900.0


def load_profile(days: int = 7, seed: int = 0, start: datetime = WEEK_START,
                 period_s: float = PERIOD_15M) -> list[float]:
    """True kWh of each period of a plant: two shifts on weekdays, a base load at night and at weekends,
    noise. About 2,600 kWh a weekday (a week of 15-minute data is near 18,000 kWh)."""
    import random

    rnd = random.Random(seed)
    out = []
    s = start.timestamp()
    for k in range(int(days * 86400 / period_s)):
        t = datetime.fromtimestamp(s + k * period_s, UTC)
        h = t.hour + t.minute / 60
        kw = 45.0
        if t.weekday() < 5 and 6 <= h < 22:
            kw = 160.0 + 25.0 * math.sin(h / 3.0)
        elif t.weekday() == 5 and 6 <= h < 14:
            kw = 110.0
        kw *= 1.0 + rnd.uniform(-0.08, 0.08)
        out.append(kw * period_s / 3600.0)
    return out


@dataclass
class Quirk:
    """Readings one meter sent for a known load, the meter's configuration, and the truth per period."""

    name: str
    meter: MeterConfig
    ts: list[float]
    values: list[float]
    truth: list[float]  # kWh per period [start + k*period, start + (k+1)*period) that the readings carry
    description: str = ""


def _cum(truth: Sequence[float], start_value: float = 0.0) -> list[float]:
    out, c = [start_value], start_value
    for e in truth:
        c += e
        out.append(c)
    return out


def quirks(days: int = 7, seed: int = 0, start: datetime = WEEK_START) -> list[Quirk]:
    """One generated meter per quirk, each over the same ``days`` of 15-minute data."""
    import random

    p = PERIOD_15M
    truth = load_profile(days, seed, start, p)
    s = start.timestamp()
    n = len(truth)
    ends = [s + (k + 1) * p for k in range(n)]
    stamps = [s + k * p for k in range(n + 1)]  # counter readings: at the start, then at each period's end
    rnd = random.Random(seed + 1)
    kwh = MeterConfig(device="meter", metric="energy_kwh", kind=MeterKind.COUNTER, unit="kWh")
    out: list[Quirk] = []
    cum = _cum(truth, 1834.21)
    out.append(Quirk("counter_15min_kwh", kwh, stamps, cum, truth, "cumulative kWh every 15 min, stamped at the "
                     "end of each interval (00:00 closes the previous day)"))
    out.append(Quirk("counter_wh", kwh.model_copy(update={"metric": "energy_wh", "unit": "Wh"}), stamps,
                     [round(v * 1000.0, 1) for v in cum], truth, "the same register in Wh"))
    r = n // 2 + 7
    reset = cum[: r] + [c - cum[r - 1] for c in cum[r:]]  # reset at a reading: counts from zero
    out.append(Quirk("counter_reset", kwh, stamps, reset, truth, "register reset to 0 mid-week"))
    wrap_cum = _cum(truth, 99_000.0)
    out.append(Quirk("counter_rollover", kwh, stamps, [c % 100_000.0 for c in wrap_cum], truth,
                     "register wraps at 100,000 kWh (detected, not configured)"))
    cfg_wrap = kwh.model_copy(update={"rollover": 65_535.0})
    cum_w = _cum(truth, 60_000.0)
    out.append(Quirk("counter_rollover_configured", cfg_wrap, stamps, [c % 65_535.0 for c in cum_w], truth,
                     "register wraps at a configured 65,535 kWh"))
    keep = [i for i in range(n + 1) if not (40 <= i % 96 < 52 and (i // 96) % 2 == 1)]  # 3 h silent, every 2nd day
    out.append(Quirk("counter_gaps", kwh, [stamps[i] for i in keep], [cum[i] for i in keep], truth,
                     "meter silent 3 h every other day (the increment after a gap holds it)"))
    dup_t, dup_v = list(stamps), list(cum)
    for i in rnd.sample(range(n + 1), (n + 1) // 20):
        dup_t.append(stamps[i])
        dup_v.append(cum[i])
    out.append(Quirk("counter_duplicates", kwh, dup_t, dup_v, truth, "5 % of readings delivered twice"))
    order = list(range(n + 1))
    for i in range(0, n - 8, 8):  # late readings: blocks of 8 arrive reversed
        order[i:i + 8] = reversed(order[i:i + 8])
    out.append(Quirk("counter_out_of_order", kwh, [stamps[i] for i in order], [cum[i] for i in order], truth,
                     "late and out-of-order readings"))
    glitch = list(cum)
    for i in (100, 300, 500):
        glitch[i] = 0.0 if i != 300 else cum[i] * 1000.0
    out.append(Quirk("counter_glitch", kwh, stamps, glitch, truth, "single readings of 0 and x1000 that come back"))
    avg_end = MeterConfig(device="meter", metric="power_w", kind=MeterKind.POWER, unit="W", stamp="end")
    out.append(Quirk("power_avg_w_end", avg_end, ends, [e * 4000.0 for e in truth], truth,
                     "15-min average power in W stamped at the interval end (stamp: end)"))
    auto_kw = contract_meter("meter", "power_kw")
    starts = [s + k * p for k in range(n)]
    out.append(Quirk("power_kw_start", auto_kw, starts, [e * 4.0 for e in truth], truth,
                     "15-min average kW stamped at the interval start (contract default, no config)"))
    silent_k = [k for k in range(n) if not (200 <= k < 208 or 400 <= k < 440)]
    silent_truth = [truth[k] if k in set(silent_k) else 0.0 for k in range(n)]
    out.append(Quirk("power_silent", auto_kw, [starts[k] for k in silent_k], [truth[k] * 4.0 for k in silent_k],
                     silent_truth, "power meter silent for 2 h and 10 h (a silent meter is not a load)"))
    jitter = [t + rnd.uniform(-20, 20) for t in starts]
    out.append(Quirk("power_jitter", auto_kw, jitter, [e * 4.0 for e in truth], truth,
                     "15-min power with +-20 s clock jitter"))
    interval = MeterConfig(device="meter", metric="interval_kwh", kind=MeterKind.INTERVAL, unit="kWh",
                           period_s=p)
    out.append(Quirk("interval_kwh_end", interval, ends, list(truth), truth, "energy of each 15 min, stamped at "
                     "its end"))
    return out


def legacy_daily(q: Quirk, edges: Sequence[float]) -> list[float]:
    """What the two replaced SQL paths computed (power held at most 300 s; a counter increment in the bucket of
    the reading's own time), for the benchmark's before/after column."""
    t, v = clean(q.ts, q.values)
    out = [0.0] * (len(edges) - 1)

    def put(ts: float, kwh: float) -> None:
        if edges[0] <= ts < edges[-1]:
            out[bisect.bisect_right(edges, ts) - 1] += kwh

    if q.meter.kind is MeterKind.POWER:
        for i in range(len(t) - 1):
            put(t[i], v[i] * q.meter.factor * min(t[i + 1] - t[i], 300.0) / 3.6e6)
    elif q.meter.kind is MeterKind.COUNTER:
        for i in range(1, len(t)):
            d = v[i] - v[i - 1]
            put(t[i], (v[i] if d < 0 else d) * q.meter.factor)
    else:
        for i in range(len(t)):
            put(t[i], v[i] * q.meter.factor)
    return out


def truth_per_bucket(q: Quirk, edges: Sequence[float], start: datetime = WEEK_START) -> list[float]:
    """The independent answer: each period's true kWh into the bucket holding that period (periods lie inside
    buckets when buckets are whole periods)."""
    s = start.timestamp()
    return spread([Segment(s + k * PERIOD_15M, s + (k + 1) * PERIOD_15M, e) for k, e in enumerate(q.truth)], edges)


def bench(days: int = 7, seed: int = 0, tz: str = "UTC") -> list[dict[str, Any]]:
    """Per quirk: worst daily error of this module and of the replaced SQL against the truth."""
    start = WEEK_START
    edges, days_list = day_edges(start, start + timedelta(days=days), tz)
    rows = []

    def worst(xs: Sequence[float], want: Sequence[float]) -> float:
        return max(abs(x - w) / w * 100.0 for x, w in zip(xs, want, strict=True) if w > 0)

    for q in quirks(days, seed, start):
        got, quality = series_energy(q.ts, q.values, q.meter, edges)
        want = truth_per_bucket(q, edges, start)
        old = legacy_daily(q, edges)
        rows.append({"quirk": q.name, "description": q.description, "days": len(days_list),
                     "truth_kwh": round(sum(want), 1), "kwh": round(sum(got), 1),
                     "worst_day_error_pct": worst(got, want),
                     "legacy_kwh": round(sum(old), 1), "legacy_worst_day_error_pct": worst(old, want),
                     "notes": quality.notes("meter")})
    return rows
