"""Mosquitto configs: start the real broker with a test copy of each config (paths and ports
rewritten to a temporary folder), then exercise what the config promises over real MQTT 5:
TLS with the dev CA, password auth, ACLs, shared subscriptions and persistent QoS 1 sessions."""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from infra_common import INFRA, require_tool
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from line_agent.services import free_port, wait_for_port

MOSQ = INFRA / "mosquitto"
PASSWORDS = {"lineguard": "lg-test-pw", "ingest": "ingest-test-pw", "health": "health-test-pw",
             "device": "device-test-pw"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tool("openssl", "apt-get install openssl")
    out = tmp_path_factory.mktemp("certs")
    res = subprocess.run(
        ["bash", str(MOSQ / "gen-dev-certs.sh"), "--out", str(out), "--client", "edge1", "edge.example"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return out


@dataclass
class Broker:
    conf: Path
    plain_port: int
    tls_port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None)

    def start(self) -> None:
        logf = self.log.open("ab")
        self.proc = subprocess.Popen(
            [require_tool("mosquitto", "apt-get install mosquitto"), "-c", str(self.conf)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logf.close()
        for port in (self.plain_port, self.tls_port):
            try:
                wait_for_port("127.0.0.1", port, 10, self.proc)
            except Exception as exc:
                self.stop()
                raise AssertionError(f"mosquitto did not start: {exc}\n{self.log.read_text()[-2000:]}") from exc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # by PID: saves the persistence DB on SIGTERM
            self.proc.wait(10)
        self.proc = None


def config_copy(conf_name: str, tmp: Path, certs: Path) -> Broker:
    """The shipped config with only container paths and ports replaced."""
    data = tmp / "data"
    data.mkdir()
    passwd = tmp / "passwd"
    passwd.touch(mode=0o600)
    for user, pw in PASSWORDS.items():
        subprocess.run(
            [require_tool("mosquitto_passwd", "apt-get install mosquitto"), "-b", str(passwd), user, pw],
            check=True,
            capture_output=True,
        )
    plain, tls = free_port(), free_port()
    text = (MOSQ / conf_name).read_text()
    replacements = {
        "/mosquitto/auth/passwd": str(passwd),
        "/mosquitto/config/acl": str(MOSQ / "acl"),
        "/mosquitto/data/": f"{data}/",
        "/mosquitto/certs/": f"{certs}/",
    }
    for old, new in replacements.items():
        assert old in text, f"{conf_name} no longer uses {old}"
        text = text.replace(old, new)
    text, n1 = re.subn(r"^listener 1883$", f"listener {plain} 127.0.0.1", text, flags=re.M)
    text, n2 = re.subn(r"^listener 8883$", f"listener {tls} 127.0.0.1", text, flags=re.M)
    assert (n1, n2) == (1, 1), "expected one plain (1883) and one TLS (8883) listener"
    if os.geteuid() == 0:
        text += "\nuser root\n"  # test only: otherwise mosquitto drops to a user that cannot read tmp
    conf = tmp / "mosquitto.conf"
    conf.write_text(text)
    return Broker(conf, plain, tls, tmp / "broker.log")


@pytest.fixture(params=["edge.conf", "plant.conf"])
def broker(request: pytest.FixtureRequest, tmp_path: Path, certs: Path) -> Iterator[Broker]:
    b = config_copy(request.param, tmp_path, certs)
    b.start()
    yield b
    b.stop()


class Client:
    """Small synchronous wrapper over paho (1.x and 2.x) speaking MQTT 5."""

    def __init__(
        self,
        broker: Broker,
        user: str | None,
        password: str | None,
        *,
        tls: bool,
        certs: Path,
        client_id: str | None = None,
        clean_start: bool = True,
    ) -> None:
        kwargs: dict[str, Any] = {}
        if hasattr(mqtt, "CallbackAPIVersion"):
            kwargs["callback_api_version"] = mqtt.CallbackAPIVersion.VERSION2
        self.c = mqtt.Client(client_id=client_id or f"t-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5, **kwargs)
        self.messages: list[tuple[str, bytes]] = []
        self.connack: int | None = None
        self.subacks: dict[int, list[int]] = {}
        self.cond = threading.Condition()
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        if user is not None:
            self.c.username_pw_set(user, password)
        if tls:
            self.c.tls_set(ca_certs=str(certs / "ca.crt"), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0 if clean_start else 3600
        self.c.connect(
            "127.0.0.1",
            broker.tls_port if tls else broker.plain_port,
            keepalive=30,
            clean_start=clean_start,
            properties=props,
        )
        self.c.loop_start()
        with self.cond:
            self.cond.wait_for(lambda: self.connack is not None, 10)

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        with self.cond:
            self.connack = int(rc.value if hasattr(rc, "value") else rc)
            self.cond.notify_all()

    def _on_message(self, c: Any, u: Any, msg: Any) -> None:
        with self.cond:
            self.messages.append((msg.topic, msg.payload))
            self.cond.notify_all()

    def _on_subscribe(self, c: Any, u: Any, mid: int, codes: Any, props: Any = None) -> None:
        with self.cond:
            self.subacks[mid] = [int(getattr(x, "value", x)) for x in codes]
            self.cond.notify_all()

    def subscribe(self, topic: str) -> list[int]:
        _, mid = self.c.subscribe(topic, qos=1)
        assert mid is not None
        with self.cond:
            assert self.cond.wait_for(lambda: mid in self.subacks, 10), f"no SUBACK for {topic}"
            return self.subacks[mid]

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(10)

    def wait_messages(self, n: int, timeout: float = 5) -> list[tuple[str, bytes]]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_password_auth_over_tls_and_plain(broker: Broker, certs: Path) -> None:
    for tls in (True, False):
        ok = Client(broker, "lineguard", PASSWORDS["lineguard"], tls=tls, certs=certs)
        assert ok.connack == 0, f"valid login refused (tls={tls})"
        ok.close()
        anon = Client(broker, None, None, tls=tls, certs=certs)
        assert anon.connack not in (None, 0), "anonymous client accepted"
        anon.close()
        bad = Client(broker, "lineguard", "wrong", tls=tls, certs=certs)
        assert bad.connack not in (None, 0), "wrong password accepted"
        bad.close()


def test_tls_listener_presents_cert_for_localhost(broker: Broker, certs: Path) -> None:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    import socket

    with (
        socket.create_connection(("127.0.0.1", broker.tls_port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        assert s.version() in ("TLSv1.2", "TLSv1.3")


def test_acl_and_shared_subscription(broker: Broker, certs: Path) -> None:
    """Two ingest workers in $share/lineguard/... each get part of the stream; together all of it, once."""
    workers = [Client(broker, "ingest", PASSWORDS["ingest"], tls=False, certs=certs) for _ in range(2)]
    for w in workers:
        assert w.subscribe("$share/lineguard/lineguard/#") == [1]
    # ACL on read: mosquitto 2.0 grants the SUBACK but must never deliver data to the health user.
    snoop = Client(broker, "health", PASSWORDS["health"], tls=False, certs=certs)
    snoop.subscribe("lineguard/#")
    edge = Client(broker, "lineguard", PASSWORDS["lineguard"], tls=True, certs=certs)
    n = 40
    for i in range(n):
        edge.publish(f"lineguard/plantA/line-1/cam{i % 4}/inspection", str(i).encode())
    # ingest is read-only on data: its publish must not reach the subscribers; nor may the runtime
    # publish a device's telemetry.
    workers[1].publish("lineguard/plantA/line-1/cam0/inspection", b"forged")
    edge.publish("lineguard/plantA/line-1/meter/telemetry", b"forged")
    deadline = time.monotonic() + 10
    while sum(len(w.messages) for w in workers) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # anything extra (duplicates, the forged message) would arrive by now
    got = [p for w in workers for _, p in w.messages]
    assert sorted(got, key=int) == [str(i).encode() for i in range(n)]
    assert all(w.messages for w in workers), "shared subscription did not spread load over both workers"
    assert snoop.messages == [], "ACL let the health user read lineguard data"
    for c in [*workers, edge, snoop]:
        c.close()


def test_devices_publish_data_never_inspections(broker: Broker, certs: Path) -> None:
    """The issue's attack with a device account: fake inspections go nowhere; telemetry and events do."""
    ingest = Client(broker, "ingest", PASSWORDS["ingest"], tls=False, certs=certs)
    ingest.subscribe("lineguard/#")
    dev = Client(broker, "device", PASSWORDS["device"], tls=True, certs=certs)
    dev.publish("lineguard/plantA/line-1/top/inspection", b"fake inspection")
    dev.publish("lineguard/plantA/line-1/agent/summary", b"fake summary")
    dev.publish("lineguard/plantA/line-1/meter/telemetry", b"energy")
    dev.publish("lineguard/plantA/line-1/mill/event", b"fault")
    ingest.wait_messages(2)
    time.sleep(0.3)
    assert sorted(p for _, p in ingest.messages) == [b"energy", b"fault"]
    dev.subscribe("lineguard/#")
    dev.publish("lineguard/plantA/line-1/meter/telemetry", b"again")
    time.sleep(0.3)
    assert dev.messages == [], "a device read lineguard data"
    for c in (ingest, dev):
        c.close()


def test_edge_devices_cannot_take_over_a_client_id(tmp_path: Path, certs: Path) -> None:
    """edge.conf: on the devices' TLS listener the client id is the account name, so a device presenting
    an ingest worker's id neither disconnects the worker nor takes its session."""
    b = config_copy("edge.conf", tmp_path, certs)
    b.start()
    try:
        worker = Client(b, "ingest", PASSWORDS["ingest"], tls=False, certs=certs, client_id="lineguard-ingest-0")
        worker.subscribe("lineguard/#")
        thief = Client(b, "device", PASSWORDS["device"], tls=True, certs=certs, client_id="lineguard-ingest-0")
        assert thief.connack == 0
        thief.publish("lineguard/plantA/line-1/meter/telemetry", b"1")
        assert worker.wait_messages(1) == [("lineguard/plantA/line-1/meter/telemetry", b"1")]
        assert worker.c.is_connected()
        thief.close()
        worker.close()
    finally:
        b.stop()


def test_acl_matches_the_embedded_broker() -> None:
    """infra/mosquitto/acl grants what lineguard's embedded broker grants for any line (its runtime
    account is called lineguard here, as infra/compose and infra/k8s name it)."""
    from line_agent.services import DeviceAccount, broker_acl

    def rules(text: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        user = ""
        for line in text.splitlines():
            if line.startswith("user "):
                user = line.split()[1]
                out[user] = []
            elif line.startswith("topic ") and user:
                out[user].append(line)
        return out

    embedded = rules(broker_acl([], [DeviceAccount("device", "*", "")]))
    shipped = rules((MOSQ / "acl").read_text())
    assert shipped.pop("lineguard") == embedded.pop("runtime")
    embedded.pop("operator")
    shipped.pop("health")
    assert shipped == embedded


def test_broker_saves_on_every_change() -> None:
    for name in ("edge.conf", "plant.conf"):
        text = (MOSQ / name).read_text()
        assert re.search(r"^autosave_on_changes true$", text, re.M) and re.search(r"^autosave_interval 1$", text, re.M)
        assert not re.search(r"^allow_anonymous true", text, re.M)


def test_health_user_reads_uptime_only(broker: Broker, certs: Path) -> None:
    h = Client(broker, "health", PASSWORDS["health"], tls=False, certs=certs)
    assert h.subscribe("$SYS/broker/uptime") == [1]
    assert h.wait_messages(1, timeout=15), "no $SYS/broker/uptime (the compose healthcheck reads it)"
    h.close()


def test_persistent_session_survives_broker_restart(tmp_path: Path, certs: Path) -> None:
    """QoS 1 messages for an offline clean_start=false subscriber are queued, persisted on shutdown
    and delivered after the broker restarts."""
    b = config_copy("plant.conf", tmp_path, certs)
    b.start()
    try:
        sub = Client(b, "ingest", PASSWORDS["ingest"], tls=False, certs=certs, client_id="ingest-1", clean_start=False)
        assert sub.subscribe("lineguard/#") == [1]
        sub.close()
        pub = Client(b, "lineguard", PASSWORDS["lineguard"], tls=False, certs=certs)
        for i in range(25):
            pub.publish("lineguard/plantA/line-1/top/inspection", f"d{i}".encode())
        pub.close()
        b.stop()
        b.start()
        again = Client(
            b, "ingest", PASSWORDS["ingest"], tls=False, certs=certs, client_id="ingest-1", clean_start=False
        )
        msgs = again.wait_messages(25, timeout=10)
        again.close()
        assert [p for _, p in msgs] == [f"d{i}".encode() for i in range(25)]
    finally:
        b.stop()


def test_broker_rejects_an_unknown_option(tmp_path: Path, certs: Path) -> None:
    """The start check is meaningful: a broken config makes mosquitto exit."""
    b = config_copy("edge.conf", tmp_path, certs)
    b.conf.write_text(b.conf.read_text() + "\nmax_inflight_mesages 10\n")
    proc = subprocess.run(
        [require_tool("mosquitto", "apt"), "-c", str(b.conf)], capture_output=True, text=True, timeout=10
    )
    assert proc.returncode != 0


def test_acknowledged_messages_survive_a_broker_crash(tmp_path: Path, certs: Path) -> None:
    """plant.conf saves on every change: SIGKILL right after the last PUBACK loses nothing queued."""
    b = config_copy("plant.conf", tmp_path, certs)
    b.start()
    try:
        sub = Client(b, "ingest", PASSWORDS["ingest"], tls=False, certs=certs, client_id="ingest-1", clean_start=False)
        assert sub.subscribe("lineguard/#") == [1]
        sub.close()
        pub = Client(b, "lineguard", PASSWORDS["lineguard"], tls=False, certs=certs)
        for i in range(200):
            pub.publish("lineguard/plantA/line-1/top/inspection", f"d{i}".encode())
        pub.close()
        time.sleep(0.3)
        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGKILL)  # a crash: nothing saved on the way out
        b.proc.wait(10)
        b.proc = None
        b.start()
        again = Client(b, "ingest", PASSWORDS["ingest"], tls=False, certs=certs, client_id="ingest-1",
                       clean_start=False)
        msgs = again.wait_messages(200, timeout=10)
        again.close()
        assert [p for _, p in msgs] == [f"d{i}".encode() for i in range(200)]
    finally:
        b.stop()
