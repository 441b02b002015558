"""The one assembly point: a running plant (one or more lines) built from typed configuration.

``lineguard run`` and ``lineguard demo`` both come through ``PlantApp``. From each ``LineConfig`` it
builds the PLC driver that ``plc.driver`` names (hardware.drivers' table), the ``LineController``
(heartbeat, interlocks, audit), the ``LineRuntime`` (cameras, detectors from the factory, QA, line
actions), and for all lines one publisher, one audit writer, one live hub and the API/console.

Nothing here imports a simulator. The demo starts its simulators itself and hands ``PlantApp`` extra
tasks (its simulated meter and operator); ``run`` hands none, so what reaches the store on a real line is
only what its devices and cameras produced. The line is never started here: the heartbeat runs, the
line stays as the PLC has it, and only a person (the control API) starts it.

Process tree of ``lineguard run``, every child started and stopped by PID, in reverse order on exit:

    lineguard run            line runtimes + API/console (asyncio, this process)
    ├── postgres             embedded, unless LINEGUARD_DATABASE_URL is set
    ├── mosquitto (or amqtt) embedded on LINEGUARD_MQTT_LISTEN, unless LINEGUARD_MQTT_URL is set
    └── lineguard ingest     MQTT -> PostgreSQL worker(s)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from line_agent.config import LineConfig
from line_agent.services import EmbeddedBroker, EmbeddedPostgres, ServiceError, die_with_parent
from line_agent.settings import Settings
from line_agent.store.migrate import migrate

if TYPE_CHECKING:
    from datetime import datetime

    from hardware.isolated import IsolatedController
    from line_agent.runtime import LineRuntime
    from vision.config import CameraConfig
    from vision.detectors.base import Detector

log = logging.getLogger(__name__)

#: A task the demo adds beside the lines (simulated meter, simulated operator): gets the app and the stop event.
ExtraTask = Callable[["PlantApp", asyncio.Event], Coroutine[Any, Any, None]]


def redact(url: str) -> str:
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
def infrastructure(settings: Settings, *, broker_listen: tuple[str, int] | None = None,
                   lines: Sequence[LineConfig] = ()) -> Iterator[tuple[str, str]]:
    """The database and broker URLs: the configured ones, else embedded servers in data_dir.

    ``broker_listen``: where an embedded broker listens for line equipment (``run``: LINEGUARD_MQTT_LISTEN);
    None picks a free loopback port (the demo, the tests). ``lines``: the line configs the broker's ACL
    grants topics for (none: any line), and the lines that get a device account (``<line>-device``).

    The MQTT URL yielded is the runtime's (a ``BrokerUrl``: ``.ingest`` is the ingest workers' URL,
    LINEGUARD_INGEST_MQTT_URL or the same one for a broker of your own; ``.device_for(line)`` a device
    account of the embedded broker, for the demo's simulated devices). Both URLs carry passwords:
    hand them to children through the environment and print them only through ``redact``."""
    data = settings.data_dir.resolve()
    pg = broker = None
    try:
        db_url = settings.database_url
        if db_url is None:
            pg = EmbeddedPostgres(data / "postgres")
            db_url = pg.start()
        mqtt_url: str
        if settings.mqtt_url is None:
            from line_agent.services import BrokerUrl, LineScope, mosquitto_binary

            host, port = broker_listen or ("127.0.0.1", 0)
            if broker_listen is not None and mosquitto_binary() is None:
                raise ServiceError("`lineguard run` needs Mosquitto for its embedded broker (apt-get install "
                                   "mosquitto), or LINEGUARD_MQTT_URL: the amqtt fallback has no accounts (demo only)")
            broker = EmbeddedBroker(data / "broker", port=port, host=host, lines=[LineScope.of(ln) for ln in lines],
                                    autosave_changes=settings.mqtt_autosave_changes)
            broker.start()
            devices = ({"*": broker.device_url()} if broker.kind == "amqtt"
                       else {d.line: broker.device_url(d.user) for d in reversed(broker.devices)})
            mqtt_url = BrokerUrl(broker.url_for("runtime"), ingest=broker.url_for("ingest"),
                                 equipment=(host, broker.port), devices=devices)
            if broker_listen is not None:
                print(f"lineguard: MQTT broker for line equipment on mqtt://{host}:{broker.port} "
                      f"(device accounts: {broker.devices_file})", flush=True)
        else:
            from line_agent.services import BrokerUrl

            mqtt_url = BrokerUrl(settings.mqtt_url, ingest=settings.ingest_mqtt_url)
        migrate(db_url)
        yield db_url, mqtt_url
    finally:
        if broker is not None:
            broker.stop()
        if pg is not None:
            pg.stop()


def admin_token(settings: Settings) -> str:
    """LINEGUARD_ADMIN_TOKEN, else a token generated once and kept in ``<data_dir>/admin_token`` (mode 0600).

    The API stores only its hash; the token itself is never printed or logged, only where to read it."""
    if settings.admin_token:
        return settings.admin_token
    path = admin_token_path(settings)
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    token = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token


def admin_token_path(settings: Settings) -> Path:
    return settings.data_dir.resolve() / "admin_token"


def make_summarizer(db_url: str, site: str, publish: Callable[[str, bytes], Any]) -> Callable[..., Any]:
    """The API's on-demand summary: the line agent over this store, results also published on MQTT.

    The backend comes from LINEGUARD_LLM_BACKEND; unset, the template narrator (no model, offline).
    """

    def summarize(*, line: str, start: datetime, end: datetime, lang: str) -> Any:
        from line_agent.agent import summarize as agent_summarize

        return agent_summarize(db_url, line, start=start, end=end, lang=lang, publish=publish, site=site)

    return summarize


#: Secrets of the runtime that a child (ingest) has no use for: not handed down.
_CHILD_ENV_DROP = ("LINEGUARD_ADMIN_TOKEN", "LINEGUARD_INGEST_MQTT_URL")


def child_env(db_url: str, mqtt_url: str, data_dir: Path) -> dict[str, str]:
    """A child's environment: ours without the runtime's own secrets, and its database and broker URLs
    (with their passwords: the environment, unlike the command line, is not visible to other users)."""
    env = {k: v for k, v in os.environ.items() if k not in _CHILD_ENV_DROP}
    return {**env, "LINEGUARD_DATABASE_URL": db_url, "LINEGUARD_MQTT_URL": mqtt_url,
            "LINEGUARD_DATA_DIR": str(data_dir)}


def start_ingest(workers: int, db_url: str, mqtt_url: str, data_dir: Path, timeout_s: float = 60.0,
                 *, required: bool = True) -> ChildProcess:
    """Start ``lineguard ingest`` and wait until every worker has subscribed.

    Until then a message would reach no one (a shared subscription that does not exist yet queues
    nothing), so the line must not start publishing before. ``required=False`` (``run``): a broker that
    is away does not keep the line from starting; the workers' sessions persist in the broker once made,
    and what the runtime publishes meanwhile waits in its outbox.
    """
    run_dir = data_dir / "run"
    for old in run_dir.glob("*.subscribed") if run_dir.exists() else []:
        old.unlink()
    cmd = [sys.executable, "-m", "line_agent.cli", "ingest", "--workers", str(workers)]
    # The ingest workers' own broker account where ``infrastructure`` gave one (``BrokerUrl.ingest``).
    ingest_url = str(getattr(mqtt_url, "ingest", None) or mqtt_url)
    child = ChildProcess("ingest", cmd, child_env(db_url, ingest_url, data_dir), data_dir / "logs" / "ingest.log")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise ServiceError(f"ingest exited with code {child.proc.returncode} (see {data_dir}/logs)")
        if run_dir.exists() and len(list(run_dir.glob("*.subscribed"))) >= workers:
            return child
        time.sleep(0.1)
    if not required:
        log.warning("ingest workers have not subscribed within %.0f s (broker unreachable?); going on: "
                    "the runtime's outbox keeps what it publishes (see %s/logs)", timeout_s, data_dir)
        return child
    child.stop()
    raise ServiceError(f"ingest workers did not subscribe within {timeout_s:.0f}s (see {data_dir}/logs)")


@dataclass
class LineRun:
    """What one line's runtime counted itself: inspections published, reject gate write latencies (ms)."""

    published: int
    reject_latency_ms: list[float]


