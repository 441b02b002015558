"""``lineguard run`` as a plant runs it: independent PLC processes of each protocol, a video camera, a meter.

Each test starts ``lineguard plc-sim`` (its own process), writes a line YAML the way docs/PLANT.md says,
runs ``lineguard run`` as a subprocess against the session's PostgreSQL and Mosquitto, publishes meter
readings with Mosquitto's own ``mosquitto_pub``, and checks what the API, the PLC and the database say.
Nothing simulated may reach the store from ``run``; a stopped line must stay stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

import psycopg
import pytest
from plant_support import (
    Api,
    Proc,
    base_env,
    line_yaml,
    meter_points,
    publish_meter,
    start_plc_sim,
    start_run,
    wait_until,
    write_video,
)

from hardware.drivers import make_driver
from hardware.tags import TagMap
from line_agent.services import EmbeddedBroker, free_port, mosquitto_binary
from vision.detectors.load import MODELS_DIR

pytestmark = [
    pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto not installed"),
    pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto_pub (mosquitto-clients) missing"),
]


def _plc_running(protocol: str, url: str) -> bool:
    """Ask the PLC itself, over its own protocol, whether the conveyor runs (not through lineguard)."""

    async def read() -> bool:
        driver = make_driver(protocol, url, TagMap.load())  # a client id of its own (unique per driver)
        await driver.connect()
        if protocol == "sparkplug":
            await driver.wait_connected(10)  # type: ignore[attr-defined]
        try:
            return bool(await driver.read("running"))
        finally:
            await driver.close()

    return asyncio.run(read())


def _count(db: str, sql: str, *args: object) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute(sql, args).fetchone()
    return int(row[0]) if row else 0


def _settled(db: str, line: str, quiet_s: float = 2.0, timeout_s: float = 30.0) -> int:
    """The line's stored inspections once the count has not changed for ``quiet_s``."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        n = _count(db, "SELECT count(*) FROM inspections WHERE line=%s", line)
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return n
        time.sleep(0.2)
    raise AssertionError(f"inspections of {line} still changing after {timeout_s}s")


