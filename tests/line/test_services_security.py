"""The embedded services are closed by default ("Nothing lost, nobody in"): PostgreSQL asks every
connection for a password, the broker takes no anonymous client, gives each role only its topics,
keeps devices off lineguard's client ids, and loses no acknowledged QoS 1 message when it crashes."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from line_agent.plant import child_env, infrastructure, redact
from line_agent.services import (
    BrokerUrl,
    EmbeddedBroker,
    EmbeddedPostgres,
    LineScope,
    ServiceError,
    _ensure_service_user,
    mosquitto_binary,
    postgres_bin_dir,
)
from line_agent.settings import Settings

needs_mosquitto = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto not installed")


# ---- PostgreSQL ----------------------------------------------------------------------------------
@pytest.fixture
def pg_dir() -> Iterator[Path]:
    # Outside pytest's basetemp (0700 parents the unprivileged server user could not traverse).
    d = Path(tempfile.mkdtemp(prefix="lineguard-test-pgsec-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _refused(url: str) -> str:
    with pytest.raises(psycopg.OperationalError) as exc:
        psycopg.connect(url, connect_timeout=5).close()
    return str(exc.value)


def test_postgres_asks_everyone_for_the_password(pg_dir: Path) -> None:
    with EmbeddedPostgres(pg_dir) as pg:
        u = urlsplit(pg.url)
        assert u.password and u.password == pg.password_file.read_text().strip()
        assert redact(pg.url) == f"postgresql://lineguard:***@127.0.0.1:{pg.port}/lineguard"
        st = pg.password_file.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600
        if os.geteuid() == 0:  # the server's own user must read it (initdb --pwfile)
            assert st.st_uid == pwd.getpwnam("lineguard").pw_uid
        assert "password" in _refused(f"postgresql://lineguard@127.0.0.1:{pg.port}/lineguard")
        _refused(f"postgresql://lineguard:wrong@127.0.0.1:{pg.port}/lineguard")
        # The unix socket too: no trust there either.
        _refused(f"postgresql://lineguard@/lineguard?host={pg_dir / 'sock'}&port={pg.port}")
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
            assert conn.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)
            rules = conn.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules").fetchall()
        assert rules == [("scram-sha-256",)]


def test_copy_to_program_needs_the_superuser_password(pg_dir: Path) -> None:
    """Today's attack: any local user connected as the superuser and ran a program. Without the password
    that is refused at login, and a role that is not superuser cannot run COPY ... TO PROGRAM."""
    with EmbeddedPostgres(pg_dir) as pg:
        marker = pg_dir / "pwned"
        copy = f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'"
        _refused(f"postgresql://lineguard@127.0.0.1:{pg.port}/lineguard")
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE ROLE other LOGIN PASSWORD 'other-pw'")
        other = f"postgresql://other:other-pw@127.0.0.1:{pg.port}/lineguard"
        with psycopg.connect(other, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(copy)
        assert not marker.exists()


def test_a_trust_cluster_of_an_older_install_is_migrated(pg_dir: Path) -> None:
    """A data directory made with --auth=trust keeps its data and asks for the password from then on."""
    bins = postgres_bin_dir()
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:
        pw = _ensure_service_user()
        run_as = {"user": pw.pw_uid, "group": pw.pw_gid}
        os.chown(pg_dir, pw.pw_uid, pw.pw_gid)
    pgdata = pg_dir / "pgdata"
    subprocess.run([str(bins / "initdb"), "-D", str(pgdata), "-U", "lineguard", "--auth=trust", "--no-sync"],
                   check=True, capture_output=True, timeout=120, **run_as)
    subprocess.run([str(bins / "postgres"), "--single", "-D", str(pgdata), "postgres"],
                   input=b"CREATE TABLE kept (v int); INSERT INTO kept VALUES (7);\n", check=True,
                   capture_output=True, timeout=120, **run_as)
    assert "trust" in (pgdata / "pg_hba.conf").read_text()
    with EmbeddedPostgres(pg_dir) as pg:
        _refused(f"postgresql://lineguard@127.0.0.1:{pg.port}/postgres")
        with psycopg.connect(pg.url.rsplit("/", 1)[0] + "/postgres") as conn:
            assert conn.execute("SELECT v FROM kept").fetchone() == (7,)
    rules = [ln.split() for ln in (pgdata / "pg_hba.conf").read_text().splitlines() if ln and ln[0] != "#"]
    assert rules and {r[-1] for r in rules} == {"scram-sha-256"}
    with EmbeddedPostgres(pg_dir) as pg, psycopg.connect(pg.url) as conn:  # and it starts again as is
        assert conn.execute("SELECT 1").fetchone() == (1,)


# ---- MQTT ----------------------------------------------------------------------------------------
class Client:
    """A small synchronous MQTT 5 client; ``connack`` is the broker's answer (0 = accepted)."""

    def __init__(self, url: str, client_id: str | None = None, *, clean_start: bool = True,
                 user: str | None = None, password: str | None = None) -> None:
        u = urlsplit(url)
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5)
        self.messages: list[tuple[str, bytes]] = []
        self.connack: int | None = None
        self.disconnects = 0
        self.cond = threading.Condition()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        name, pw = (user, password) if user is not None else (u.username, u.password)
        if name is not None:
            self.c.username_pw_set(name, pw)
        self.c.max_inflight_messages_set(100)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0 if clean_start else 3600
        self.c.connect(u.hostname or "127.0.0.1", u.port or 1883, keepalive=30, clean_start=clean_start,
                       properties=props)
        self.c.loop_start()
        with self.cond:
            self.cond.wait_for(lambda: self.connack is not None, 10)

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        with self.cond:
            self.connack = int(rc.value)
            self.cond.notify_all()

    def _on_disconnect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        with self.cond:
            self.disconnects += 1
            self.cond.notify_all()

    def _on_message(self, c: Any, u: Any, msg: Any) -> None:
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(topic, qos=1)
        assert done.wait(10), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes, timeout_s: float = 10) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(timeout_s)

    def wait(self, n: int, timeout_s: float = 10) -> list[tuple[str, bytes]]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.messages) >= n, timeout_s)
            return list(self.messages)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


