"""End-to-end training: synthetic boards -> lineguard train -> registry -> ONNX detector -> eval JSON.

Needs torch + ultralytics (the [train] extra); skipped cleanly on the edge install. One tiny run
(16 boards, imgsz 160, 1 epoch, ~30 s on 2 cores) is shared by every test in this module.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

# find_spec, not importorskip: importing ultralytics here, before vision.train.configure_ultralytics
# has pointed it at var/yolo, would make it write settings into the user's home.
if importlib.util.find_spec("torch") is None or importlib.util.find_spec("ultralytics") is None:
    pytest.skip("training tests need torch + ultralytics (pip install 'lineguard[train]')", allow_module_level=True)

from typer.testing import CliRunner

from vision.cli import build_app
from vision.registry import REQUIRED_FILES, resolve
from vision.synth import make_board, write_dataset
from vision.types import DEFECT_CLASSES, Frame

runner = CliRunner()



@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train")
    data = root / "synth"
    write_dataset(data, 16, seed=100, progress=False)
    reg = root / "registry"
    args = ["train", "--data", str(data), "--format", "deeppcb", "--epochs", "1", "--imgsz", "160",
            "--batch", "8", "--holdout-last", "4", "--out", str(reg), "--name", "tiny",
            "--cache-dir", str(root / "cache")]
    r = runner.invoke(build_app(), args)
    assert r.exit_code == 0, r.output[-3000:]
    return data, reg


def test_registry_entry_is_complete(trained: tuple[Path, Path]) -> None:
    _, reg = trained
    e = resolve(reg, "tiny")
    assert e.version == "v1"
    for f in (*REQUIRED_FILES, "weights.pt", "metrics.json"):
        assert (e.path / f).is_file(), f
    spec = e.spec()
    assert spec.size == 160 and spec.stacking == "diff" and spec.class_names == DEFECT_CLASSES
    assert "lineguard train" in (e.path / "train_command").read_text()
    assert len((e.path / "data_hash").read_text().strip()) == 64
    m = e.metrics()
    assert m["train_samples"] == 12 and m["heldout_samples"] == 4 and m["epochs_run"] == 1
    for k in ("map50", "map50_95", "precision", "recall", "f1", "latency_ms"):
        assert k in m["heldout"], k


def test_onnx_detector_runs_and_matches_torch(trained: tuple[Path, Path]) -> None:
    from vision.detectors.factory import OnnxDetectorConfig, YoloDetectorConfig, build_detector

    _, reg = trained
    b = make_board(77)
    f = Frame(camera="c", seq=0, ts=0.0, image=b.image, template=b.template)
    onnx = build_detector(OnnxDetectorConfig(model="tiny", conf=0.0005, unknown_pass=False), reg)
    torch_det = build_detector(YoloDetectorConfig(model="tiny", conf=0.0005), reg)
    a, t = onnx.detect(f), torch_det.detect(f)
    assert onnx.name == "onnx:tiny-v1"
    # An untrained model still scores anchors: the exported graph must agree with PyTorch on them.
    assert a and t
    top_a = max(a, key=lambda d: d.confidence)
    top_t = max(t, key=lambda d: d.confidence)
    assert top_a.confidence == pytest.approx(top_t.confidence, abs=2e-3)
    assert np.allclose([top_a.box.x1, top_a.box.y1, top_a.box.x2, top_a.box.y2],
                       [top_t.box.x1, top_t.box.y1, top_t.box.x2, top_t.box.y2], atol=1.0)


def test_eval_json_on_trained_model(trained: tuple[Path, Path]) -> None:
    data, reg = trained
    r = runner.invoke(build_app(), ["eval", "--data", str(data), "--format", "deeppcb", "--model", "tiny",
                               "--registry", str(reg), "--holdout-last", "4"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["detector"] == "onnx:tiny-v1" and res["images"] == 4
    for k in ("map50", "map50_95", "ap50", "per_class", "precision", "recall", "f1", "latency_ms"):
        assert k in res


def test_second_version_and_cache_reuse(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, reg = trained
    w = resolve(reg, "tiny").weights_path
    assert w is not None
    # Fine-tune from the local weights: a new version, never a download.
    args = ["train", "--data", str(data), "--format", "deeppcb", "--epochs", "1", "--imgsz", "160",
            "--batch", "8", "--out", str(reg), "--name", "tiny", "--weights", str(w),
            "--cache-dir", str(tmp_path / "cache")]
    r = runner.invoke(build_app(), args)
    assert r.exit_code == 0, r.output[-3000:]
    e = resolve(reg, "tiny")
    assert e.version == "v2"
    assert e.metrics()["heldout"] is None  # no hold-out asked for: said so, not faked