def _stays_stopped(api: Api, line: str, protocol: str, url: str, seconds: float) -> None:
    """For ``seconds``: the API and the PLC itself say stopped, and no part is inspected."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert api.state(line)["state"] == "stopped"
        time.sleep(1.0)
    assert not _plc_running(protocol, url)


@pytest.mark.parametrize("protocol", ["modbus", "opcua", "sparkplug"])
def test_run_drives_a_real_plc_and_never_restarts_the_line(
    protocol: str, tmp_path: Path, fresh_db: str, mqtt_url: str
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    line = f"press-{protocol}"
    plc, url = start_plc_sim(protocol, logs, mqtt_url)
    video = write_video(tmp_path / "camera.avi")
    # 5 rejects in a row stop the line: at 2 parts/s that leaves a person 2 s to stop it first.
    cfg = line_yaml(tmp_path / "line.yaml", line=line, driver=protocol, plc_url=url, video=video,
                    stop_rule={"count": 5, "within_parts": 5})
    text = cfg.read_text().replace("fps_limit: 5", "fps_limit: 2")
    cfg.write_text(text)
    port = free_port()
    env = base_env(tmp_path / "data", fresh_db, mqtt_url)
    run = start_run(cfg, env, logs, port)
    try:
        api = Api(port)
        # 1. lineguard does not start the line: it is stopped and stays so, and no part is inspected.
        wait_until(lambda: api.state(line)["state"] == "stopped", 30, "the line state from the PLC")
        time.sleep(2.0)
        assert api.state(line)["state"] == "stopped" and not _plc_running(protocol, url)
        assert _count(fresh_db, "SELECT count(*) FROM inspections WHERE line=%s", line) == 0

        # 2. The meter: an independent client, per docs/MQTT.md.
        points = meter_points(6, time.time() - 3600)
        publish_meter(mqtt_url, f"lineguard/plantA/{line}/meter/telemetry", points)

        # 3. A supervisor starts it, then stops it with a reason: it stays stopped.
        r = api.command("start", line, "shift start")
        assert r.status_code == 200, r.text
        r = api.command("stop", line, "do not restart")
        assert r.status_code == 200, r.text
        # The PLC reports its RUN state on its own cycle (Sparkplug: its next DDATA).
        st = wait_until(lambda: (s := api.state(line))["state"] == "stopped" and s, 10, "the stop at the PLC")
        assert st["cause"]["action"] == "stop" and st["cause"]["actor"].startswith("user:")
        assert st["cause"]["reason"] == "do not restart"
        _stays_stopped(api, line, protocol, url, 15.0)

        # 4. Started again, the burst rule stops it, with its reason in the line state and the audit.
        assert api.command("start", line, "after the check").status_code == 200
        st = wait_until(lambda: (s := api.state(line))["state"] == "stopped"
                        and (s.get("cause") or {}).get("actor") == f"runtime:{line}" and s, 60, "the rule stop")
        assert st["cause"]["reason"].startswith("stop rule: 5 rejects")
        inspected = _settled(fresh_db, line)  # the parts inspected up to the stop, once ingest stored them
        # 5. Within the next 15 s lineguard restarts: the line stays stopped throughout.
        t0 = time.monotonic()
        assert run.stop() == 0, run.output()[-3000:]
        assert not _plc_running(protocol, url)
        run = start_run(cfg, env, logs, port)
        api = Api(port)
        wait_until(lambda: api.state(line)["state"] != "unknown", 30, "the line state after the restart")
        _stays_stopped(api, line, protocol, url, max(3.0, 15.0 - (time.monotonic() - t0)))
        assert time.monotonic() - t0 >= 15.0
        # Nothing was inspected on the stopped line (the camera streams; its frames are not parts).
        wait_until(lambda: _count(fresh_db, "SELECT count(*) FROM inspections WHERE line=%s", line) >= inspected,
                   30, "ingest to store what was published")
        assert _count(fresh_db, "SELECT count(*) FROM inspections WHERE line=%s", line) == inspected
    finally:
        run.stop()
        plc.stop()

    # The store holds what the devices sent and nothing else: the meter's six readings, our inspections.
    with psycopg.connect(fresh_db) as conn:
        rows = conn.execute("SELECT device, metric, extract(epoch FROM ts)::float8, value FROM telemetry "
                            "WHERE line=%s ORDER BY ts, metric", (line,)).fetchall()
        want = sorted((p["device"], m, float(p["ts"]), float(v)) for p in points for m, v in p["metrics"].items())
        assert sorted((d, m, round(t, 3), v) for d, m, t, v in rows) == [(d, m, round(t, 3), v) for d, m, t, v in want]
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)  # no simulated machine faults
        sim_devices = conn.execute("SELECT count(*) FROM telemetry WHERE device IN "
                                   "('meter1-sim', 'reflow1', 'press1', 'pickplace1') OR line='line1'").fetchone()
        assert sim_devices == (0,)
        cams = conn.execute("SELECT DISTINCT camera, model FROM inspections").fetchall()
        assert cams == [("top", "template-diff")]
        # Audit: every start was a person's; the rule's stop names the rule and the line by its own name.
        starts = conn.execute("SELECT actor FROM audit_log WHERE action='plc.start' AND result='ok'").fetchall()
        assert len(starts) == 2 and all(a.startswith("user:") for (a,) in starts)
        stop = conn.execute("SELECT detail FROM audit_log WHERE action='plc.stop' AND actor=%s",
                            (f"runtime:{line}",)).fetchone()
        assert stop is not None and stop[0]["line"] == line and stop[0]["reason"].startswith("stop rule: 5 rejects")


def test_readiness_follows_each_fault_and_recovers(tmp_path: Path, fresh_db: str) -> None:
    """/readyz turns 503 with the reason for a missing model, a lost camera, a PLC down and the broker down,
    and back to 200 once each is back; the line is never started meanwhile."""
    logs = tmp_path / "logs"
    logs.mkdir()
    broker = EmbeddedBroker(tmp_path / "broker", port=free_port())
    broker.start()
    mqtt_url = broker.url
    plc, url = start_plc_sim("modbus", logs, mqtt_url)
    plc_port = int(url.rsplit(":", 1)[1])
    video = write_video(tmp_path / "camera.avi", frames=20)
    line = "fill-3"
    cfg = line_yaml(tmp_path / "line.yaml", line=line, driver="modbus", plc_url=url, video=video,
                    detector={"type": "hybrid", "model": "line-model"})
    port = free_port()
    data = tmp_path / "data"
    run = start_run(cfg, base_env(data, fresh_db, mqtt_url), logs, port)
    api = Api(port)

    def reason() -> str:
        code, body = api.ready()
        return "" if code == 200 else str(body.get("checks", {}).get("reason", body))

    try:
        # Model missing: not ready, naming it; copied into the registry, it is picked up.
        assert "model:fill-3/top: failed to load" in wait_until(reason, 30, "a missing-model 503")
        shipped = next(p for p in sorted((MODELS_DIR / "pcb-synth-hybrid").iterdir()) if p.is_dir())
        shutil.copytree(shipped, data / "models" / "line-model" / shipped.name)
        wait_until(lambda: api.ready()[0] == 200, 60, "ready once the model is there")

        # Camera gone: the video file disappears; the camera's frames stop; it comes back.
        hidden = video.with_suffix(".gone")
        video.rename(hidden)
        assert "camera:fill-3/top: no frame" in wait_until(reason, 60, "a camera 503")
        hidden.rename(video)
        wait_until(lambda: api.ready()[0] == 200, 90, "ready once the camera is back")

        # PLC down: killed; restarted on the same port.
        plc.stop()
        assert "plc:fill-3: PLC link" in wait_until(reason, 30, "a PLC 503")
        plc = start_plc_sim_on(plc_port, logs)
        wait_until(lambda: api.ready()[0] == 200, 60, "ready once the PLC is back")

        # Broker down: stopped; restarted on the same port.
        broker.stop()
        assert "broker unreachable" in wait_until(reason, 30, "a broker 503")
        broker.start()
        wait_until(lambda: api.ready()[0] == 200, 60, "ready once the broker is back")
        assert api.state(line)["state"] == "stopped"  # nobody started it; none of this did either
    finally:
        run.stop()
        plc.stop()
        broker.stop()


def start_plc_sim_on(port: int, logs: Path) -> Proc:
    """The Modbus simulator again on a given port (a PLC that rebooted)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")}
    proc = Proc("plc-sim-again", [sys.executable, "-m", "line_agent.cli", "plc-sim", "--protocol", "modbus",
                                  "--port", str(port)], env, logs)
    proc.wait_for_line("plc-sim:", 60)
    return proc


