"""lineguard eval --report: PR curves, the error list and the gallery, checked against hand-made cases and
against the metrics the same evaluation prints."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from vision.bench import DetectionRun
from vision.cli import build_app
from vision.metrics import average_precision, pr_curve
from vision.report import find_errors, write_report
from vision.synth import write_dataset
from vision.types import Box, Detection, Label, Sample


def D(x1: float, y1: float, x2: float, y2: float, conf: float, cls: str = "open") -> Detection:
    return Detection(Box(x1, y1, x2, y2), cls, conf)


def L(x1: float, y1: float, x2: float, y2: float, cls: str = "open") -> Label:
    return Label(Box(x1, y1, x2, y2), cls)


def test_pr_curve_by_hand() -> None:
    # Three truths of class open in two images; detections ranked 0.9 (hit), 0.8 (miss), 0.7 (hit).
    preds = [[D(0, 0, 10, 10, 0.9), D(50, 50, 60, 60, 0.8)], [D(0, 0, 10, 10, 0.7), D(0, 0, 10, 10, 0.6, "short")]]
    truths = [[L(0, 0, 10, 10), L(20, 20, 30, 30)], [L(0, 0, 10, 10)]]
    c = pr_curve(preds, truths, "open", 0.5)
    assert c is not None and c.n_truth == 3
    np.testing.assert_allclose(c.scores, [0.9, 0.8, 0.7])
    np.testing.assert_allclose(c.recall, [1 / 3, 1 / 3, 2 / 3])
    np.testing.assert_allclose(c.precision, [1.0, 0.5, 2 / 3])
    assert c.at(0.85) == (1.0, pytest.approx(1 / 3))
    assert c.at(0.7) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert c.at(0.95) == (0.0, 0.0)
    # 101-point AP: recall points 0..0.33 at envelope precision 1.0 (34 points), 0.34..0.66 at 2/3 (33 points).
    assert c.average_precision() == pytest.approx((34 * 1.0 + 33 * 2 / 3) / 101)
    assert average_precision(preds, truths, "open", 0.5) == c.average_precision()
    assert pr_curve(preds, truths, "spur", 0.5) is None  # no truth of that class


def test_find_errors_names_each_mistake() -> None:
    truths = [[L(0, 0, 10, 10), L(100, 100, 120, 110), L(200, 200, 210, 210, "short")]]
    preds = [
        [
            D(0, 0, 10, 10, 0.95),  # hit
            D(100, 100, 112, 110, 0.9),  # same class, IoU 0.6: a hit at 0.5
            D(200, 200, 210, 206, 0.8, "short"),  # IoU 0.6 too
            D(300, 300, 310, 310, 0.7, "spur"),  # nothing there
            D(0, 0, 10, 10, 0.3, "mousebite"),  # below the operating point: ignored
        ]
    ]
    samples = [Sample(Path("board_a.jpg"), truths[0], sample_id="a")]
    errs = find_errors(samples, preds, truths, prf_conf=0.5, iou_thr=0.5)
    assert [(e.kind, e.cls) for e in errs] == [("false", "spur")]
    # At IoU 0.7 the two partial boxes become a false detection and a miss each, with their IoU and partner.
    errs = find_errors(samples, preds, truths, prf_conf=0.5, iou_thr=0.7)
    got = [(e.kind, e.cls, e.best_iou, e.partner) for e in errs]
    assert got == [
        ("false", "open", 0.6, Box(100, 100, 120, 110)),
        ("false", "short", 0.6, Box(200, 200, 210, 210)),
        ("false", "spur", 0.0, None),
        ("miss", "open", 0.6, Box(100, 100, 112, 110)),
        ("miss", "short", 0.6, Box(200, 200, 210, 206)),
    ]
    assert errs[0].confidence == 0.9 and errs[0].sample_id == "a"
    # A wrong class on a truth: nearest names the class that is there.
    wrong = find_errors(samples, [[D(200, 200, 210, 210, 0.9, "spur")]], truths, prf_conf=0.5)
    assert [(e.kind, e.cls, e.nearest) for e in wrong if e.kind == "false"] == [("false", "spur", "short")]


@pytest.fixture(scope="module")
def boards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("report") / "ds"
    write_dataset(d, 8, seed=901, progress=False)
    return d


def test_eval_report_agrees_with_its_metrics(boards: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    r = CliRunner().invoke(
        build_app(),
        ["eval", "--data", str(boards), "--format", "deeppcb", "--model", "pcb-synth", "--report", str(out)],
    )
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    rep = res["report"]
    assert rep["pr"] == "pr.png" and rep["errors"]["iou"] == 0.5
    assert json.loads((out / "metrics.json").read_text())["map50"] == res["map50"]
    rows = list(csv.DictReader((out / "errors.csv").open()))
    assert len(rows) == rep["errors"]["false"] + rep["errors"]["missed"]
    assert rows, "the old synthetic YOLO makes mistakes on new boards; the report must list them"
    assert {r["kind"] for r in rows} <= {"false", "miss"}
    pr = cv2.imread(str(out / "pr.png"))
    assert pr is not None and pr.shape[1] > 1000
    gal = cv2.imread(str(out / "errors.png"))
    assert gal is not None and rep["gallery"]["tiles"] == min(24, len(rows))


def test_report_errors_match_deeppcb_counts(boards: Path, tmp_path: Path) -> None:
    """The error list under the DeepPCB rule has exactly the FP and FN the printed metrics count."""
    from vision.bench import detect_all, score
    from vision.detectors.factory import OnnxDetectorConfig, build_detector
    from vision.train import load_samples

    samples = load_samples(boards, "deeppcb", None)
    det = build_detector(OnnxDetectorConfig(model="pcb-synth", conf=0.001, threads=1, unknown_pass=False))
    run = detect_all(det, samples, warmup=0)
    res = score(det.name, run, list(det.classes), prf_conf=0.25)
    errs = find_errors(samples, run.preds, run.truths, prf_conf=0.25, iou_thr=0.33, strict=True)
    assert sum(e.kind == "false" for e in errs) == res["deeppcb"]["fp"]
    assert sum(e.kind == "miss" for e in errs) == res["deeppcb"]["fn"]


def test_report_without_matplotlib_writes_the_rest(
    boards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An edge box installs no matplotlib; the report must say so and still write the other files.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    samples = [Sample(p, [L(10, 10, 30, 30)]) for p in sorted(boards.rglob("*_test.*"))[:2]]
    assert len(samples) == 2
    run = DetectionRun(samples=samples, preds=[[D(10, 10, 30, 30, 0.9)], []], latency_ms=[1.0, 1.0], unknown=0)
    got = write_report(tmp_path / "r", run, ["open"], prf_conf=0.5, metrics={"detector": "x"})
    assert got["pr"] is None and "matplotlib" in got["pr_why"]
    assert not (tmp_path / "r" / "pr.png").exists()
    assert got["errors"] == {"file": "errors.csv", "iou": 0.5, "false": 0, "missed": 1}
    assert got["gallery"]["tiles"] == 1 and (tmp_path / "r" / "errors.png").is_file()
