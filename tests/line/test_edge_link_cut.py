"""The edge box loses the plant network: its link is cut, lineguard is restarted meanwhile, the link returns.

The edge box is a network namespace of its own (``ip netns``) joined to this host by a veth pair: inside it
run the PLC simulator, ``lineguard run`` with its embedded PostgreSQL and its ingest worker; the plant's
broker is a Mosquitto on this host, reached over the veth. Cutting the link (``ip link set ... down``)
leaves the line inspecting with no broker; every inspection made (each kept frame on disk) must be in the
store exactly once after the link is back. ``LINEGUARD_LINK_CUT_S`` sets the outage (20 s here; the slow
suite runs it for minutes).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from plant_support import TOKEN, Proc, line_yaml, wait_until, write_video

from line_agent.services import free_port, mosquitto_binary

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"),
    pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto not installed"),
]
CUT_S = float(os.environ.get("LINEGUARD_LINK_CUT_S", "150" if os.environ.get("LINEGUARD_SLOW") else "20"))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def edge() -> Iterator[tuple[str, str, str, str]]:
    """(namespace, host-side interface, host address, edge address): the edge box and its link."""
    tag = uuid.uuid4().hex[:6]
    ns, host_if, edge_if = f"lg-{tag}", f"lgh{tag}", f"lge{tag}"
    net = random.randint(1, 250)
    host_ip, edge_ip = f"10.77.{net}.1", f"10.77.{net}.2"  # addresses of this test's own namespace only
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", edge_if)
        _ip("link", "set", edge_if, "netns", ns)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        for args in (("addr", "add", f"{edge_ip}/30", "dev", edge_if), ("link", "set", edge_if, "up"),
                     ("link", "set", "lo", "up")):
            _ip("netns", "exec", ns, "ip", *args)
        yield ns, host_if, host_ip, edge_ip
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=30)


def _broker(tmp: Path, host_ip: str, port: int, log_dir: Path) -> Proc:
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} {host_ip}\nallow_anonymous true\npersistence true\n"
                    f"persistence_location {tmp}/\nautosave_interval 1\nautosave_on_changes true\n"
                    "max_queued_messages 1000000\nuser root\n")
    proc = Proc("plant-broker", [str(mosquitto_binary()), "-c", str(conf)], dict(os.environ), log_dir)
    wait_until(lambda: subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/{host_ip}/{port}"],
                                      capture_output=True).returncode == 0, 15, "the plant broker")
    return proc


def test_inspections_survive_a_cut_link_and_a_restart_on_the_edge(
    edge: tuple[str, str, str, str], tmp_path: Path
) -> None:
    ns, host_if, host_ip, edge_ip = edge
    logs = tmp_path / "logs"
    logs.mkdir()
    in_ns = ["ip", "netns", "exec", ns]
    mqtt_port = free_port()
    broker = _broker(tmp_path / "broker", host_ip, mqtt_port, logs)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")}
    plc = Proc("plc-sim", [*in_ns, sys.executable, "-m", "line_agent.cli", "plc-sim", "--protocol", "modbus",
                           "--port", "0"], env, logs)
    url = plc.wait_for_line("plc-sim:", 60).split()[-1]
    video = write_video(tmp_path / "camera.avi")
    cfg = line_yaml(tmp_path / "line.yaml", line="edge-1", driver="modbus", plc_url=url, video=video)
    cfg.write_text(cfg.read_text().split("control:")[0] + "control:\n  reject_gate: true\n  stop: null\n"
                   "save_frames: all\n")
    api_port = free_port()
    data = tmp_path / "data"
    run_env = {**env, "LINEGUARD_DATA_DIR": str(data), "LINEGUARD_MQTT_URL": f"mqtt://{host_ip}:{mqtt_port}",
               "LINEGUARD_ADMIN_TOKEN": TOKEN, "LINEGUARD_API_HOST": edge_ip}
    cmd = [*in_ns, sys.executable, "-m", "line_agent.cli", "run", "-c", str(cfg), "--port", str(api_port)]

    def start() -> Proc:
        proc = Proc("edge-run", cmd, run_env, logs)
        proc.wait_for_line("lineguard: console on", 120)
        return proc

    run = start()
    api = httpx.Client(base_url=f"http://{edge_ip}:{api_port}", headers={"Authorization": f"Bearer {TOKEN}"},
                       timeout=10)
    frames = data / "frames" / "edge-1"

    def made() -> set[str]:
        return {p.name.removesuffix("_test.png") for p in frames.rglob("*_test.png")}

    try:
        wait_until(lambda: api.get("/api/line/state", params={"line": "edge-1"}).json()["state"] == "stopped",
                   60, "the edge line's state")
        r = api.post("/api/commands/start", json={"confirm": True, "line": "edge-1", "reason": "link test"},
                     headers={"Idempotency-Key": uuid.uuid4().hex})
        assert r.status_code == 200, r.text
        wait_until(lambda: len(made()) >= 3, 30, "parts inspected with the link up")
        _ip("link", "set", host_if, "down")  # the plant network is gone
        cut_at = time.monotonic()
        n_cut = len(made())
        time.sleep(CUT_S / 2)
        assert len(made()) > n_cut, "the line stopped inspecting when the network went"
        assert run.stop() == 0, run.output()[-3000:]  # lineguard restarted in the middle of the outage
        run = start()
        time.sleep(max(0.0, CUT_S - (time.monotonic() - cut_at)))
        _ip("link", "set", host_if, "up")
        want = made()

        def stored() -> set[str]:
            ids: set[str] = set()
            offset = 0
            while True:
                page = api.get("/api/inspections", params={"line": "edge-1", "limit": 500, "offset": offset}).json()
                ids |= {i["inspection_id"] for i in page["items"]}
                offset += len(page["items"])
                if not page["items"] or offset >= page["total"]:
                    return ids

        wait_until(lambda: want <= stored(), 120, "every inspection in the edge store", every_s=1.0)
        got = stored()
        assert got == want, f"missing {len(want - got)}, unexpected {len(got - want)}"
        total = api.get("/api/inspections", params={"line": "edge-1", "limit": 1}).json()["total"]
        assert total == len(want)  # each exactly once
    finally:
        run.stop()
        plc.stop()
        broker.stop()
