"""Start a whole line (or several) with its services, and the report ``lineguard demo`` prints.

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
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from line_agent.config import LineConfig, demo_line_config
from line_agent.services import EmbeddedBroker, EmbeddedPostgres, ServiceError, die_with_parent
from line_agent.settings import Settings
from line_agent.store.migrate import migrate
from vision.metrics import PRF

if TYPE_CHECKING:
    from datetime import datetime

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
class LineRun:
    """What one line's runtime counted itself: inspections published, reject gate write latencies (ms)."""

    published: int
    reject_latency_ms: list[float]


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


def _redact(url: str) -> str:
    """Hide a password in a URL before printing it."""
    if "@" in url and ":" in url.split("@", 1)[0].split("//", 1)[-1]:
        scheme, rest = url.split("//", 1)
        user = rest.split(":", 1)[0]
        return f"{scheme}//{user}:***@{rest.split('@', 1)[1]}"
    return url


class ChildProcess:
    """A child we started; stopped by PID with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as logf:
            self.proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %s) did not stop in %.0fs; killing", self.name, self.proc.pid, timeout_s)
                self.proc.kill()
                self.proc.wait(5)


@contextlib.contextmanager
def infrastructure(settings: Settings) -> Iterator[tuple[str, str]]:
    """The database and broker URLs: the configured ones, else embedded servers in data_dir."""
    data = settings.data_dir.resolve()
    pg = broker = None
    try:
        db_url = settings.database_url
        if db_url is None:
            pg = EmbeddedPostgres(data / "postgres")
            db_url = pg.start()
        mqtt_url = settings.mqtt_url
        if mqtt_url is None:
            broker = EmbeddedBroker(data / "broker")
            mqtt_url = broker.start()
        migrate(db_url)
        yield db_url, mqtt_url
    finally:
        if broker is not None:
            broker.stop()
        if pg is not None:
            pg.stop()


def admin_token(settings: Settings) -> str:
    """LINEGUARD_ADMIN_TOKEN, else a token generated once and kept in the data dir (mode 0600).

    The API stores only its hash; the plain token is printed at start so a person can log in.
    """
    if settings.admin_token:
        return settings.admin_token
    path = settings.data_dir.resolve() / "admin_token"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    import secrets

    token = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token


def make_summarizer(db_url: str, site: str, publish: Callable[[str, bytes], Any]) -> Callable[..., Any]:
    """The API's on-demand summary: the line agent over this store, results also published on MQTT.

    The backend comes from LINEGUARD_LLM_BACKEND; unset, the template narrator (no model, offline).
    """

    def summarize(*, line: str, start: datetime, end: datetime, lang: str) -> Any:
        from line_agent.agent import summarize as agent_summarize

        return agent_summarize(db_url, line, start=start, end=end, lang=lang, publish=publish, site=site)

    return summarize


def _child_env(db_url: str, mqtt_url: str, data_dir: Path) -> dict[str, str]:
    return {**os.environ, "LINEGUARD_DATABASE_URL": db_url, "LINEGUARD_MQTT_URL": mqtt_url,
            "LINEGUARD_DATA_DIR": str(data_dir)}


def start_ingest(workers: int, db_url: str, mqtt_url: str, data_dir: Path, timeout_s: float = 60.0) -> ChildProcess:
    """Start ``lineguard ingest`` and wait until every worker has subscribed.

    Until then a message would reach no one (a shared subscription that does not exist yet queues
    nothing), so the line must not start publishing before.
    """
    run_dir = data_dir / "run"
    for old in run_dir.glob("*.subscribed") if run_dir.exists() else []:
        old.unlink()
    cmd = [sys.executable, "-m", "line_agent.cli", "ingest", "--workers", str(workers)]
    child = ChildProcess("ingest", cmd, _child_env(db_url, mqtt_url, data_dir), data_dir / "logs" / "ingest.log")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise ServiceError(f"ingest exited with code {child.proc.returncode} (see {data_dir}/logs)")
        if run_dir.exists() and len(list(run_dir.glob("*.subscribed"))) >= workers:
            return child
        time.sleep(0.1)
    child.stop()
    raise ServiceError(f"ingest workers did not subscribe within {timeout_s:.0f}s (see {data_dir}/logs)")


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
        with infrastructure(settings) as (db_url, mqtt_url), contextlib.ExitStack() as children:
            # Children stop in reverse order of start, all before the database and broker go.
            report.database, report.broker = _redact(db_url), _redact(mqtt_url)
            for line in lines:
                plc = SimPlcProcess(0, watchdog_s=line.plc.watchdog_s,
                                    preexec_fn=die_with_parent(signal.SIGTERM)).start()
                children.callback(plc.terminate)
                line.plc.url = f"modbus://127.0.0.1:{plc.port}"
            ingest = start_ingest(opts.ingest_workers, db_url, mqtt_url, data)
            children.callback(ingest.stop)
            runs = asyncio.run(_serve(settings, lines, db_url, mqtt_url, opts))
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


def run_line(settings: Settings, line: LineConfig) -> None:
    """``lineguard run``: one configured line until SIGINT/SIGTERM."""
    data = settings.data_dir.resolve()
    with infrastructure(settings) as (db_url, mqtt_url), contextlib.ExitStack() as children:
        if line.plc.url is None:
            raise ServiceError(f"line {line.line}: plc.url is required for `lineguard run`")
        ingest = start_ingest(1, db_url, mqtt_url, data)
        children.callback(ingest.stop)
        opts = DemoOptions(port=settings.api_port, host=settings.api_host)
        asyncio.run(_serve(settings, [line], db_url, mqtt_url, opts))


async def _serve(
    settings: Settings, lines: list[LineConfig], db_url: str, mqtt_url: str, opts: DemoOptions
) -> dict[str, LineRun]:
    """Run the line runtimes, meters and the API in this loop; return what each line counted."""
    import uvicorn

    from hardware.modbus import ModbusDriver
    from hardware.safety import LineController
    from hardware.tags import TagMap
    from line_agent.api.app import create_app
    from line_agent.api.deps import ApiDeps
    from line_agent.live import LiveHub
    from line_agent.audit import AuditWriter
    from line_agent.mqtt import Publisher
    from line_agent.runtime import LineRuntime

    data = settings.data_dir.resolve()
    hub = LiveHub()
    audit = AuditWriter(db_url)
    publisher = Publisher(mqtt_url, client_id=f"lineguard-runtime-{os.getpid()}")
    runtimes: list[LineRuntime] = []
    controllers: dict[str, LineController] = {}
    for line in lines:
        tags = TagMap.load(line.plc.tags)
        assert line.plc.url is not None
        host, port = line.plc.url.removeprefix("modbus://").rsplit(":", 1)
        driver = ModbusDriver(tags, host, int(port))
        ctl = LineController(driver, heartbeat_period_s=line.plc.heartbeat_period_s,
                             plc_watchdog_s=line.plc.watchdog_s, on_audit=audit.hook(line.line),
                             actor=f"runtime:{line.line}")
        await ctl.start_background()
        controllers[line.line] = ctl
        runtimes.append(LineRuntime(line, controller=ctl, publisher=publisher, hub=hub,
                                    frames_dir=data / "frames", registry=settings.model_registry))
    for ctl in controllers.values():
        with contextlib.suppress(Exception):  # refused (e.g. e-stop) is audited; the console shows why
            await ctl.start()

    deps = ApiDeps(
        database_url=db_url, lines=[ln.line for ln in lines], controllers=controllers, hub=hub,
        model_registry=settings.model_registry, frames_dir=data / "frames",
        training_dir=data / "feedback", admin_token=admin_token(settings),
        summarize=make_summarizer(db_url, lines[0].site, publisher.publish),
        extra_checks=lambda: {"broker": "ok" if publisher.connected else "disconnected",
                              **{k: v for rt in runtimes for k, v in rt.health().items()}},
    )
    app = create_app(deps)
    _EmbeddedServer = _embedded_server_class()
    server = _EmbeddedServer(uvicorn.Config(app, host=opts.host, port=opts.port, log_level="warning",
                                            lifespan="on"))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    until = time.monotonic() + opts.duration_s if opts.duration_s > 0 else None
    meters = [asyncio.create_task(_meter(line, rt, publisher, stop)) for line, rt in zip(lines, runtimes, strict=True)]
    if opts.auto_restart_s > 0:
        meters += [asyncio.create_task(_simulated_operator(rt, controllers[rt.cfg.line], opts.auto_restart_s, stop))
                   for rt in runtimes]
    api_task = asyncio.create_task(server.serve())
    line_tasks = [asyncio.create_task(rt.run(until)) for rt in runtimes]
    log.info("console on http://%s:%s  (admin token: %s)", opts.host, opts.port,
             "from LINEGUARD_ADMIN_TOKEN" if settings.admin_token else deps.admin_token)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([stopper, *line_tasks], return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        log.info("stopping on signal")
    for rt in runtimes:
        rt.stop()
    await asyncio.gather(*line_tasks, return_exceptions=True)
    stop.set()
    await asyncio.gather(*meters, return_exceptions=True)
    server.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(api_task, 10)
    for ctl in controllers.values():
        await ctl.close()
    await asyncio.to_thread(publisher.close)
    await asyncio.to_thread(audit.close)
    return {rt.cfg.line: LineRun(rt.inspected, list(rt.reject_latency_ms)) for rt in runtimes}


def _embedded_server_class() -> type:
    import uvicorn

    class EmbeddedServer(uvicorn.Server):
        """uvicorn without its own signal handlers: the demo owns SIGINT/SIGTERM and stops in order."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return EmbeddedServer