LINES = [LineScope("plantA", "press", "lineguard", "pressgroup"), LineScope("plantA", "fill")]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(tmp_path / "broker", lines=LINES)
    b.start()
    yield b
    b.stop()


@needs_mosquitto
def test_broker_refuses_anonymous_and_wrong_passwords_on_both_listeners(broker: EmbeddedBroker) -> None:
    internal = f"mqtt://127.0.0.1:{broker.internal_port}"
    equipment = f"mqtt://127.0.0.1:{broker.port}"
    for url in (internal, equipment):
        c = Client(url)
        assert c.connack not in (None, 0), f"anonymous client accepted on {url}"
        c.close()
        c = Client(url, user="runtime", password="wrong")
        assert c.connack not in (None, 0), f"wrong password accepted on {url}"
        c.close()
    for role in ("runtime", "ingest", "operator"):
        c = Client(broker.url_for(role))
        assert c.connack == 0, role
        c.close()
    dev = Client(broker.device_url("press-device"))
    assert dev.connack == 0
    dev.close()
    # Each account on its own listener only: a device is not let in on lineguard's, nor the runtime on the devices'.
    d = urlsplit(broker.device_url("press-device"))
    c = Client(internal, user=d.username, password=d.password)
    assert c.connack not in (None, 0)
    c.close()
    r = urlsplit(broker.url_for("runtime"))
    c = Client(equipment, user=r.username, password=r.password)
    assert c.connack not in (None, 0)
    c.close()
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in broker.data_dir.iterdir() if "passwd" in p.name
             or p.name in ("accounts", "devices")}
    assert files == {"accounts": 0o600, "devices": 0o600, "internal.passwd": 0o600, "devices.passwd": 0o600}
    assert "allow_anonymous true" not in (broker.data_dir / "mosquitto.conf").read_text()


