"""``lineguard demo``: the plant assembly (line_agent.plant) plus simulators, and the report it prints.

The demo is ``PlantApp`` with three additions that ``lineguard run`` never has: a Modbus PLC simulator
process per line, a simulated energy meter and machine faults published over MQTT with the line's device
account (as line equipment would: the ACL lets it publish only its line's telemetry and events), and a
simulated operator who restarts a line the stop rule stopped (audited as ``demo:simulated-operator``).
Synthetic boards carry injected truth, so the report can score the detector.

Process tree, every child started and stopped by PID, in reverse order on exit or Ctrl-C:

    lineguard demo                      line runtimes + API/console (asyncio, this process)
    ├── postgres                        embedded, unless LINEGUARD_DATABASE_URL is set
    ├── mosquitto (or amqtt)            embedded, unless LINEGUARD_MQTT_URL is set
    ├── python -m hardware.sim_plc      one virtual PLC per simulated line (Modbus TCP)
    └── lineguard ingest                MQTT -> PostgreSQL worker(s)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from line_agent.config import LineConfig, demo_line_config
from line_agent.plant import ChildProcess, LineRun, PlantApp, infrastructure, redact, start_ingest
from line_agent.services import ServiceError, die_with_parent
from line_agent.settings import Settings
from vision.metrics import PRF

log = logging.getLogger(__name__)


@dataclass
class DemoOptions:
    duration_s: float = 0.0  # 0 = until Ctrl-C
    lines: int = 1
    port: int = 8080
    fps: float = 5.0
    ingest_workers: int = 1
    host: str = "127.0.0.1"
    #: The simulated operator restarts a line the stop rule stopped after this many seconds (demo only;
    #: 0 = leave it stopped until someone starts it from the console).
    auto_restart_s: float = 10.0


@dataclass
class LineReport:
    line: str
    parts: int = 0
    rejects: int = 0
    rework: int = 0
    # Part level against the injected truth: a part is bad when any defect was injected.
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    telemetry_rows: int = 0
    fault_events: int = 0
    published: int = 0
    reject_write_p50_ms: float | None = None
    reject_write_p99_ms: float | None = None

    @property
    def precision(self) -> float:
        return PRF(self.tp, self.fp, self.fn).precision

    @property
    def recall(self) -> float:
        return PRF(self.tp, self.fp, self.fn).recall


@dataclass
class DemoReport:
    started: float
    ended: float
    database: str
    broker: str
    console: str
    lines: list[LineReport] = field(default_factory=list)
    dead_letters: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and all(lr.parts > 0 and lr.telemetry_rows > 0 for lr in self.lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "duration_s": round(self.ended - self.started, 1),
            "database": self.database,
            "broker": self.broker,
            "console": self.console,
            "dead_letters": self.dead_letters,
            "errors": self.errors,
            "lines": [
                {**lr.__dict__, "precision": round(lr.precision, 4), "recall": round(lr.recall, 4)}
                for lr in self.lines
            ],
        }

    def render(self) -> str:
        out = [f"lineguard demo report ({self.ended - self.started:.0f} s, database {self.database}, "
               f"broker {self.broker})"]
        for lr in self.lines:
            out.append(
                f"  {lr.line}: parts inspected {lr.parts}, rejects {lr.rejects}, rework {lr.rework}; "
                f"vs injected truth precision {lr.precision:.3f} recall {lr.recall:.3f} "
                f"(tp {lr.tp} fp {lr.fp} fn {lr.fn} tn {lr.tn}); "
                f"telemetry rows stored {lr.telemetry_rows}, fault events {lr.fault_events}; "
                f"reject gate write p50/p99 {lr.reject_write_p50_ms}/{lr.reject_write_p99_ms} ms"
            )
        out.append(f"  dead letters: {self.dead_letters}; console was at {self.console}")
        out.extend(f"  ERROR: {e}" for e in self.errors)
        out.append("  (all counts read back from PostgreSQL)")
        out.append("REPORT " + json.dumps(self.as_dict()))
        return "\n".join(out)


def run_demo(settings: Settings, opts: DemoOptions) -> DemoReport:
    """Run ``opts.lines`` simulated lines for ``opts.duration_s`` seconds (0: until Ctrl-C)."""
    from hardware.sim_plc import SimPlcProcess

    data = settings.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    started = time.time()
    lines = [demo_line_config(i + 1, fps=opts.fps) for i in range(opts.lines)]
    console = f"http://{opts.host}:{opts.port}"
    report = DemoReport(started=started, ended=started, database="", broker="", console=console)
    try:
        # The lines' configs make the embedded broker's ACL and a device account per line (``<line>-device``),
        # which the simulated meter and machines publish with.
        with infrastructure(settings, lines=lines) as (db_url, mqtt_url), contextlib.ExitStack() as children:
            # Children stop in reverse order of start, all before the database and broker go.
            report.database, report.broker = redact(db_url), redact(mqtt_url)
            for line in lines:
                plc = SimPlcProcess(0, watchdog_s=line.plc.watchdog_s,
                                    preexec_fn=die_with_parent(signal.SIGTERM)).start()
                children.callback(plc.terminate)
                line.plc.url = f"modbus://127.0.0.1:{plc.port}"
            ingest = start_ingest(opts.ingest_workers, db_url, mqtt_url, data)
            children.callback(ingest.stop)
            extras = [_meter, _simulated_operator(opts.auto_restart_s if opts.auto_restart_s > 0 else float("inf"))]
            app = PlantApp(settings, lines, db_url, mqtt_url, host=opts.host, port=opts.port, extra_tasks=extras)
            runs = asyncio.run(app.run(opts.duration_s))
            published = {name: run.published for name, run in runs.items()}
            report.ended = time.time()
            # Everything published must be stored before we count: wait for ingest to catch up.
            if not _wait_stored(db_url, lines, published, started, ingest, timeout_s=60.0):
                report.errors.append(f"ingest did not store every inspection (see {data}/logs/ingest.log)")
            _fill_report(report, db_url, lines, runs, started)
    except ServiceError as exc:
        report.errors.append(str(exc))
        report.ended = time.time()
    return report


def _simulated_operator(after_s: float) -> Any:
    """Demo only: a line stopped for ``after_s`` seconds is started again, as an operator would after
    checking it. The start goes through the controller's interlocks and is audited under its own name."""

    async def operate(app: PlantApp, stop: asyncio.Event) -> None:
        stopped_since: dict[str, float] = {}
        shift_started: set[str] = set()
        while not stop.is_set():
            for name, rt in app.runtimes.items():
                if rt.line_mode != "stopped":
                    stopped_since.pop(name, None)
                    if rt.line_mode == "running":
                        shift_started.add(name)
                    continue
                # A line found stopped when the demo begins is started at once (the start of a shift);
                # one that stopped later waits ``after_s``, as an operator checking it would.
                wait = 0.0 if name not in shift_started else after_s
                since = stopped_since.setdefault(name, time.monotonic())
                if time.monotonic() - since >= wait:
                    why = "demo: start of shift" if wait == 0 else f"demo: restart {after_s:g} s after the line stopped"
                    log.info("%s: simulated operator starts the line (%s)", name, why)
                    with contextlib.suppress(Exception):  # refused (e-stop, guard door): audited, try later
                        await app.controllers[name].start(actor="demo:simulated-operator", reason=why)
                    shift_started.add(name)
                    stopped_since.pop(name, None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    return operate


def _device_publishers(app: PlantApp) -> tuple[dict[str, Any], list[Any]]:
    """Per line, the publisher its simulated meter and machines use: a device account of the embedded broker
    (the ACL lets it publish only telemetry and events of its line, as real equipment would), through a
    memory outbox with the same post-acknowledgement retention as the runtime. A broker of your own gives
    no device account: then the runtime's publisher (its account needs telemetry/event rights there)."""
    from line_agent.mqtt import Publisher, parse_mqtt_url

    device_for = getattr(app.mqtt_url, "device_for", None)
    pubs: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for name in app.runtimes:
        url = device_for(name) if device_for is not None else None
        if url is None:
            log.warning("%s: no device account on this broker; the simulated meter publishes with the runtime's",
                        name)
            pubs[name] = app.publisher
            continue
        if url not in own:
            user = parse_mqtt_url(url).user
            own[url] = Publisher(url, user or f"demo-devices-{name}", ack_retention_s=app.settings.ack_retention_s)
        pubs[name] = own[url]
    return pubs, list(own.values())


async def _meter(app: PlantApp, stop: asyncio.Event, period_s: float = 1.0) -> None:
    """Demo only: the simulated energy meter and machine faults of each line, over MQTT (JSON convention),
    each line's with that line's device account."""
    from hardware.sim_meter import LineMeterSim
    from line_agent.contracts import EnergyMetric, MachineEvent, TelemetryPoint, topic

    sims = {name: LineMeterSim(name, seed=hash(name) & 0xFFFF) for name in app.runtimes}
    pubs, own = _device_publishers(app)
    try:
        while not stop.is_set():
            ts = time.time()
            for name, rt in app.runtimes.items():
                line = rt.cfg
                reading = sims[name].read(ts, running=rt.line_mode == "running")
                point = TelemetryPoint(ts=ts, device="meter1", metrics={
                    EnergyMetric.POWER_W.value: reading.power_w, EnergyMetric.ENERGY_KWH.value: reading.energy_kwh})
                msgs = [(topic(line.site, line.line, "energy", "telemetry", line.mqtt.prefix),
                         point.model_dump_json(exclude_none=True))]
                for f in sims[name].faults(ts, period_s):
                    event = MachineEvent(event_id=f.event_id, ts=f.ts, device=f.machine, kind="fault", code=f.code,
                                         duration_s=f.duration_s)
                    msgs.append((topic(line.site, line.line, f.machine, "event", line.mqtt.prefix),
                                 event.model_dump_json(exclude_none=True)))
                for t, payload in msgs:  # off the event loop: the runtime's fallback publisher fsyncs
                    await asyncio.to_thread(pubs[name].publish, t, payload)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period_s)
    finally:
        for p in own:
            await asyncio.to_thread(p.close)