async def _simulated_operator(rt: Any, ctl: Any, after_s: float, stop: asyncio.Event) -> None:
    """Demo only: a line stopped for ``after_s`` seconds is started again, as an operator would after
    checking it. The start goes through the controller's interlocks and is audited like any other."""
    stopped_since: float | None = None
    while not stop.is_set():
        if rt.line_mode == "stopped":
            stopped_since = stopped_since or time.monotonic()
            if time.monotonic() - stopped_since >= after_s:
                log.info("%s: simulated operator restarts the line", rt.cfg.line)
                with contextlib.suppress(Exception):  # refused (e-stop, guard door): audited, try later
                    await ctl.start()
                stopped_since = None
        else:
            stopped_since = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def _meter(line: LineConfig, rt: Any, publisher: Any, stop: asyncio.Event, period_s: float = 1.0) -> None:
    """Publish the simulated energy meter and machine faults of one line over MQTT (JSON convention)."""
    from hardware.sim_meter import LineMeterSim

    sim = LineMeterSim(line.line, seed=hash(line.line) & 0xFFFF)
    base = f"{line.mqtt.prefix}/{line.site}/{line.line}"
    while not stop.is_set():
        ts = time.time()
        reading = sim.read(ts, running=rt.line_mode == "running")
        publisher.publish_json(f"{base}/energy/telemetry", {
            "ts": ts, "device": "meter1",
            "metrics": {"power_w": reading.power_w, "energy_kwh": reading.energy_kwh},
        })
        for f in sim.faults(ts, period_s):
            publisher.publish_json(f"{base}/{f.machine}/event", {
                "event_id": f.event_id, "ts": f.ts, "device": f.machine, "kind": "fault",
                "code": f.code, "duration_s": f.duration_s,
            })
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period_s)


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
