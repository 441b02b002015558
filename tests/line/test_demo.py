"""``lineguard demo`` end to end: real PostgreSQL, Mosquitto, Modbus PLC simulator, ingest, API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from line_agent.services import free_port, mosquitto_binary

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto not installed")


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")}
    env["LINEGUARD_DATA_DIR"] = str(data_dir)
    env["LINEGUARD_ADMIN_TOKEN"] = "test-admin-token"
    return env


def _report(stdout: str) -> dict:  # type: ignore[type-arg]
    line = next(ln for ln in stdout.splitlines() if ln.startswith("REPORT "))
    return json.loads(line[len("REPORT "):])  # type: ignore[no-any-return]


def test_demo_runs_for_a_duration_and_reports_from_postgres(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "line_agent.cli", "demo", "--duration", "20", "--port", str(port)],
        env=_env(tmp_path / "data"), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = _report(proc.stdout)
    (line,) = rep["lines"]
    assert line["parts"] > 0 and line["telemetry_rows"] > 0
    assert line["parts"] == line["published"]  # every inspection published was stored
    # The template detector on synthetic boards finds injected defects: a real, non-trivial score.
    assert line["recall"] > 0.8 and line["precision"] > 0.8
    assert rep["errors"] == []
    _meter_publishes_as_a_device(tmp_path / "data", line["line"])


def _meter_publishes_as_a_device(data: Path, line: str) -> None:
    """The demo's simulated meter used the line's device account: the runtime's account may not publish
    telemetry (so the rows above came through the device's), and the device's may not publish an inspection."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from line_agent.config import demo_line_config
    from line_agent.mqtt import parse_mqtt_url
    from line_agent.services import EmbeddedBroker, LineScope

    acl = (data / "broker" / "acl").read_text()
    runtime_rules = acl.split("\nuser runtime\n", 1)[1].split("\nuser ", 1)[0]
    assert "/inspection" in runtime_rules and "telemetry" not in runtime_rules and "event" not in runtime_rules
    device_rules = acl.split(f"\nuser {line}-device\n", 1)[1].split("\nuser ", 1)[0]
    assert f"topic write lineguard/demo/{line}/+/telemetry" in device_rules and "inspection" not in device_rules
    # The demo's broker again, from its data dir (same accounts, same ACL): the meter's account tries both.
    with EmbeddedBroker(data / "broker", lines=[LineScope.of(demo_line_config(1))]) as broker:
        got: list[str] = []
        subscribed = threading.Event()

        def client(url: str, cid: str) -> mqtt.Client:
            host, port, user, password, _tls = parse_mqtt_url(url)
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
            c.username_pw_set(user, password)
            c.connect(host, port)
            c.loop_start()
            return c

        spy = client(broker.url, "spy")
        spy.on_message = lambda c, u, m: got.append(m.topic)
        spy.on_subscribe = lambda *a: subscribed.set()
        spy.subscribe("lineguard/#", qos=1)
        assert subscribed.wait(10)
        meter = client(broker.device_url(f"{line}-device"), f"{line}-device")
        base = f"lineguard/demo/{line}"
        fake = meter.publish(f"{base}/cam1/inspection", b'{"inspection_id": "x"}', qos=1)
        real = meter.publish(f"{base}/energy/telemetry", b'{"ts": 1790000000, "metrics": {"power_w": 1}}', qos=1)
        fake.wait_for_publish(10)
        real.wait_for_publish(10)
        deadline = time.monotonic() + 10
        while f"{base}/energy/telemetry" not in got and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        for c in (meter, spy):
            c.disconnect()
            c.loop_stop()
    assert got == [f"{base}/energy/telemetry"]  # the inspection was refused by the ACL


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _cmdline(p: psutil.Process) -> str:
    """A child's command line; "" for one that is gone or a zombie (a start-up helper such as initdb that has
    exited and not yet been reaped: psutil refuses its cmdline)."""
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:  # gone since it was listed
        return ""


def _alive(children: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running and not zombies (a process may vanish between two psutil calls)."""
    out = []
    for c in children:
        try:
            if c.is_running() and c.status() != psutil.STATUS_ZOMBIE:
                out.append(c)
        except psutil.NoSuchProcess:
            pass
    return out


def test_sigint_stops_every_child_and_keeps_the_data(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "line_agent.cli", "demo", "--port", str(port)],
        env=_env(data), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        parts = 0
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/inspections",
                              headers={"Authorization": "Bearer test-admin-token"}, timeout=2)
                if r.status_code == 200:
                    parts = int(r.json().get("total", 0))
                    if parts >= 3:
                        break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert parts >= 3, "the demo never stored inspections"
        children = _descendants(proc.pid)
        names = {_name(c) for c in children}
        assert {"postgres", "mosquitto"} <= names, names
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, out[-3000:]
        time.sleep(1)
        alive = _alive(children)
        assert alive == [], [_cmdline(c) for c in alive]
        assert "REPORT " in out
    finally:
        if proc.poll() is None:
            proc.kill()
    # Restart on the same data directory: the stored parts are still there.
    proc2 = subprocess.run(
        [sys.executable, "-m", "line_agent.cli", "demo", "--duration", "3", "--port", str(free_port())],
        env=_env(data), capture_output=True, text=True, timeout=240,
    )
    assert proc2.returncode == 0, proc2.stdout[-3000:]
    import psycopg

    from line_agent.services import EmbeddedPostgres

    with EmbeddedPostgres(data / "postgres") as pg, psycopg.connect(pg.url) as conn:
        row = conn.execute("SELECT count(*) FROM inspections").fetchone()
    assert row is not None and row[0] >= parts


def test_sigkill_of_the_demo_leaves_no_orphans(tmp_path: Path) -> None:
    """Even a SIGKILL (no clean-up code runs) must not leave the database, broker, PLC or ingest behind."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "line_agent.cli", "demo", "--port", str(port)],
        env=_env(tmp_path / "data"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        names: set[str] = set()
        while time.monotonic() < deadline:
            children = _descendants(proc.pid)
            names = {_cmdline(c) for c in children}
            if any("hardware.sim_plc" in n for n in names) and any(" ingest" in n for n in names):
                break
            time.sleep(0.5)
        children = _descendants(proc.pid)
        assert len(children) >= 4, names
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 30
    alive: list[psutil.Process] = children
    while time.monotonic() < deadline:
        alive = _alive(children)
        if not alive:
            break
        time.sleep(0.5)
    assert alive == [], [_cmdline(c) for c in alive]