def build_controller(line: LineConfig, on_audit: Any = None) -> IsolatedController:
    """The line's controller over the driver its ``plc.driver`` names (modbus, opcua, sparkplug), on a thread
    and event loop of its own: the heartbeat must not wait on the API, the cameras or a slow client."""
    from hardware.drivers import make_driver
    from hardware.isolated import IsolatedController
    from hardware.safety import LineController
    from hardware.tags import TagMap

    if line.plc.url is None:
        raise ServiceError(f"line {line.line}: plc.url is required")
    driver = make_driver(line.plc.driver, line.plc.url, TagMap.load(line.plc.tags))
    ctl = LineController(driver, heartbeat_period_s=line.plc.heartbeat_period_s, plc_watchdog_s=line.plc.watchdog_s,
                         on_audit=on_audit, actor=f"runtime:{line.line}", line=line.line)
    return IsolatedController(ctl, name=line.line)


class PlantApp:
    """Every line of one process, assembled from typed configuration, and the API serving them."""

    def __init__(
        self,
        settings: Settings,
        lines: Sequence[LineConfig],
        db_url: str,
        mqtt_url: str,
        *,
        host: str | None = None,
        port: int | None = None,
        extra_tasks: Sequence[ExtraTask] = (),
        detector_factory: Callable[[CameraConfig], Detector] | None = None,
    ) -> None:
        if not lines:
            raise ValueError("a plant needs at least one line")
        names = [ln.line for ln in lines]
        if len(set(names)) != len(names):
            raise ValueError(f"line names must be unique: {names}")
        self.settings = settings
        self.lines = list(lines)
        self.db_url = db_url
        self.mqtt_url = mqtt_url
        self.host = host or settings.api_host
        self.port = settings.api_port if port is None else port
        self.extra_tasks = list(extra_tasks)
        self.detector_factory = detector_factory
        self.data = settings.data_dir.resolve()
        self.runtimes: dict[str, LineRuntime] = {}
        self.controllers: dict[str, IsolatedController] = {}
        self.publisher: Any = None
        self.stop_event = asyncio.Event()

    def checks(self) -> dict[str, str]:
        """Readiness beyond the database: the broker, and each line's PLC link, cameras and models."""
        out: dict[str, str] = {}
        pub = self.publisher
        out["broker"] = "ok" if pub is not None and pub.is_connected() else \
            f"broker unreachable ({redact(self.mqtt_url)})"
        for rt in self.runtimes.values():
            out.update(rt.health())
        return out

    def line_status(self, line: str) -> dict[str, Any] | None:
        rt = self.runtimes.get(line)
        return None if rt is None else rt.status()

    def stop(self) -> None:
        self.stop_event.set()

    async def run(self, duration_s: float = 0.0) -> dict[str, LineRun]:
        """Run the lines and the API until a signal, ``stop()``, or ``duration_s`` (0: no limit)."""
        import uvicorn

        from line_agent.api.app import create_app
        from line_agent.api.deps import ApiDeps
        from line_agent.audit import AuditWriter
        from line_agent.live import LiveHub
        from line_agent.mqtt import Publisher
        from line_agent.outbox import Outbox
        from line_agent.runtime import LineRuntime

        stop = self.stop_event
        hub = LiveHub()
        audit = AuditWriter(self.db_url)
        # Everything the runtime publishes goes through the disk outbox: nothing is lost while the
        # broker or the plant network is away, or when lineguard restarts meanwhile; what the broker
        # acknowledged is kept for the broker's save period (ack_retention_s) in case it crashes before saving.
        outbox = Outbox(self.data / "outbox" / "runtime.sqlite", max_bytes=self.settings.outbox_max_bytes,
                        retention_s=self.settings.ack_retention_s)
        self.publisher = publisher = Publisher(self.mqtt_url, client_id=f"lineguard-runtime-{os.getpid()}",
                                               outbox=outbox)
        for line in self.lines:
            ctl = build_controller(line, on_audit=audit.hook(line.line))
            # The heartbeat only: the line stays as the PLC has it (stopped after a restart of lineguard).
            await ctl.start_background()
            self.controllers[line.line] = ctl
            self.runtimes[line.line] = LineRuntime(
                line, controller=ctl, publisher=publisher, hub=hub, frames_dir=self.data / "frames",
                registry=self.settings.registry_dir, audit=audit, detector_factory=self.detector_factory,
                no_frame_s=self.settings.camera_no_frame_s,
            )
        token = admin_token(self.settings)
        deps = ApiDeps(
            database_url=self.db_url, lines=[ln.line for ln in self.lines], controllers=self.controllers, hub=hub,
            model_registry=self.settings.registry_dir, frames_dir=self.data / "frames",
            training_dir=self.data / "feedback", admin_token=token,
            summarize=make_summarizer(self.db_url, self.lines[0].site, publisher.publish),
            extra_checks=self.checks, line_status=self.line_status,
            calendars={ln.line: (ln.shifts, ln.timezone) for ln in self.lines},
            max_body_bytes=self.settings.api_max_body_bytes, auth_fail_burst=self.settings.api_auth_fail_burst,
            auth_fail_window_s=self.settings.api_auth_fail_window_s,
            sparkplug_stale_after_s=self.settings.sparkplug_stale_s,
            dead_letter_quota_bytes=self.settings.dead_letter_quota_bytes,
        )
        server = _embedded_server_class()(uvicorn.Config(create_app(deps), host=self.host, port=self.port,
                                                         log_level="warning", lifespan="on"))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        until = time.monotonic() + duration_s if duration_s > 0 else None
        extras = [asyncio.create_task(task(self, stop)) for task in self.extra_tasks]
        api_task = asyncio.create_task(server.serve())
        line_tasks = [asyncio.create_task(rt.run(until)) for rt in self.runtimes.values()]
        where = "LINEGUARD_ADMIN_TOKEN" if self.settings.admin_token else str(admin_token_path(self.settings))
        print(f"lineguard: console on http://{self.host}:{self.port} (admin token: {where})", flush=True)
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([stopper, *line_tasks], return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            log.info("stopping on signal")
        for rt in self.runtimes.values():
            rt.stop()
        await asyncio.gather(*line_tasks, return_exceptions=True)
        stop.set()
        stopper.cancel()
        await asyncio.gather(*extras, return_exceptions=True)
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(api_task, 10)
        for ctl in self.controllers.values():
            await ctl.close()
        await asyncio.to_thread(publisher.close)
        await asyncio.to_thread(audit.close)
        return {name: LineRun(rt.inspected, list(rt.reject_latency_ms)) for name, rt in self.runtimes.items()}


def _embedded_server_class() -> type:
    import uvicorn

    class EmbeddedServer(uvicorn.Server):
        """uvicorn without its own signal handlers: the plant owns SIGINT/SIGTERM and stops in order."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return EmbeddedServer


def run_plant(settings: Settings, lines: Sequence[LineConfig], ingest_workers: int = 1) -> None:
    """``lineguard run``: the configured lines until SIGINT/SIGTERM, on the configured or embedded services."""
    missing = [ln.line for ln in lines if ln.plc.url is None]
    if missing:
        raise ServiceError(f"plc.url is required for `lineguard run` (line {', '.join(missing)})")
    data = settings.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    with infrastructure(settings, broker_listen=settings.listen, lines=lines) \
            as (db_url, mqtt_url), contextlib.ExitStack() as children:
        plc_url = getattr(mqtt_url, "plc_url", None)
        for ln in lines:  # a sparkplug PLC on the embedded broker: the driver logs in as the runtime
            if ln.plc.driver == "sparkplug" and ln.plc.url is not None and plc_url is not None:
                ln.plc.url = plc_url(ln.plc.url)
        ingest = start_ingest(ingest_workers, db_url, mqtt_url, data, timeout_s=15.0, required=False)
        children.callback(ingest.stop)
        asyncio.run(PlantApp(settings, lines, db_url, mqtt_url).run())