@needs_mosquitto
def test_each_role_gets_only_its_topics(broker: EmbeddedBroker) -> None:
    """The attack of the issue: fake inspections, 999,999 kWh and a day-long fault from a client that
    is not the runtime or the line's equipment; reading every topic. None of it reaches ingest now."""
    ingest = Client(broker.url_for("ingest"), "lineguard-ingest-0")
    ingest.subscribe("lineguard/#")
    ingest.subscribe("spBv1.0/#")
    snoops = {role: Client(url) for role, url in (("runtime", broker.url_for("runtime")),
                                                  ("device", broker.device_url("press-device")))}
    for s in snoops.values():
        s.subscribe("lineguard/#")
    runtime = Client(broker.url_for("runtime"))
    press = Client(broker.device_url("press-device"))
    fill = Client(broker.device_url("fill-device"))
    allowed = [
        (runtime, "lineguard/plantA/press/top/inspection", b"inspection"),
        (runtime, "lineguard/plantA/press/agent/summary", b"summary"),
        (runtime, "spBv1.0/pressgroup/DCMD/plc1/dev1", b"dcmd"),
        (press, "lineguard/plantA/press/meter/telemetry", b"energy"),
        (press, "lineguard/plantA/press/mill/event", b"fault"),
        (press, "spBv1.0/press/NDATA/node1", b"ndata"),
        (fill, "lineguard/plantA/fill/meter/telemetry", b"fill-energy"),
    ]
    forged = [
        (press, "lineguard/plantA/press/top/inspection", b"fake inspection"),
        (press, "lineguard/plantA/fill/meter/telemetry", b"999999 kWh on another line"),
        (press, "spBv1.0/pressgroup/DCMD/plc1/dev1", b"device commands the PLC"),
        (fill, "lineguard/plantA/press/mill/event", b"86400 s fault on another line"),
        (runtime, "lineguard/plantA/press/meter/telemetry", b"runtime fakes energy"),
        (runtime, "lineguard/plantB/other/top/inspection", b"runtime, a line it does not run"),
        (ingest, "lineguard/plantA/press/top/inspection", b"ingest publishes"),
    ]
    for c, t, p in forged + allowed:
        c.publish(t, p)
    got = ingest.wait(len(allowed))
    time.sleep(0.5)  # anything forged would have arrived by now
    assert sorted(p for _, p in ingest.messages) == sorted(p for _, _, p in allowed), got
    for role, s in snoops.items():
        assert s.messages == [], f"{role} read lineguard topics: {s.messages}"
    for c in [ingest, runtime, press, fill, *snoops.values()]:
        c.close()


