"""Eval scenarios with known ground truth, published through the front door into a (fresh) database.

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
    #: "power" (each machine's power every minute) or "counter_15min" (one kWh register per machine, 15-min reads).
    meter: str = "power"
    meter_reset: datetime | None = None  # the register goes back to 0 at this reading
    meter_silent: tuple[datetime, datetime] | None = None  # no readings in [a, b)
    #: Line stops as the controller audits them: (stopped, restarted, who stopped it, why).
    line_stops: list[tuple[datetime, datetime, str, str]] = field(default_factory=list)


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
    #: 15-minute register readings (device, time, kWh) when the scenario's meter is a counter.
    registers: list[tuple[str, datetime, float]] = field(default_factory=list)


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
    if s.meter == "counter_15min":
        _registers(s, sim)
    return sim


def _registers(s: Scenario, sim: _Sim) -> None:
    """Each machine's kWh register read every 15 minutes from the simulated power (the energy truth is the
    same minutes' energy), with the scenario's reset and silence."""
    reg: dict[str, float] = {}
    for t, _line, dev, metric, kw in sim.telemetry:
        if metric != "power_kw":
            continue
        reg[dev] = reg.get(dev, 0.0) + kw * STEP.total_seconds() / 3600.0  # the minute [t, t+1 min)
        at = t + STEP  # the register is read when the minute it closes ends
        if at.minute % 15:
            continue
        if s.meter_silent is not None and s.meter_silent[0] <= at < s.meter_silent[1]:
            continue
        sim.registers.append((dev, at, round(reg[dev], 6)))
        if s.meter_reset is not None and at == s.meter_reset:
            reg[dev] = 0.0  # read, then reset: the next reading is the energy since


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
    stops = [(a, b, who, why) for a, b, who, why in s.line_stops if s.start <= a < s.end]
    if stops:
        secs = [(min(b, s.end) - a).total_seconds() for a, b, _w, _y in stops]
        kf.append(KeyFact("stop_total", (), len(stops), "count"))
        kf.append(KeyFact("stopped_total", (), sum(secs), "s"))
        planned = sum(x for x, st in zip(secs, stops, strict=True)
                      if st[2].startswith("user:") and st[3].lower().startswith("planned"))
        if planned:
            kf.append(KeyFact("stopped_planned", (), planned, "s"))
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
    out: list[Scenario] = [f(end) for f in (steady, fault_burst, energy_waste, energy_spike, counter_meter,
                                            stops_day)]
    if shared is not None:
        a = ai4i(end, shared)
        if a is not None:
            out.append(a)
    return out


ScenarioFactory = Callable[[datetime], Scenario]


def counter_meter(end: datetime) -> Scenario:
    """A line metered the way plants bill: one cumulative kWh register read every 15 minutes, which is reset to
    zero once in the window and goes silent for two hours (the readings resume with the energy of the gap)."""
    s = Scenario("counter_meter", "L6", end - timedelta(hours=8), end, dict(DEVICES))
    s.meter = "counter_15min"
    s.meter_reset = _t(end, 5)
    s.meter_silent = (_t(end, 3.5), _t(end, 1.5))
    return s


def stops_day(end: datetime) -> Scenario:
    """A day with two burst-rule stops and a supervisor's planned stop, each restarted by a supervisor."""
    s = Scenario("stops_day", "L7", end - timedelta(hours=8), end, dict(DEVICES))
    rule = "stop rule: 8 rejects in the last 10 parts (limit 8/10)"
    s.line_stops = [(_t(end, 6), _t(end, 6) + timedelta(minutes=10), "runtime:L7", rule),
                    (_t(end, 3), _t(end, 3) + timedelta(minutes=5), "runtime:L7", rule),
                    (_t(end, 1.5), _t(end, 1.5) + timedelta(minutes=20), "user:supervisor", "planned: tool change")]
    return s


def _audit_stops(db_url: str, scenarios: list[Scenario]) -> None:
    """The scenarios' stops written the way the line's controller writes them (line_agent.audit.AuditWriter)."""
    from hardware.tags import AuditRecord
    from line_agent.audit import AuditWriter

    if not any(s.line_stops for s in scenarios):
        return
    audit = AuditWriter(db_url)
    try:
        for s in scenarios:
            hook = audit.hook(s.line)
            for a, b, actor, reason in s.line_stops:
                hook(AuditRecord(action="stop", outcome="ok", line=s.line, tag="run_cmd", value=False, reason=reason,
                                 actor=actor, ts=a.timestamp()))
                hook(AuditRecord(action="start", outcome="ok", line=s.line, tag="run_cmd", value=True,
                                 reason="restarted after the check", actor="user:supervisor", ts=b.timestamp()))
    finally:
        audit.close()


