"""Store and forward at the edge: what the runtime publishes while the broker is away arrives, once, in order.

Against a real Mosquitto that is stopped and started; the outbox file outlives the process that wrote it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from plant_support import Api, base_env, line_yaml, start_plc_sim, start_run, wait_until, write_video

from line_agent.mqtt import Publisher, parse_mqtt_url
from line_agent.outbox import Outbox
from line_agent.services import EmbeddedBroker, free_port, mosquitto_binary

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto not installed")


class Subscriber:
    def __init__(self, url: str, topic: str) -> None:
        host, port, user, password, _tls = parse_mqtt_url(url)
        self.got: list[int] = []
        self.ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{time.monotonic_ns()}",
                             protocol=mqtt.MQTTv5)
        if user:
            self.c.username_pw_set(user, password)
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.on_message = lambda c, u, m: self.got.append(json.loads(m.payload)["n"])
        self.c.connect(host, port)
        self.c.loop_start()
        assert self.ready.wait(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_outbox_keeps_messages_across_a_restart_and_sends_them_in_order(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path / "broker", port=free_port())
    broker.start()  # once, for its accounts and ports; then it is away
    url = broker.url
    broker.stop()
    path = tmp_path / "outbox.sqlite"
    # The broker is away: 300 messages go to disk, then the process "restarts" (a new outbox on the file).
    pub = Publisher(url, "edge-1", outbox=Outbox(path))
    for n in range(300):
        pub.publish("lineguard/s/l/inspection/inspection", json.dumps({"n": n}))
    pub.close(flush_timeout_s=0.5)
    assert Outbox(path).pending == 300
    broker.start()
    try:
        sub = Subscriber(url, "lineguard/#")
        pub = Publisher(url, "edge-2", outbox=Outbox(path))
        for n in range(300, 350):  # new ones after the old ones
            pub.publish("lineguard/s/l/inspection/inspection", json.dumps({"n": n}))
        wait_until(lambda: len(sub.got) >= 350, 30, "every message at the subscriber")
        assert pub.outbox is not None and pub.outbox.drain(10)
        pub.close()
        time.sleep(0.3)
        sub.close()
    finally:
        broker.stop()
    assert sub.got == list(range(350))  # all, once, in order
    assert Outbox(path).pending == 0


def test_a_full_outbox_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_bytes=1 << 20)
    for n in range(300):
        box.put("t", b"x" * 10_000 + str(n).encode())
    assert box.dropped > 0 and box.pending + box.dropped == 300
    assert box._bytes <= 1 << 20
    oldest = box._db.execute("SELECT payload FROM outbox ORDER BY id LIMIT 1").fetchone()[0]
    assert int(bytes(oldest)[10_000:]) == box.dropped  # the oldest went first
    box.close()


def test_inspections_made_during_a_broker_outage_and_a_restart_arrive_once(tmp_path: Path, fresh_db: str) -> None:
    """The line runs, the broker goes away, lineguard is restarted during the outage, the broker returns:
    every part inspected (each kept frame on disk) is in the store exactly once."""
    logs = tmp_path / "logs"
    logs.mkdir()
    broker = EmbeddedBroker(tmp_path / "broker", port=free_port())
    broker.start()
    plc, url = start_plc_sim("modbus", logs, broker.url)
    video = write_video(tmp_path / "camera.avi")
    cfg = line_yaml(tmp_path / "line.yaml", line="out-1", driver="modbus", plc_url=url, video=video)
    text = cfg.read_text().split("control:")[0]
    cfg.write_text(text + "control:\n  reject_gate: true\n  stop: null\nsave_frames: all\n")
    port = free_port()
    data = tmp_path / "data"
    env = base_env(data, fresh_db, broker.url)
    run = start_run(cfg, env, logs, port)
    try:
        api = Api(port)
        wait_until(lambda: api.state("out-1")["state"] == "stopped", 30, "the line state")
        assert api.command("start", "out-1", "outage test").status_code == 200
        frames = data / "frames" / "out-1"
        wait_until(lambda: len(list(frames.rglob("*_test.png"))) >= 3, 30, "parts inspected")
        broker.stop()
        n_before = len(list(frames.rglob("*_test.png")))
        wait_until(lambda: len(list(frames.rglob("*_test.png"))) >= n_before + 5, 30, "parts during the outage")
        assert run.stop() == 0, run.output()[-3000:]  # restarted while the broker is still away
        run = start_run(cfg, env, logs, port)
        time.sleep(2.0)
        broker.start()
        made = {p.name.removesuffix("_test.png") for p in frames.rglob("*_test.png")}

        def stored() -> set[str]:
            with psycopg.connect(fresh_db) as conn:
                return {r[0] for r in conn.execute("SELECT inspection_id FROM inspections WHERE line='out-1'")}

        wait_until(lambda: made <= stored(), 60, "every inspection in the store")
        with psycopg.connect(fresh_db) as conn:
            rows = conn.execute("SELECT count(*), count(DISTINCT inspection_id) FROM inspections").fetchone()
        assert rows is not None and rows[0] == rows[1] == len(stored())
        assert stored() == made  # nothing that was not inspected, nothing missing
    finally:
        run.stop()
        plc.stop()
        broker.stop()


@pytest.mark.parametrize("replay_s", [0.0, 3.0], ids=["no-replay", "replay"])
def test_messages_the_broker_acknowledged_but_lost_in_a_crash_are_sent_again(tmp_path: Path, replay_s: float) -> None:
    """Mosquitto acknowledges, then saves: a SIGKILL in between loses acknowledged messages. The broker here
    saves only at a clean stop, so the crash loses every one of them; the outbox sends them again."""
    import os
    import signal
    import subprocess

    port = free_port()
    data = tmp_path / "broker"
    data.mkdir()
    conf = data / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                    f"persistence_location {data}/\nautosave_interval 3600\nuser root\n")

    def broker() -> subprocess.Popen[bytes]:
        p = subprocess.Popen([str(mosquitto_binary()), "-c", str(conf)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        wait_until(lambda: subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"],
                                          capture_output=True).returncode == 0, 15, "the broker")
        return p

    url = f"mqtt://127.0.0.1:{port}"
    b = broker()
    # A consumer's persistent session (as ingest keeps one), saved by a clean restart, then offline.
    got: list[int] = []
    host = "127.0.0.1"

    def consumer() -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="consumer-1", protocol=mqtt.MQTTv5)
        props = mqtt.Properties(mqtt.PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        subscribed = threading.Event()
        c.on_connect = lambda c, u, f, rc, p=None: c.subscribe("lineguard/#", qos=1)
        c.on_subscribe = lambda *a: subscribed.set()
        c.on_message = lambda c, u, m: got.append(json.loads(m.payload)["n"])
        c.connect(host, port, clean_start=False, properties=props)
        c.loop_start()
        assert subscribed.wait(10)
        return c

    c = consumer()
    c.disconnect()
    c.loop_stop()
    b.send_signal(signal.SIGTERM)
    b.wait(10)
    b = broker()
    pub = Publisher(url, "edge-crash", outbox=Outbox(tmp_path / "o.sqlite", retention_s=replay_s))
    try:
        assert pub.wait_connected(10)
        for n in range(50):
            pub.publish("lineguard/s/l/inspection/inspection", json.dumps({"n": n}))
        assert pub.outbox is not None
        wait_until(lambda: pub.outbox is not None and pub.outbox.pending == 0, 10, "every message acknowledged")
        os.kill(b.pid, signal.SIGKILL)  # acknowledged, never saved
        b.wait(10)
        time.sleep(0.5)
        b = broker()
        wait_until(pub.is_connected, 15, "the publisher back")
        time.sleep(1.0)
        c = consumer()
        if replay_s:
            wait_until(lambda: set(got) >= set(range(50)), 15, "the acknowledged messages at the consumer")
        else:
            time.sleep(2.0)
        c.disconnect()
        c.loop_stop()
    finally:
        pub.close(flush_timeout_s=1.0)
        b.kill()
        b.wait(10)
    if replay_s:
        assert sorted(set(got)) == list(range(50)) and pub.outbox is not None
    else:  # the control: without the replay the crash lost them (what this test guards against)
        assert got == []


def test_acknowledged_messages_stay_for_the_retention_window_and_a_restart_sends_them_again(
        tmp_path: Path, mqtt_url: str) -> None:
    """Post-acknowledgement retention on disk: a process that dies within the window (with its broker, one
    power cut) leaves the acknowledged messages in the file, and the next start sends them again. A clean
    close stays until the window has passed, then nothing is left to repeat."""
    path = tmp_path / "o.sqlite"
    sub = Subscriber(mqtt_url, "lineguard/s/retain/#")
    pub = Publisher(mqtt_url, f"edge-ret-{time.monotonic_ns()}", outbox=Outbox(path, retention_s=30.0))
    try:
        for n in range(20):
            pub.publish("lineguard/s/retain/inspection/inspection", json.dumps({"n": n}))
        assert pub.flush(10)
        assert pub.outbox.pending == 0 and pub.outbox.retained == 20  # acknowledged, kept
        # The process dies now: its file as it leaves it (a consistent copy; the live one stays in use).
        left = tmp_path / "left-behind.sqlite"
        with sqlite3.connect(path) as src, sqlite3.connect(left) as dst:
            src.backup(dst)
        again = Outbox(left, retention_s=30.0)  # the next start on that file
        assert again.pending == 20 and again.replayed == 20  # the acknowledged ones go again
        again.close()
    finally:
        pub.outbox.retention_s = 0.5  # the clean close below waits out the window, not 30 s
        t0 = time.monotonic()
        pub.close(flush_timeout_s=10)
        lingered = time.monotonic() - t0
    wait_until(lambda: len(sub.got) >= 20, 10, "the messages at the subscriber")
    sub.close()
    assert sorted(set(sub.got)) == list(range(20))
    assert 0.3 < lingered < 8.0  # stayed for the (shortened) window after the last acknowledgement
    box = Outbox(path, retention_s=0.5)
    assert box.pending == 0 and box.retained == 0  # a clean close leaves nothing to repeat
    box.close()
