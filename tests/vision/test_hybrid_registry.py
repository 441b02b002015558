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


def test_line_config_loads_it_by_registry_name(trained: tuple[Path, Path]) -> None:
    from vision.detectors.factory import build_detector, parse_detector

    _, reg = trained
    for spec in ("hybrid:hyb", f"hybrid:{resolve(reg, 'hyb').path}", {"type": "hybrid", "model": "hyb@latest"}):
        assert isinstance(build_detector(parse_detector(spec), registry=reg), HybridDetector), spec
    # type onnx is a whole-frame YOLO export: a hybrid's model.onnx scores crops, so it is refused, naming the type.
    with pytest.raises(ValueError, match=r"is a hybrid model .*use type: hybrid"):
        build_detector(parse_detector("onnx:hyb"), registry=reg)


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


def _heldout_map50(data: Path, reg: Path, ref: str) -> float:
    r = runner.invoke(build_app(), ["eval", "--data", str(data), "--format", "deeppcb", "--holdout-last", "4",
                                    "--model", ref, "--registry", str(reg)])
    assert r.exit_code == 0, r.output[-2000:]
    return float(json.loads(r.output)["map50"])


def test_fine_tune_starts_from_the_given_weights(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """`train --arch hybrid --weights <model dir>`: one epoch on four new boards keeps what the model knew; the
    same epoch from scratch does not (so the weights were really loaded)."""
    data, reg = trained
    few = tmp_path / "few"
    write_dataset(few, 4, seed=700, progress=False, scan_noise=0.15)
    base = resolve(reg, "hyb")
    common = ["train", "--arch", "hybrid", "--data", str(few), "--format", "deeppcb", "--epochs", "1",
              "--out", str(reg), "--threads", "2"]
    r = runner.invoke(build_app(), [*common, "--name", "hyb-ft", "--weights", str(base.path)])
    assert r.exit_code == 0, r.output[-3000:]
    ft = resolve(reg, "hyb-ft")
    assert ft.metrics()["fine_tuned_from"] == str(base.path / "weights.pt")
    assert ft.spec().extra["fine_tuned_from"] == str(base.path / "weights.pt")
    r = runner.invoke(build_app(), [*common, "--name", "hyb-scratch"])
    assert r.exit_code == 0, r.output[-3000:]
    m_base = _heldout_map50(data, reg, "hyb")
    m_ft = _heldout_map50(data, reg, "hyb-ft")
    m_scratch = _heldout_map50(data, reg, "hyb-scratch")
    assert m_ft >= m_base - 0.15, (m_base, m_ft, m_scratch)
    assert m_ft >= m_scratch + 0.2, (m_ft, m_scratch)


def test_fine_tune_refuses_unusable_weights(trained: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    from vision.train_hybrid import load_start

    data, reg = trained
    base = resolve(reg, "hyb").path
    args = ["train", "--arch", "hybrid", "--data", str(data), "--format", "deeppcb", "--epochs", "1",
            "--out", str(tmp_path / "reg"), "--weights"]
    r = runner.invoke(build_app(), [*args, str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "weights file not found" in r.output
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(base / "weights.pt", bare / "weights.pt")
    r = runner.invoke(build_app(), [*args, str(bare / "weights.pt")])
    assert r.exit_code == 2 and f"has no {META_FILE}" in r.output
    shutil.copy(base / META_FILE, bare / META_FILE)
    (bare / "weights.pt").write_bytes(b"not a state dict")
    r = runner.invoke(build_app(), [*args, str(bare)])
    assert r.exit_code == 2 and "is not a hybrid stage-2 network" in r.output
    with pytest.raises(ValueError, match="scratch"):
        load_start(base, ("open", "scratch"))


def test_bench_adapt_learning_curve(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, reg = trained
    plot, md = tmp_path / "curve.png", tmp_path / "adapt.md"
    args = ["bench", "adapt", "--data", str(data), "--format", "deeppcb", "--design", "group90000", "--model", "hyb",
            "--registry", str(reg), "--eval-last", "3", "--epochs", "1", "--threads", "2"]
    r = runner.invoke(build_app(), [*args, "--counts", "0,2", "--seeds", "0,1", "--plot", str(plot),
                                    "--markdown", str(md)])
    assert r.exit_code == 0, r.output[-3000:]
    res = json.loads(r.stdout)
    assert [(c["boards"], c["runs"]) for c in res["curve"]] == [(0, 1), (2, 2)]
    assert res["boards"] == 24 and res["eval_boards"] == 3
    runs = res["runs"]
    assert len(runs) == 3 and runs[0]["train_seconds"] == 0.0 and all(p["train_seconds"] > 0 for p in runs[1:])
    assert plot.is_file() and plot.stat().st_size > 10_000
    table = md.read_text()
    assert "lineguard bench adapt" in table and "| 2 | 2 |" in table
    r = runner.invoke(build_app(), [*args, "--counts", "0,99"])
    assert r.exit_code == 2 and "outside 0..21" in r.output
    r = runner.invoke(build_app(), [*args, "--design", "no-such-design"])
    assert r.exit_code == 2 and "no samples of design" in r.output


def test_fine_tune_the_shipped_model_by_name(tmp_path: Path) -> None:
    """The shipped hybrid carries its weights, so a line can adapt it: `--weights pcb-synth-hybrid`."""
    data = tmp_path / "boards"
    write_dataset(data, 3, seed=810, progress=False)
    r = runner.invoke(build_app(), ["train", "--arch", "hybrid", "--data", str(data), "--format", "deeppcb",
                                    "--epochs", "1", "--out", str(tmp_path / "reg"), "--name", "mine",
                                    "--weights", "pcb-synth-hybrid"])
    assert r.exit_code == 0, r.output[-3000:]
    m = resolve(tmp_path / "reg", "mine").metrics()
    assert m["fine_tuned_from"].endswith("vision/models/pcb-synth-hybrid/v2/weights.pt")


def test_training_without_torch_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The edge box installs the runtime only; `train` there must say what is missing, not raise ImportError.
    import sys

    data = tmp_path / "boards"
    write_dataset(data, 2, seed=820, progress=False)
    monkeypatch.setitem(sys.modules, "torch", None)
    r = runner.invoke(build_app(), ["train", "--arch", "hybrid", "--data", str(data), "--format", "deeppcb",
                                    "--out", str(tmp_path / "reg")])
    assert r.exit_code == 2 and "lineguard[train]" in r.output, r.output[-2000:]
