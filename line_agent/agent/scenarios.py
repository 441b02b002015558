"""Eval scenarios with known ground truth, generated into a (fresh) database.

Each scenario simulates a line minute by minute (telemetry power/state per machine, fault events,
one inspected part per minute while every machine runs) over the window plus a baseline period
before it, and computes its key facts directly from the simulation, not through the tools' SQL.
One scenario replays rows of the AI4I 2020 predictive-maintenance data set (skipped when absent).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

STEP = timedelta(minutes=1)


@dataclass(frozen=True)
class KeyFact:
    """A ground-truth fact a good summary states: its names, and its value (in ``unit``) and/or a time."""

    kind: str
    names: tuple[str, ...] = ()
    value: float | None = None
    unit: str = ""
    time: str | None = None  # "HH:MM" that must appear (anomalies)


@dataclass
class Fault:
    device: str
    code: str
    at: datetime
    duration_s: float


@dataclass
class Scenario:
    name: str
    line: str
    start: datetime
    end: datetime
    devices: dict[str, tuple[float, float]]  # name -> (running kW, standby kW)
    faults: list[Fault] = field(default_factory=list)
    left_on: list[tuple[str, datetime, datetime]] = field(default_factory=list)  # stopped but drawing 80 %
    spikes: list[tuple[str, datetime, datetime, float]] = field(default_factory=list)
    baseline: timedelta = timedelta(days=2)
    burst_class: str = "burr"
    burst_after: tuple[str, str] | None = None  # (device, code) whose faults are followed by a burst
    key_facts: list[KeyFact] = field(default_factory=list)
    entities: set[str] = field(default_factory=set)
    # Set by the AI4I scenario: per-minute rows replace the synthetic part/power pattern.
    rows: list[dict[str, str]] | None = None


def _fault_at(s: Scenario, dev: str, t: datetime) -> Fault | None:
    for f in s.faults:
        if f.device == dev and f.at <= t < f.at + timedelta(seconds=f.duration_s):
            return f
    return None


def _in(spans: list[tuple[str, datetime, datetime]], dev: str, t: datetime) -> bool:
    return any(d == dev and a <= t < b for d, a, b in spans)


@dataclass
class _Sim:
    telemetry: list[tuple[datetime, str, str, str, float]] = field(default_factory=list)
    events: list[tuple[str, datetime, str, str, str, int, float]] = field(default_factory=list)
    inspections: list[tuple[str, datetime, str, str, str, str, int]] = field(default_factory=list)
    defects: list[tuple[str, int, datetime, str, str, str, float]] = field(default_factory=list)
    # Ground-truth accumulators over the window only.
    energy: float = 0.0
    idle_energy: dict[str, float] = field(default_factory=dict)
    parts: int = 0
    good: int = 0
    rejects: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    hourly_energy: dict[datetime, float] = field(default_factory=dict)


def simulate(s: Scenario) -> _Sim:
    sim = _Sim()
    t = s.start - s.baseline
    i = 0
    burst_spans = [(f.at, f.at + timedelta(seconds=f.duration_s) + timedelta(minutes=30))
                   for f in s.faults if s.burst_after and (f.device, f.code) == s.burst_after]
    while t < s.end:
        in_win = t >= s.start
        all_running = True
        row = s.rows[i % len(s.rows)] if s.rows else None
        for dev, (run_kw, idle_kw) in s.devices.items():
            fault = _fault_at(s, dev, t)
            left = _in(s.left_on, dev, t)
            if fault is not None or left:
                state, kw = 0.0, (run_kw * 0.8 if left else idle_kw)
                all_running = False
            else:
                state = 2.0
                if row is not None:
                    # Mechanical power from torque [Nm] and speed [rpm], plus fixed auxiliaries.
                    kw = float(row["Torque [Nm]"]) * float(row["Rotational speed [rpm]"]) * 2 * math.pi / 60000
                    kw = round(kw + idle_kw, 3)
                else:
                    kw = round(run_kw * (1 + 0.05 * math.sin(i / 7.0)), 3)
            for d, a, b, factor in s.spikes:
                if d == dev and a <= t < b:
                    kw = round(kw * factor, 3)
            sim.telemetry.append((t, s.line, dev, "power_kw", kw))
            sim.telemetry.append((t, s.line, dev, "state", state))
            if in_win:
                kwh = kw * STEP.total_seconds() / 3600.0
                sim.energy += kwh
                hour = t.replace(minute=0, second=0, microsecond=0)
                sim.hourly_energy[hour] = sim.hourly_energy.get(hour, 0.0) + kwh
                if state != 2.0:
                    sim.idle_energy[dev] = sim.idle_energy.get(dev, 0.0) + kwh
        if all_running or row is not None:
            pid = f"{s.name}-p{i:06d}"
            ts = t + timedelta(seconds=30)
            classes: list[str] = []
            if row is not None:
                if row["Machine failure"] == "1":
                    classes.append("surface_defect")
            else:
                if i % 40 == 0:
                    classes.append("scratch")
                if i % 60 == 7:
                    classes.append("dent")
                if any(a <= ts < b for a, b in burst_spans) and i % 2 == 0:
                    classes.append(s.burst_class)
            decision = "pass"
            if classes:
                decision = "rework" if classes == ["dent"] else "reject"
            sim.inspections.append((pid, ts, s.line, "cam1", pid, decision, len(classes)))
            for k, c in enumerate(classes):
                sim.defects.append((pid, k, ts, s.line, "cam1", c, 0.9))
            if ts >= s.start and ts < s.end:
                sim.parts += 1
                sim.good += decision == "pass"
                sim.rejects += decision == "reject"
                for c in classes:
                    sim.classes[c] = sim.classes.get(c, 0) + 1
        t += STEP
        i += 1
    for n, f in enumerate(s.faults):
        sim.events.append((f"{s.name}-f{n}", f.at, s.line, f.device, f.code, 2, f.duration_s))
    return sim


def load(conn: psycopg.Connection, s: Scenario) -> _Sim:
    """Write the scenario's rows into the (migrated) database behind ``conn``; return the simulation."""
    sim = simulate(s)
    with conn.cursor() as cur:
        with cur.copy("COPY telemetry (ts, line, device, metric, value) FROM STDIN") as cp:
            for r in sim.telemetry:
                cp.write_row(r)
        with cur.copy("COPY events (event_id, ts, line, device, code, severity, duration_s, kind) FROM STDIN") as cp:
            for ev in sim.events:
                cp.write_row((*ev, "fault"))
        with cur.copy("COPY inspections (inspection_id, ts, line, camera, part_id, decision, n_defects)"
                      " FROM STDIN") as cp:
            for ins in sim.inspections:
                cp.write_row(ins)
        with cur.copy("COPY defects (inspection_id, idx, ts, line, camera, cls, confidence, x1, y1, x2, y2)"
                      " FROM STDIN") as cp:
            for de in sim.defects:
                cp.write_row((*de, 0, 0, 10, 10))
    conn.commit()
    _ground_truth(s, sim)
    return sim