def _wait_stored(db_url: str, lines: list[LineConfig], published: dict[str, int], since: float,
                 ingest: ChildProcess, timeout_s: float) -> bool:
    """True once every published inspection is in the database; False on timeout or dead ingest."""
    deadline = time.monotonic() + timeout_s
    want = sum(published.values())
    while time.monotonic() < deadline:
        if ingest.proc.poll() is not None:
            log.error("ingest exited with code %s", ingest.proc.returncode)
            return False
        with psycopg.connect(db_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM inspections WHERE ts >= to_timestamp(%s) AND line = ANY(%s)",
                (since, [ln.line for ln in lines]),
            ).fetchone()
        if row and row[0] >= want:
            return True
        time.sleep(0.5)
    log.warning("ingest did not store all %d inspections within %.0fs", want, timeout_s)
    return False


def _fill_report(report: DemoReport, db_url: str, lines: list[LineConfig], runs: dict[str, LineRun],
                 since: float) -> None:
    with psycopg.connect(db_url) as conn:
        for line in lines:
            run = runs.get(line.line, LineRun(0, []))
            lr = LineReport(line=line.line, published=run.published)
            lat = sorted(run.reject_latency_ms)
            if lat:
                lr.reject_write_p50_ms = round(lat[len(lat) // 2], 2)
                lr.reject_write_p99_ms = round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2)
            for decision, bad, n in conn.execute(
                """SELECT decision, COALESCE(jsonb_array_length(truth), 0) > 0 AS bad, count(*)
                   FROM inspections WHERE line = %s AND ts >= to_timestamp(%s)
                   GROUP BY 1, 2""",
                (line.line, since),
            ):
                lr.parts += n
                flagged = decision != "pass"
                lr.rejects += n if decision == "reject" else 0
                lr.rework += n if decision == "rework" else 0
                if bad and flagged:
                    lr.tp += n
                elif flagged:
                    lr.fp += n
                elif bad:
                    lr.fn += n
                else:
                    lr.tn += n
            row = conn.execute(
                "SELECT count(*) FROM telemetry WHERE line = %s AND ts >= to_timestamp(%s)", (line.line, since)
            ).fetchone()
            lr.telemetry_rows = row[0] if row else 0
            row = conn.execute(
                "SELECT count(*) FROM events WHERE line = %s AND kind = 'fault' AND ts >= to_timestamp(%s)",
                (line.line, since),
            ).fetchone()
            lr.fault_events = row[0] if row else 0
            report.lines.append(lr)
        row = conn.execute("SELECT count(*) FROM dead_letter WHERE received_at >= to_timestamp(%s)",
                           (since,)).fetchone()
        report.dead_letters = row[0] if row else 0
