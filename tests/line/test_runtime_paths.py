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


def test_a_sample_of_passed_parts_is_kept_beside_every_reject(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from line_agent.config import demo_line_config
    from line_agent.contracts import Verdict
    from line_agent.runtime import LineRuntime
    from vision.types import Frame

    cfg = demo_line_config().model_copy(update={"save_frames": "rejects", "save_pass_every": 20})
    rt = LineRuntime(cfg, controller=None, publisher=None, hub=LiveHub(), frames_dir=tmp_path)  # type: ignore[arg-type]
    frame = Frame("cam1", 0, 0.0, np.zeros((8, 8), np.uint8))
    kept = [rt._encode_and_save(frame, "cam1", f"p{i}", 1.8e9, Verdict.PASS)[0] for i in range(60)]
    assert sum(kept) == 3 and kept[19] and kept[39] and kept[59]
    assert rt._encode_and_save(frame, "cam1", "r1", 1.8e9, Verdict.REJECT)[0]
    assert len(list(tmp_path.rglob("*_test.png"))) == 4