def _ground_truth(s: Scenario, sim: _Sim) -> None:
    kf: list[KeyFact] = [
        KeyFact("energy_total", (), round(sim.energy, 2), "kWh"),
        KeyFact("inspected", (), sim.parts, "count"),
        KeyFact("reject_rate", (), round(sim.rejects / sim.parts * 100, 1) if sim.parts else 0.0, "%"),
    ]
    in_win = [f for f in s.faults if s.start <= f.at < s.end]
    if in_win:
        kf.append(KeyFact("fault_total", (), len(in_win), "count"))
        pairs: dict[tuple[str, str], list[Fault]] = {}
        for f in in_win:
            pairs.setdefault((f.device, f.code), []).append(f)
        ranked = sorted(pairs.items(), key=lambda kv: (-sum(f.duration_s for f in kv[1]), -len(kv[1]), kv[0]))
        for (dev, code), fs in ranked[:3]:
            kf.append(KeyFact("fault_count", (dev, code), len(fs), "count"))
            kf.append(KeyFact("downtime", (dev, code), sum(f.duration_s for f in fs), "s"))
    if sim.classes:
        cls, n = sorted(sim.classes.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        kf.append(KeyFact("defect_count", (cls,), n, "count"))
    idle = sum(sim.idle_energy.values())
    if idle > 0.005 and s.left_on:
        top = max(sim.idle_energy.items(), key=lambda kv: kv[1])[0]
        kf.append(KeyFact("waste_idle", (top,), round(idle, 2), "kWh"))
    if s.burst_after:
        kf.append(KeyFact("cause", (*s.burst_after, s.burst_class)))
    for dev, a, _b, _f in s.spikes:
        kf.append(KeyFact("anomaly", (), None, "", f"{a:%H:%M}"))
        del dev
    s.key_facts = kf
    s.entities = set(s.devices) | {f.code for f in s.faults} | set(sim.classes) | {s.line}


def _t(end: datetime, hours_before: float) -> datetime:
    return end - timedelta(hours=hours_before)


DEVICES = {"M1": (5.0, 1.0), "M2": (8.0, 2.0), "M3": (3.0, 0.5)}


def steady(end: datetime) -> Scenario:
    return Scenario("steady", "L1", end - timedelta(hours=8), end, dict(DEVICES))


def fault_burst(end: datetime) -> Scenario:
    s = Scenario("fault_burst", "L2", end - timedelta(hours=8), end, dict(DEVICES), burst_after=("M2", "TWF"))
    s.faults = [Fault("M2", "TWF", _t(end, 6), 1200), Fault("M2", "TWF", _t(end, 3), 900),
                Fault("M1", "HDF", _t(end, 1.5), 300)]
    return s


def energy_waste(end: datetime) -> Scenario:
    s = Scenario("energy_waste", "L3", end - timedelta(hours=8), end, dict(DEVICES))
    s.left_on = [("M1", _t(end, 5), _t(end, 4))]
    return s


def energy_spike(end: datetime) -> Scenario:
    s = Scenario("energy_spike", "L4", end - timedelta(hours=8), end, dict(DEVICES))
    s.spikes = [("M2", _t(end, 4), _t(end, 3), 3.0)]
    return s


def ai4i(end: datetime, shared: Path) -> Scenario | None:
    """8 hours of AI4I rows, one per minute, on one milling machine; failures become fault events."""
    path = shared / "datasets" / "ai4i2020" / "ai4i2020.tsv"
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    start = end - timedelta(hours=8)
    baseline = timedelta(days=1)
    n_base = int(baseline / STEP)
    # Row i is the part made at minute i; the window is rows n_base .. n_base+480.
    needed = n_base + int((end - start) / STEP)
    rows = rows[:needed]
    s = Scenario("ai4i", "AI4I", start, end, {"MILL1": (0.0, 0.5)}, baseline=baseline, rows=rows)
    for i, r in enumerate(rows):
        t = start - baseline + i * STEP
        for code in ("TWF", "HDF", "PWF", "OSF", "RNF"):
            if r.get(code) == "1":
                # A failure stops the machine for the rest of that minute's cycle: 30 s downtime.
                s.faults.append(Fault("MILL1", code, t + timedelta(seconds=45), 10.0))
    return s


def all_scenarios(end: datetime | None = None, shared: Path | None = None) -> list[Scenario]:
    end = end or datetime(2026, 11, 20, 14, 0, tzinfo=UTC)
    out: list[Scenario] = [f(end) for f in (steady, fault_burst, energy_waste, energy_spike)]
    if shared is not None:
        a = ai4i(end, shared)
        if a is not None:
            out.append(a)
    return out


ScenarioFactory = Callable[[datetime], Scenario]


# ---- through the front door: publisher -> broker -> ingest -> store ---------------------------------------
def publish_telemetry(mqtt_url: str, line: str, cell: str, device: str, points: list[tuple[float, dict[str, float]]],
                      *, site: str = "eval", prefix: str = "lineguard", per_message: int = 500) -> int:
    """Publish readings as the documented contract says a meter does (``TelemetryPoint`` lists on
    ``<prefix>/<site>/<line>/<cell>/telemetry``, QoS 1); returns the number of points once the broker has them."""
    import uuid

    from line_agent.contracts import TelemetryPoint, topic
    from line_agent.mqtt import Publisher

    client = Publisher(mqtt_url, f"{prefix}-eval-{uuid.uuid4().hex[:8]}", max_queued=0, max_inflight=200)
    try:
        if not client.connected.wait(15):
            raise ConnectionError(f"cannot reach the MQTT broker at {mqtt_url}")
        t = topic(site, line, cell, "telemetry", prefix)
        n = 0
        for i in range(0, len(points), per_message):
            chunk = [TelemetryPoint(ts=ts, device=device, metrics=m).model_dump(mode="json")
                     for ts, m in points[i:i + per_message]]
            client.publish_json(t, chunk)
            n += len(chunk)
        if not client.flush(60):
            raise TimeoutError("the broker did not acknowledge every reading")
        return n
    finally:
        client.close()


def ingest_until(mqtt_url: str, db_url: str, data_dir: Path, publish: Callable[[], int], *,
                 prefix: str = "lineguard", timeout_s: float = 90.0) -> int:
    """Run one ingest worker (subscribed to ``<prefix>/#``) while ``publish()`` runs, until the store holds what
    was published (telemetry rows counted); returns the rows stored."""
    import threading
    import time

    from line_agent.ingest.worker import IngestConfig, IngestWorker

    def stored() -> int:
        with psycopg.connect(db_url) as conn:
            row = conn.execute("SELECT count(*) FROM telemetry").fetchone()
            return int(row[0]) if row else 0

    before = stored()
    cfg = IngestConfig(mqtt_url=mqtt_url, database_url=db_url, data_dir=data_dir, worker_index=0,
                       client_prefix=f"{prefix}-ingest", json_filter=f"{prefix}/#", share_group=prefix,
                       sparkplug_filter=None, batch_delay_s=0.05, db_retry_s=0.3)
    worker = IngestWorker(cfg)
    stop = threading.Event()
    th = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    th.start()
    try:
        if not worker.subscribed.wait(15):
            raise ConnectionError("ingest worker did not subscribe")
        want = before + publish()
        deadline = time.monotonic() + timeout_s
        while stored() < want and time.monotonic() < deadline:
            time.sleep(0.2)
        return stored() - before
    finally:
        stop.set()
        th.join(30)