def front_door_messages(s: Scenario, sim: _Sim, site: str = "eval") -> list[tuple[str, bytes]]:
    """The scenario as the line's devices and runtime publish it, per the contracts (docs/MQTT.md): power in W
    and state per machine (or a 15-minute kWh register), fault events, inspections with their defects."""
    import json

    from line_agent.contracts import Defect, Inspection, MachineEvent, TelemetryPoint, topic

    out: list[tuple[str, bytes]] = []
    by_key: dict[tuple[str, datetime], dict[str, float]] = {}
    for t, _line, dev, metric, value in sim.telemetry:
        if metric == "power_kw":
            if s.meter == "counter_15min":
                continue  # this line has no power meter: its energy is the register below
            by_key.setdefault((dev, t), {})["power_w"] = round(value * 1000.0, 3)
        else:
            by_key.setdefault((dev, t), {})[metric] = value
    if s.meter == "counter_15min":
        for dev, t, register in sim.registers:
            by_key.setdefault((dev, t), {})["energy_kwh"] = register
    per_dev: dict[str, list[dict[str, object]]] = {}
    for (dev, t), metrics in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        point = TelemetryPoint(ts=t.timestamp(), device=dev, metrics=metrics)
        per_dev.setdefault(dev, []).append(point.model_dump(mode="json"))
    for dev, points in per_dev.items():
        for i in range(0, len(points), 1000):
            out.append((topic(site, s.line, dev, "telemetry"), json.dumps(points[i:i + 1000]).encode()))
    for eid, at, _line, dev, code, severity, duration_s in sim.events:
        ev = MachineEvent(event_id=eid, ts=at.timestamp(), device=dev, kind="fault", code=code, severity=severity,
                          duration_s=duration_s)
        out.append((topic(site, s.line, dev, "event"), ev.model_dump_json(exclude_none=True).encode()))
    defects: dict[str, list[Defect]] = {}
    for pid, _k, _ts, _line, _cam, cls, conf in sim.defects:
        defects.setdefault(pid, []).append(Defect(cls=cls, confidence=conf, box=(0.0, 0.0, 10.0, 10.0)))
    for pid, ts, line, cam, part, decision, _n in sim.inspections:
        ins = Inspection(inspection_id=pid, ts=ts.timestamp(), site=site, line=line, camera=cam, part_id=part,
                         decision=decision, defects=defects.get(pid, []), model="eval")  # type: ignore[arg-type]
        out.append((topic(site, line, "inspection", "inspection"), ins.model_dump_json().encode()))
    return out


def load_front_door(mqtt_url: str, db_url: str, data_dir: Path, scenarios: list[Scenario], *,
                    timeout_s: float = 180.0) -> list[_Sim]:
    """Publish every scenario through the broker (QoS 1) with one ingest worker storing it, until the store
    holds every reading, event and inspection; then compute the key facts from the simulation."""
    import threading
    import time
    import uuid

    from line_agent.ingest.worker import IngestConfig, IngestWorker
    from line_agent.mqtt import Publisher

    sims = [simulate(s) for s in scenarios]
    messages = [m for s, sim in zip(scenarios, sims, strict=True) for m in front_door_messages(s, sim)]
    lines = [s.line for s in scenarios]

    def stored() -> tuple[int, int, int]:
        with psycopg.connect(db_url) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM telemetry WHERE line = ANY(%(l)s)),"
                " (SELECT count(*) FROM events WHERE line = ANY(%(l)s)),"
                " (SELECT count(*) FROM inspections WHERE line = ANY(%(l)s))", {"l": lines}).fetchone()
        return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)

    want = (sum(len(json_points) for json_points in _points(messages)), sum(len(sim.events) for sim in sims),
            sum(1 for t, _ in messages if t.endswith("/inspection")))
    prefix = f"eval{uuid.uuid4().hex[:6]}"
    cfg = IngestConfig(mqtt_url=mqtt_url, database_url=db_url, data_dir=data_dir, worker_index=0,
                       client_prefix=f"{prefix}-ingest", json_filter="lineguard/eval/#", share_group="",
                       sparkplug_filter=None, batch_delay_s=0.05, db_retry_s=0.3)
    worker = IngestWorker(cfg)
    stop = threading.Event()
    th = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    th.start()
    client = Publisher(mqtt_url, f"{prefix}-devices", max_queued=0, max_inflight=200)
    try:
        if not worker.subscribed.wait(15) or not client.wait_connected(15):
            raise ConnectionError(f"the eval could not reach the broker at {mqtt_url}")
        for t, payload in messages:
            client.publish(t, payload)
        # A broker that saves on every change (durability) takes a few hundred messages a second.
        if not client.flush(max(120.0, len(messages) / 50.0)):
            raise TimeoutError("the broker did not acknowledge every eval message")
        deadline = time.monotonic() + timeout_s
        while stored() != want and time.monotonic() < deadline:
            time.sleep(0.2)
        if stored() != want:
            raise TimeoutError(f"ingest stored {stored()} of {want} (telemetry points, events, inspections)")
    finally:
        client.close()
        stop.set()
        th.join(30)
    _audit_stops(db_url, scenarios)
    for s, sim in zip(scenarios, sims, strict=True):
        _ground_truth(s, sim)
    return sims


def _points(messages: list[tuple[str, bytes]]) -> list[list[tuple[str, object]]]:
    """Telemetry rows each message makes (one per metric of each point), for counting what must be stored."""
    import json

    out: list[list[tuple[str, object]]] = []
    for t, payload in messages:
        if t.endswith("/telemetry"):
            out.append([(m, 0) for p in json.loads(payload) for m in p["metrics"]])
    return out


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
