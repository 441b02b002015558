"""``lineguard train --arch hybrid`` end to end: synthetic boards -> registry version -> eval -> line runtime.

Needs torch (the [train] extra) for training; skipped cleanly without it. One small run (24 boards, 8
epochs, about half a minute on 2 cores) is shared by the module.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from vision.cli import build_app  # noqa: E402
from vision.detectors.hybrid import META_FILE, HybridDetector  # noqa: E402
from vision.registry import REQUIRED_FILES, resolve  # noqa: E402
from vision.synth import write_dataset  # noqa: E402

runner = CliRunner()



@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hybrid-train")
    data = root / "synth"
    write_dataset(data, 24, seed=300, progress=False, scan_noise=0.15)
    reg = root / "registry"
    args = ["train", "--arch", "hybrid", "--data", str(data), "--format", "deeppcb", "--epochs", "8",
            "--holdout-last", "4", "--out", str(reg), "--name", "hyb", "--threads", "2"]
    r = runner.invoke(build_app(), args)
    assert r.exit_code == 0, r.output[-3000:]
    return data, reg


def test_registry_version_is_complete_and_marked_hybrid(trained: tuple[Path, Path]) -> None:
    _, reg = trained
    e = resolve(reg, "hyb")
    for f in (*REQUIRED_FILES, META_FILE, "weights.pt", "metrics.json"):
        assert (e.path / f).is_file(), f
    assert e.spec().extra["arch"] == "hybrid"
    m = e.metrics()
    assert m["arch"] == "hybrid" and m["heldout_samples"] == 4 and m["train_crops"] > 100
    held = m["heldout"]
    assert held["prf_conf"] == 0.5
    # 20 noisy synthetic boards and 8 epochs: far from perfect, far above chance (1/6 same-class).
    assert held["agnostic"]["recall"] >= 0.7, held["agnostic"]
    assert held["map50"] >= 0.3, held["map50"]
    assert "--arch hybrid" in (e.path / "train_command").read_text()


def test_eval_runs_the_hybrid_at_its_operating_point(trained: tuple[Path, Path]) -> None:
    data, reg = trained
    r = runner.invoke(build_app(), ["eval", "--data", str(data), "--format", "deeppcb", "--holdout-last", "4",
                               "--model", "hyb", "--registry", str(reg)])
    assert r.exit_code == 0, r.output[-2000:]
    res = json.loads(r.output)
    assert res["detector"].startswith("hybrid:") and res["prf_conf"] == 0.5
    assert res["images"] == 4 and 0.0 <= res["map50"] <= 1.0


def test_line_runtime_loads_it_by_registry_name(trained: tuple[Path, Path]) -> None:
    from line_agent.runtime import load_detector

    _, reg = trained
    for spec in ("onnx:hyb", "hybrid:hyb", f"hybrid:{resolve(reg, 'hyb').path}"):
        assert isinstance(load_detector(spec, registry=reg), HybridDetector), spec


def test_hybrid_refuses_data_without_templates(tmp_path: Path) -> None:
    data = tmp_path / "synth"
    write_dataset(data, 4, seed=900, progress=False)
    gone = sorted(data.rglob("*_temp.png"))[1]
    gone.unlink()
    r = runner.invoke(build_app(), ["train", "--arch", "hybrid", "--data", str(data), "--format", "deeppcb",
                               "--out", str(tmp_path / "reg")])
    assert r.exit_code == 2
    assert "needs a golden template for every sample" in r.output and "--arch yolo" in r.output


def test_unknown_arch_is_refused(tmp_path: Path) -> None:
    r = runner.invoke(build_app(), ["train", "--arch", "rcnn", "--data", str(tmp_path), "--format", "deeppcb"])
    assert r.exit_code == 2 and "--arch must be one of yolo, hybrid" in r.output