def test_heartbeat_holds_while_the_api_takes_large_bodies_and_slow_clients(
    tmp_path: Path, fresh_db: str, mqtt_url: str
) -> None:
    """Four 100 MB bodies and 40 slow clients against the API of a running line: the PLC (watchdog 0.5 s)
    never loses the heartbeat, so the line keeps running (a safe state would have stopped it for good)."""
    import socket
    import threading

    import httpx
    import psutil

    logs = tmp_path / "logs"
    logs.mkdir()
    plc, url = start_plc_sim("modbus", logs, mqtt_url, "--watchdog-s", "0.5")
    video = write_video(tmp_path / "camera.avi")
    cfg = line_yaml(tmp_path / "line.yaml", line="load-1", driver="modbus", plc_url=url, video=video)
    text = cfg.read_text().replace("watchdog_s: 1.0", "watchdog_s: 0.5").replace("heartbeat_period_s: 0.2",
                                                                                 "heartbeat_period_s: 0.1")
    cfg.write_text(text.split("control:")[0] + "control:\n  reject_gate: true\n  stop: null\n")
    port = free_port()
    run = start_run(cfg, base_env(tmp_path / "data", fresh_db, mqtt_url), logs, port)
    stop = threading.Event()
    try:
        api = Api(port)
        wait_until(lambda: api.state("load-1")["state"] == "stopped", 30, "the line state")
        assert api.command("start", "load-1", "load test").status_code == 200
        rss0 = psutil.Process(run.proc.pid).memory_info().rss

        def big_body() -> None:
            def chunks():  # type: ignore[no-untyped-def]
                block = b"x" * (1 << 20)
                for _ in range(100):
                    if stop.is_set():
                        return
                    yield block
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(f"http://127.0.0.1:{port}/api/login", content=chunks(),
                           headers={"Content-Type": "application/json"}, timeout=30)

        def slow_client() -> None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                for ch in b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{":
                    if stop.is_set():
                        return
                    s.sendall(bytes([ch]))
                    time.sleep(0.2)

        workers = [threading.Thread(target=big_body) for _ in range(4)]
        workers += [threading.Thread(target=slow_client) for _ in range(40)]
        for w in workers:
            w.start()
        end = time.monotonic() + 10
        while time.monotonic() < end:
            assert _plc_running("modbus", url), "the PLC left RUN: its heartbeat watchdog tripped"
            time.sleep(0.3)
        stop.set()
        for w in workers:
            w.join(30)
        grown = (psutil.Process(run.proc.pid).memory_info().rss - rss0) / 2**20
        assert grown < 150, f"lineguard grew {grown:.0f} MiB under large bodies"
        assert api.state("load-1")["state"] == "running"
    finally:
        stop.set()
        run.stop()
        plc.stop()
