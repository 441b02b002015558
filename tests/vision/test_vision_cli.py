"""lineguard train / eval / bench vision: wiring, JSON output and clear errors on bad input.

Nothing here needs torch: bad input is rejected before training starts, eval and bench run the
shipped ONNX model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vision.cli import build_app
from vision.synth import write_dataset

runner = CliRunner()



@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("synth") / "ds"
    write_dataset(d, 6, seed=500, progress=False)
    return d


def test_commands_are_registered() -> None:
    app = build_app()
    for args in (["train", "--help"], ["eval", "--help"], ["bench", "vision", "--help"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, (args, r.output)


def test_train_missing_data_dir(tmp_path: Path) -> None:
    r = runner.invoke(build_app(), ["train", "--data", str(tmp_path / "nope"), "--format", "deeppcb"])
    assert r.exit_code == 2
    assert "data directory not found" in r.output and "nope" in r.output


def test_train_wrong_format(synth: Path) -> None:
    r = runner.invoke(build_app(), ["train", "--data", str(synth), "--format", "pascal"])
    assert r.exit_code == 2
    assert "unknown dataset format 'pascal'" in r.output and "deeppcb, yolo, voc, coco" in r.output


def test_train_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "junk.txt").write_text("this is not a list file\n")
    r = runner.invoke(build_app(), ["train", "--data", str(tmp_path), "--format", "deeppcb"])
    assert r.exit_code == 2
    assert "cannot load deeppcb dataset" in r.output


def test_train_empty_labels(tmp_path: Path) -> None:
    d = tmp_path / "good-only"
    write_dataset(d, 3, seed=1, n_defects=0, progress=False)  # good parts only: no labels at all
    r = runner.invoke(build_app(), ["train", "--data", str(d), "--format", "deeppcb", "--imgsz", "160",
                               "--out", str(tmp_path / "reg"), "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 2
    assert "carry no labels" in r.output
    assert not (tmp_path / "reg").exists()  # nothing published


def test_train_bad_imgsz_and_weights(synth: Path, tmp_path: Path) -> None:
    r = runner.invoke(build_app(), ["train", "--data", str(synth), "--format", "deeppcb", "--imgsz", "300"])
    assert r.exit_code == 2 and "multiple of 32" in r.output
    r = runner.invoke(build_app(), ["train", "--data", str(synth), "--format", "deeppcb",
                               "--weights", str(tmp_path / "x.pt")])
    assert r.exit_code == 2 and "weights file not found" in r.output
    r = runner.invoke(build_app(), ["train", "--data", str(synth), "--format", "deeppcb", "--holdout-last", "99"])
    assert r.exit_code == 2 and "cannot hold out 99 of 6" in r.output


def test_eval_prints_metrics_json(synth: Path) -> None:
    r = runner.invoke(build_app(), ["eval", "--data", str(synth), "--format", "deeppcb", "--model", "pcb-synth",
                               "--holdout-last", "4"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    for k in ("map50", "map50_95", "ap50", "ap50_95", "precision", "recall", "f1", "per_class", "latency_ms"):
        assert k in res, k
    assert res["images"] == 4
    assert set(res["latency_ms"]) >= {"p50", "p99"}
    assert res["latency_ms"]["p99"] >= res["latency_ms"]["p50"] > 0
    assert 0.0 <= res["map50"] <= 1.0
    for c in res["per_class"].values():
        assert set(c) >= {"precision", "recall", "f1"}


def test_eval_unknown_model(synth: Path, tmp_path: Path) -> None:
    r = runner.invoke(build_app(), ["eval", "--data", str(synth), "--format", "deeppcb", "--model", "no-such",
                               "--registry", str(tmp_path)])
    assert r.exit_code == 2 and "no-such" in r.output


def test_eval_hybrid_options_reach_the_detector(synth: Path) -> None:
    """The flags that replaced ``--model name?look=0``: a DetectorConfig built from them, recorded in the JSON."""
    r = runner.invoke(build_app(), ["eval", "--data", str(synth), "--format", "deeppcb", "--model", "pcb-synth-hybrid",
                               "--holdout-last", "2", "--tta", "1", "--no-second-look", "--threads", "1"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["kind"] == "hybrid" and res["prf_conf"] == 0.5
    assert res["config"] == {"type": "hybrid", "model": "pcb-synth-hybrid", "tta": 1, "settled": 0.95,
                             "second_look": False, "min_confidence": 0.001, "threads": 1, "unknown_pass": False}
    r = runner.invoke(build_app(), ["eval", "--data", str(synth), "--format", "deeppcb", "--model", "pcb-synth",
                               "--tta", "2"])
    assert r.exit_code == 2 and "tta apply to hybrid models only" in r.output
    r = runner.invoke(build_app(), ["eval", "--data", str(synth), "--format", "deeppcb", "--model", "pcb-synth?look=0"])
    assert r.exit_code == 2 and "'pcb-synth?look=0'" in r.output  # no query strings: not a model name either


def test_bench_vision_json_and_markdown(synth: Path, tmp_path: Path) -> None:
    md = tmp_path / "bench.md"
    r = runner.invoke(build_app(), ["bench", "vision", "--data", str(synth), "--format", "deeppcb",
                               "--detectors", "onnx,template,yolo", "--markdown", str(md), "--threads", "1"])
    assert r.exit_code == 0, r.output
    res = {x["kind"]: x for x in json.loads(r.stdout)}
    assert res["yolo"].get("skipped")  # no --yolo-model: skipped, not crashed
    for k in ("onnx", "template"):
        assert "error" not in res[k], res[k]
        assert res[k]["images"] == 6
        assert res[k]["fps"] > 0 and res[k]["peak_rss_mb"] > 0
        assert res[k]["latency_ms"]["p99"] >= res[k]["latency_ms"]["p50"]
    assert res["onnx"]["torch_imported"] is False
    text = md.read_text()
    assert "lineguard bench vision" in text and "| onnx:pcb-synth" in text and "| template-diff" in text


def test_bench_vision_bad_detector(synth: Path) -> None:
    r = runner.invoke(build_app(), ["bench", "vision", "--data", str(synth), "--format", "deeppcb",
                               "--detectors", "onnx,magic"])
    assert r.exit_code == 2 and "unknown detector 'magic'" in r.output


def test_synth_writes_a_reproducible_dataset(tmp_path: Path) -> None:
    from vision.datasets import load
    from vision.registry import hash_samples

    hashes = []
    for d in ("a", "b"):
        r = runner.invoke(build_app(), ["synth", "--out", str(tmp_path / d), "--n", "3", "--seed", "42"])
        assert r.exit_code == 0, r.output
        line = r.output[r.output.index('{"out"') :].splitlines()[0]  # the progress bar shares the output
        assert json.loads(line)["pairs"] == 3
        samples = load(tmp_path / d, "deeppcb", "trainval")
        assert len(samples) == 3 and all(s.template_path is not None for s in samples)
        hashes.append(hash_samples(samples))
    assert hashes[0] == hashes[1]  # same seed, same bytes: a shipped model's data_hash can be re-derived
    r = runner.invoke(build_app(), ["synth", "--out", str(tmp_path / "c"), "--n", "0"])
    assert r.exit_code == 2 and "--n must be > 0" in r.output
