"""The edge path: input stacking, OnnxDetector (onnxruntime + OpenCV only) and the shipped model.

None of these tests need torch: they run on the edge install.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from vision.detectors.base import Detector
from vision.detectors.onnx import DEFAULT_MODEL, MODELS_DIR, OnnxDetector
from vision.registry import resolve
from vision.stacking import InputSpec, letterbox, prepare, stack
from vision.synth import make_board
from vision.types import DEFECT_CLASSES, UNKNOWN_CLASS, Box, Frame, Label

REPO = Path(__file__).resolve().parents[2]


def _frame(seed: int, with_template: bool = True) -> tuple[Frame, list[Label]]:
    b = make_board(seed, (3, 6))
    f = Frame(camera="t", seq=seed, ts=0.0, image=b.image, template=b.template if with_template else None)
    return f, b.labels


# --------------------------------------------------------------------------------------------- stacking


def test_stack_channels_and_fallback() -> None:
    test = np.full((8, 8), 200, np.uint8)
    temp = np.full((8, 8), 50, np.uint8)
    s, used = stack(test, temp)
    assert used and s.shape == (8, 8, 3)
    assert (s[..., 0] == 200).all() and (s[..., 1] == 50).all() and (s[..., 2] == 150).all()
    s, used = stack(test, None)
    assert not used and (s[..., 1] == 200).all() and (s[..., 2] == 0).all()
    bgr = np.dstack([test, test, test])
    s, _ = stack(bgr, temp)  # BGR input is converted to gray
    assert (s[..., 0] == 200).all()
    with pytest.raises(ValueError, match="unknown stacking mode"):
        stack(test, temp, "rgb")


def test_letterbox_maps_boxes_back() -> None:
    img = np.zeros((480, 640, 3), np.uint8)
    boxed, lb = letterbox(img, 320)
    assert boxed.shape == (320, 320, 3)
    assert lb.scale == pytest.approx(0.5) and lb.pad_x == 0 and lb.pad_y == 40
    net = np.array([[10, 50, 110, 90]], np.float32)  # network-space corners
    back = lb.to_original(net)
    assert back.tolist() == [[20, 20, 220, 100]]


def test_input_spec_roundtrip_and_validation(tmp_path: Path) -> None:
    spec = InputSpec(size=416, class_names=DEFECT_CLASSES)
    spec.save(tmp_path)
    again = InputSpec.load(tmp_path)
    assert again == spec
    assert "test, test, 0" in again.no_template_fallback
    with pytest.raises(ValueError, match="multiple of 32"):
        InputSpec(size=300)
    with pytest.raises(ValueError, match="stacking"):
        InputSpec(size=320, stacking="rgb")
    with pytest.raises(FileNotFoundError):
        InputSpec.load(tmp_path / "nope")


def test_prepare_layout() -> None:
    f, _ = _frame(5)
    spec = InputSpec(size=320, class_names=DEFECT_CLASSES)
    t, lb, used = prepare(f, spec)
    assert used and t.shape == (1, 3, 320, 320) and t.dtype == np.float32
    assert t.min() >= 0.0 and t.max() <= 1.0
    assert lb.scale == pytest.approx(0.5)


# ----------------------------------------------------------------------------------- shipped model


@pytest.fixture(scope="module")
def det() -> OnnxDetector:
    return OnnxDetector.default()


def test_shipped_model_is_a_complete_registry_entry() -> None:
    e = resolve(MODELS_DIR, DEFAULT_MODEL)
    assert e.onnx_path.stat().st_size < 15 * 1024 * 1024
    assert e.classes() == DEFECT_CLASSES
    assert e.weights_path is None  # only the ONNX ships
    info = e.info()
    assert "lineguard train" in info["train_command"] and len(info["data_hash"]) == 64


def test_default_detector_implements_protocol(det: OnnxDetector) -> None:
    assert isinstance(det, Detector)
    assert det.classes == DEFECT_CLASSES
    assert det.name.startswith("onnx:")


def test_threads_are_configurable() -> None:
    d = OnnxDetector.default(threads=1)
    assert d._session.get_session_options().intra_op_num_threads == 1


def test_detects_synthetic_defects_in_original_coordinates(det: OnnxDetector) -> None:
    # Fresh seeds the shipped model never saw (it was trained on seeds 1000..1479).
    found = total = 0
    for seed in range(7, 13):
        f, labels = _frame(seed)
        dets = det.detect(f)
        for d in dets:
            assert 0 <= d.box.x1 < d.box.x2 <= 640 and 0 <= d.box.y1 < d.box.y2 <= 640
            assert d.cls in DEFECT_CLASSES or d.cls == UNKNOWN_CLASS
            assert 0.0 <= d.confidence <= 1.0
        for lab in labels:
            total += 1
            found += any(d.box.iou(lab.box) > 0.33 for d in dets if d.cls != UNKNOWN_CLASS)
    assert total > 0
    assert found / total >= 0.6, f"recall {found}/{total}"


def test_good_part_gives_few_detections(det: OnnxDetector) -> None:
    b = make_board(21, 0)
    f = Frame(camera="t", seq=0, ts=0.0, image=b.image, template=b.template)
    assert len(det.raw(f)) <= 1


def test_decode_nms_threshold_and_mapping(det: OnnxDetector) -> None:
    nc = len(det.classes)
    S = det.spec.size
    raw = np.zeros((1, 4 + nc, 4), np.float32)
    # anchors: (cx, cy, w, h) in network pixels, then class scores
    raw[0, :4, 0] = [100, 100, 40, 40]
    raw[0, 4 + 1, 0] = 0.9  # short, strong
    raw[0, :4, 1] = [102, 101, 40, 40]
    raw[0, 4 + 1, 1] = 0.8  # same class, overlapping: suppressed by NMS
    raw[0, :4, 2] = [102, 101, 40, 40]
    raw[0, 4 + 3, 2] = 0.7  # other class, same place: kept (class-aware NMS)
    raw[0, :4, 3] = [200, 200, 20, 20]
    raw[0, 4 + 0, 3] = 0.1  # below threshold
    boxes, scores, cls = det._decode(raw)
    assert sorted(cls.tolist()) == [1, 3]
    i = cls.tolist().index(1)
    assert scores[i] == pytest.approx(0.9)
    assert boxes[i].tolist() == pytest.approx([80, 80, 120, 120])
    assert S % 32 == 0


def test_unknown_pass_reports_unexplained_differences() -> None:
    pytest.importorskip("vision.detectors.template")
    # conf above 1: the model reports nothing, so every template difference is unexplained.
    blind = OnnxDetector.default(conf=1.01)
    f, labels = _frame(3)
    dets = blind.detect(f)
    assert dets and all(d.cls == UNKNOWN_CLASS for d in dets)
    assert any(d.box.iou(lab.box) > 0.33 for lab in labels for d in dets)
    f_no_template, _ = _frame(3, with_template=False)
    assert blind.detect(f_no_template) == []
    # With the pass off, nothing at all.
    assert OnnxDetector.default(conf=1.01, unknown_pass=False).detect(f) == []


def test_contained_difference_is_explained(det: OnnxDetector) -> None:
    from vision.types import Detection

    model = [Detection(Box(0, 0, 100, 100), "short", 0.9)]
    det_any = det._template_pass
    if det_any is None:
        pytest.skip("no template pass available")

    class _Fixed:
        name = "fixed"
        classes = DEFECT_CLASSES

        def detect(self, frame: Frame) -> list[Detection]:
            return [Detection(Box(10, 10, 20, 20), "spur", 0.5), Detection(Box(300, 300, 330, 330), "spur", 0.4)]

    det._template_pass = _Fixed()
    try:
        f, _ = _frame(1)
        unk = det._unknowns(f, model)
    finally:
        det._template_pass = det_any
    assert [(d.box, d.cls) for d in unk] == [(Box(300, 300, 330, 330), UNKNOWN_CLASS)]


def test_bad_model_paths_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        OnnxDetector(tmp_path / "x.onnx", InputSpec(size=320, class_names=DEFECT_CLASSES))
    with pytest.raises(LookupError, match="neither a path nor a registry entry"):
        OnnxDetector.load("no-such-model", registry=tmp_path)


def test_edge_path_never_imports_torch() -> None:
    code = textwrap.dedent(
        """
        import json, sys
        from vision.detectors.onnx import OnnxDetector
        from vision.synth import make_board
        from vision.types import Frame
        import vision.cli, vision.stacking, vision.registry, vision.bench
        b = make_board(4)
        det = OnnxDetector.default()
        dets = det.detect(Frame(camera="c", seq=0, ts=0.0, image=b.image, template=b.template))
        print(json.dumps({"n": len(dets), "torch": "torch" in sys.modules,
                          "ultralytics": "ultralytics" in sys.modules}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["torch"] is False and res["ultralytics"] is False
    assert res["n"] >= 0
