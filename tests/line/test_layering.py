"""What ``lineguard run`` can reach: no simulator, no demo; the camera loop and ingest without the web layer."""

from __future__ import annotations

import json
import subprocess
import sys

from line_agent.live import LiveHub


def _imported(*modules: str) -> list[str]:
    code = ("import importlib, json, sys\n"
            f"for m in {list(modules)!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_run_path_imports_no_simulator() -> None:
    mods = _imported("line_agent.plant", "line_agent.runtime", "line_agent.checks", "hardware.drivers",
                     "line_agent.cli")
    sims = [m for m in mods if m.startswith(("hardware.sim_", "line_agent.demo", "line_agent.bench_lines"))]
    assert sims == []


def test_camera_loop_and_ingest_do_not_import_the_api() -> None:
    mods = _imported("line_agent.runtime", "line_agent.ingest.worker", "line_agent.ingest.decode_json")
    assert [m for m in mods if m.startswith("line_agent.api")] == []


def test_live_frames_of_two_lines_with_the_same_camera_name_stay_apart() -> None:
    hub = LiveHub()
    hub.publish("frame", {"line": "line1", "camera": "cam1", "jpeg": b"one", "inspection_id": "a"})
    hub.publish("frame", {"line": "line2", "camera": "cam1", "jpeg": b"two", "inspection_id": "b"})
    one, two = hub.latest_frame("cam1", "line1"), hub.latest_frame("cam1", "line2")
    assert one is not None and one.jpeg == b"one"
    assert two is not None and two.jpeg == b"two"
    assert hub.cameras() == ["line1/cam1", "line2/cam1"]