@needs_mosquitto
def test_a_device_cannot_take_over_an_ingest_workers_session(broker: EmbeddedBroker) -> None:
    """Today a client reusing an ingest worker's client id kicked it off and its queue went with it."""
    worker = Client(broker.url_for("ingest"), "lineguard-ingest-0", clean_start=False)
    assert worker.connack == 0
    worker.subscribe("lineguard/#")
    press = Client(broker.device_url("press-device"))
    n = 200
    for i in range(n // 2):
        press.publish("lineguard/plantA/press/meter/telemetry", f"{i}".encode())
    # The device presents the worker's client id, with clean start, on its listener, again and again.
    for _ in range(3):
        thief = Client(broker.device_url("fill-device"), "lineguard-ingest-0")
        assert thief.connack == 0  # its own account: let in, but as client "fill-device"
        thief.publish("lineguard/plantA/fill/meter/telemetry", b"thief")
        thief.close()
    for i in range(n // 2, n):
        press.publish("lineguard/plantA/press/meter/telemetry", f"{i}".encode())
    msgs = worker.wait(n + 3)
    assert worker.disconnects == 0, "the ingest worker was disconnected"
    assert sorted(p for _, p in msgs if p != b"thief") == sorted(f"{i}".encode() for i in range(n))
    worker.close()
    press.close()


@needs_mosquitto
def test_acknowledged_messages_survive_a_broker_crash(tmp_path: Path) -> None:
    """Ingest down, its session queues; the broker is SIGKILLed right after the last PUBACK (no save on
    the way out) and restarted: the session still gets every acknowledged message."""
    b = EmbeddedBroker(tmp_path / "broker", lines=LINES)
    b.start()
    try:
        worker = Client(b.url_for("ingest"), "lineguard-ingest-0", clean_start=False)
        worker.subscribe("lineguard/#")
        worker.close()  # ingest down
        n = 2000
        runtime = Client(b.url_for("runtime"))
        infos = [runtime.c.publish("lineguard/plantA/press/top/inspection", f"{i}".encode(), qos=1) for i in range(n)]
        for info in infos:
            info.wait_for_publish(60)
        assert all(info.is_published() for info in infos)
        runtime.close()
        time.sleep(0.3)  # a crash 0.3 s after the last acknowledgement (the old config saved every 5 s)
        b.kill()
        b.start()  # same ports, same persistence file
        again = Client(b.url_for("ingest"), "lineguard-ingest-0", clean_start=False)
        msgs = again.wait(n, timeout_s=30)
        again.close()
        assert len(msgs) == n and sorted(int(p) for _, p in msgs) == list(range(n))
    finally:
        b.stop()


@needs_mosquitto
def test_device_accounts_file(tmp_path: Path) -> None:
    """One account per line on first start; a line added without a password gets one; names are checked."""
    d = tmp_path / "broker"
    with EmbeddedBroker(d, lines=LINES) as b:
        assert sorted(a.user for a in b.devices) == ["fill-device", "press-device"]
    text = (d / "devices").read_text()
    (d / "devices").write_text(text + "press-meter2 press\n")
    with EmbeddedBroker(d, lines=LINES) as b:
        meter2 = next(a for a in b.devices if a.user == "press-meter2")
        assert meter2.password and meter2.password in (d / "devices").read_text()
        c = Client(b.device_url("press-meter2"))
        assert c.connack == 0
        c.close()
    (d / "devices").write_text(text + "lineguard-ingest-0 press\n")
    with pytest.raises(ServiceError, match="lineguard"):
        EmbeddedBroker(d, lines=LINES).start()


def test_amqtt_fallback_never_serves_line_equipment(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="install Mosquitto"):
        EmbeddedBroker(tmp_path / "b", prefer="amqtt", host="0.0.0.0").start()


def test_plc_url_on_the_embedded_broker_logs_in_as_the_runtime() -> None:
    url = BrokerUrl("mqtt://runtime:pw@127.0.0.1:4000", ingest="mqtt://ingest:pw2@127.0.0.1:4000",
                    equipment=("0.0.0.0", 1883))
    assert url.plc_url("mqtt://127.0.0.1:1883/G/N/D") == "mqtt://runtime:pw@127.0.0.1:4000/G/N/D"
    assert url.plc_url("mqtt://localhost:1883/G/N") == "mqtt://runtime:pw@127.0.0.1:4000/G/N"
    assert url.plc_url("mqtt://u:p@127.0.0.1:1883/G/N") == "mqtt://u:p@127.0.0.1:1883/G/N"  # its own account
    assert url.plc_url("mqtt://10.99.0.1:1883/G/N") == "mqtt://10.99.0.1:1883/G/N"  # another broker
    assert BrokerUrl("mqtt://x@h:1").plc_url("mqtt://127.0.0.1:1/G/N") == "mqtt://127.0.0.1:1/G/N"


def test_child_env_hands_down_no_admin_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LINEGUARD_ADMIN_TOKEN", "secret-token")
    env = child_env("postgresql://a:b@h/db", "mqtt://ingest:pw@h:1", tmp_path)
    assert "LINEGUARD_ADMIN_TOKEN" not in env
    assert env["LINEGUARD_MQTT_URL"] == "mqtt://ingest:pw@h:1"


@needs_mosquitto
def test_infrastructure_gives_runtime_and_ingest_their_own_accounts(tmp_path: Path, fresh_db: str) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=fresh_db, mqtt_url=None)
    with infrastructure(settings) as (_, mqtt_url):
        assert isinstance(mqtt_url, BrokerUrl)
        assert urlsplit(mqtt_url).username == "runtime" and urlsplit(mqtt_url.ingest).username == "ingest"
        password = urlsplit(mqtt_url).password
        assert password and "***" in redact(mqtt_url) and password not in redact(mqtt_url)
        c = Client(mqtt_url.ingest, "lineguard-ingest-0")
        assert c.connack == 0
        c.close()
