"""Helpers for driving ``lineguard run`` as a plant would: independent device processes, a video camera.

Everything the line talks to here is its own process speaking the documented protocol: ``lineguard plc-sim``
for the PLC (Modbus TCP, OPC UA, or a Sparkplug B edge node on the broker), ``mosquitto_pub`` for the meter
(the JSON contract of docs/MQTT.md), a video file written with OpenCV for the camera. The tests read what
came out through the API and straight from PostgreSQL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import cv2
import httpx

from vision.synth import make_board

TOKEN = "plant-test-admin-token"


def write_video(path: Path, frames: int = 40, seed: int = 5) -> Path:
    """A video of a board with defects, and its clean golden template beside it (``<name>.template.png``).

    MJPG in AVI: OpenCV's own writer and reader agree on it everywhere (no external codec)."""
    board = make_board(seed, n_defects=(4, 6))
    h, w = board.template.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w, h), isColor=True)
    assert writer.isOpened(), "OpenCV cannot write MJPG video here"
    frame = cv2.cvtColor(board.image, cv2.COLOR_GRAY2BGR) if board.image.ndim == 2 else board.image
    for _ in range(frames):
        writer.write(frame)
    writer.release()
    cv2.imwrite(str(path.with_suffix(".template.png")), board.template)
    return path


def line_yaml(path: Path, *, line: str, driver: str, plc_url: str, video: Path, detector: Any = "template",
              stop_rule: dict[str, Any] | None = None) -> Path:
    import yaml

    cfg = {
        "site": "plantA",
        "line": line,
        "cameras": [{
            "name": "top",
            "source": f"file://{video}?live=1",
            "template": str(video.with_suffix(".template.png")),
            "detector": detector,
            "fps_limit": 5,
            "qa": {"rules": [{"classes": ["*"], "min_confidence": 0.1, "action": "reject"}],
                   "unknown_action": "reject"},
        }],
        "plc": {"driver": driver, "url": plc_url, "heartbeat_period_s": 0.2, "watchdog_s": 1.0},
        "control": {"reject_gate": True, "stop": stop_rule or {"count": 3, "within_parts": 5}},
        "save_frames": "rejects",
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


class Proc:
    """A child process we started, with its output in a file; stopped by PID."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._f = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._f, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_line(self, prefix: str, timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for ln in self.output().splitlines():
                if ln.startswith(prefix):
                    return ln
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.output()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no line starting {prefix!r} in {timeout_s}s:\n{self.output()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            # The whole session: lineguard run's children (ingest, embedded services) go with it.
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._f.close()
        return int(self.proc.returncode)


def base_env(data_dir: Path, db_url: str, mqtt_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")}
    env.update(LINEGUARD_DATA_DIR=str(data_dir), LINEGUARD_DATABASE_URL=db_url, LINEGUARD_MQTT_URL=mqtt_url,
               LINEGUARD_ADMIN_TOKEN=TOKEN, LINEGUARD_LOG_LEVEL="INFO", LINEGUARD_CAMERA_NO_FRAME_S="4")
    return env


def start_plc_sim(protocol: str, log_dir: Path, mqtt_url: str, *extra: str) -> tuple[Proc, str]:
    """``lineguard plc-sim --protocol X`` as its own process; returns it and the URL it printed."""
    cmd = [sys.executable, "-m", "line_agent.cli", "plc-sim", "--protocol", protocol, *extra]
    if protocol == "sparkplug":  # an edge node on the broker, under an id of its own
        cmd += ["--broker", mqtt_url, "--edge-node-id", f"plc-{uuid.uuid4().hex[:6]}"]
    else:
        cmd += ["--port", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")}
    proc = Proc(f"plc-sim-{protocol}", cmd, env, log_dir)
    line = proc.wait_for_line("plc-sim:", 60)
    assert " on " in line, line  # the banner, not an error
    return proc, line.split()[-1]


def start_run(config: Path, env: dict[str, str], log_dir: Path, port: int) -> Proc:
    proc = Proc("lineguard-run", [sys.executable, "-m", "line_agent.cli", "run", "-c", str(config),
                                  "--port", str(port)], env, log_dir)
    proc.wait_for_line("lineguard: console on", 90)
    return proc


class Api:
    def __init__(self, port: int, token: str = TOKEN) -> None:
        self.c = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                              timeout=10.0)

    def state(self, line: str) -> dict[str, Any]:
        r = self.c.get("/api/line/state", params={"line": line})
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def command(self, cmd: str, line: str, reason: str) -> httpx.Response:
        return self.c.post(f"/api/commands/{cmd}", json={"confirm": True, "line": line, "reason": reason},
                           headers={"Idempotency-Key": uuid.uuid4().hex})

    def ready(self) -> tuple[int, dict[str, Any]]:
        r = self.c.get("/readyz")
        return r.status_code, r.json()


def wait_until(pred: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


def publish_meter(mqtt_url: str, topic: str, points: list[dict[str, Any]]) -> None:
    """The meter: Mosquitto's own client publishing per docs/MQTT.md, one message per reading."""
    exe = shutil.which("mosquitto_pub")
    assert exe, "mosquitto_pub (Debian package mosquitto-clients) is needed"
    u = urlparse(mqtt_url)
    for p in points:
        subprocess.run([exe, "-h", u.hostname or "127.0.0.1", "-p", str(u.port or 1883), "-q", "1", "-V", "5",
                        "-i", f"meter-{uuid.uuid4().hex[:6]}", "-t", topic, "-m", json.dumps(p)],
                       check=True, timeout=10)


def meter_points(n: int, start: float) -> list[dict[str, Any]]:
    return [{"ts": start + 60.0 * i, "device": "meter1",
             "metrics": {"power_w": 1000.0 + i, "energy_kwh": 500.0 + i / 60.0}} for i in range(n)]

