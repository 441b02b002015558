"""QA rules (decisions by class, confidence, size) and camera config / source factory."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from line_agent.contracts import Verdict
from vision.config import CameraConfig, load_cameras, make_source
from vision.detectors.factory import HybridDetectorConfig, OnnxDetectorConfig, TemplateDetectorConfig
from vision.qa import QARule, QARules
from vision.sources import DatasetSource, FolderSource, SyntheticSource, VideoSource
from vision.types import DEFECT_CLASSES, Box, Detection

RULES = QARules(
    rules=[
        QARule(classes=["short", "open"], min_confidence=0.5, action=Verdict.REJECT),
        QARule(classes=["*"], min_confidence=0.6, min_area_px=400, action=Verdict.REWORK),
        QARule(classes=["pin_hole"], min_confidence=0.3, min_size_px=30, action=Verdict.REJECT),
    ]
)


def D(cls: str, conf: float, w: float = 10, h: float = 10) -> Detection:
    return Detection(Box(0, 0, w, h), cls, conf)


def test_no_detection_passes() -> None:
    assert RULES.decide([]).action == Verdict.PASS


@pytest.mark.parametrize(
    ("dets", "action"),
    [
        ([D("short", 0.9)], Verdict.REJECT),
        ([D("short", 0.4)], Verdict.PASS),  # below the rule's confidence
        ([D("spur", 0.9, 10, 10)], Verdict.PASS),  # 100 px < 400 px area
        ([D("spur", 0.9, 20, 20)], Verdict.REWORK),
        ([D("spur", 0.5, 20, 20)], Verdict.PASS),
        ([D("pin_hole", 0.4, 30, 5)], Verdict.REJECT),  # longer side 30 px meets min_size_px
        ([D("pin_hole", 0.4, 29, 5)], Verdict.PASS),
        ([D("spur", 0.9, 20, 20), D("open", 0.7)], Verdict.REJECT),  # most severe wins
        ([D("spur", 0.9, 20, 20), D("mousebite", 0.2)], Verdict.REWORK),
    ],
)
def test_decisions(dets: list[Detection], action: Verdict) -> None:
    assert RULES.decide(dets).action == action


def test_first_matching_rule_and_reasons() -> None:
    d = D("open", 0.9, 30, 30)  # matches rule 0 (reject) and rule 1 (rework): rule 0 decides
    dec = RULES.decide([d, D("spur", 0.1)])
    assert dec.action == Verdict.REJECT
    assert dec.reasons == [(d, Verdict.REJECT, 0)]


def test_unknown_class_configurable() -> None:
    assert QARules().decide([D("unknown", 0.9)]).action == Verdict.REWORK
    assert QARules(unknown_action=Verdict.PASS).decide([D("unknown", 0.9)]).action == Verdict.PASS
    explicit = QARules(rules=[QARule(classes=["unknown"], min_confidence=0.0, action=Verdict.REJECT)])
    assert explicit.decide([D("unknown", 0.1)]).action == Verdict.REJECT
    assert QARules(default_action=Verdict.REWORK).decide([D("spur", 0.01)]).action == Verdict.REWORK


def test_yaml_loading_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "line.yaml"
    f.write_text(
        "line: smt-1\nqa:\n  unknown_action: reject\n  rules:\n"
        "    - {classes: [short], min_confidence: 0.5, action: reject}\n"
        "    - {min_area_px: 100, action: rework}\n"
    )
    r = QARules.from_yaml(f)
    assert r.unknown_action == Verdict.REJECT and r.rules[1].classes == ["*"]
    assert r.decide([D("short", 0.6)]).action == Verdict.REJECT
    f.write_text("qa:\n  rules:\n    - {classes: [scratch], action: reject}\n")
    with pytest.raises(ValueError, match=r"(?s)line\.yaml: invalid QA rules.*unknown class\(es\) \['scratch'\]"):
        QARules.from_yaml(f, classes=DEFECT_CLASSES)
    # Classes come from the model: a steel model's rules name its classes; any name without a model.
    steel = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
    with pytest.raises(ValueError, match=r"unknown class\(es\) \['scratch'\]"):
        QARules.from_yaml(f, classes=steel)
    assert QARules.from_yaml(f).rules[0].classes == ["scratch"]
    with pytest.raises(ValueError, match=r"qa rule #1: unknown class\(es\) \['scratch'\]"):
        QARules.from_yaml(f).check_classes(steel)
    f.write_text("qa:\n  rules:\n    - {classes: [scratches], action: reject}\n")
    assert QARules.from_yaml(f, classes=steel).decide([D("scratches", 0.9)]).action == Verdict.REJECT
    f.write_text("qa:\n  rules:\n    - {classes: [short], action: scrap}\n")
    with pytest.raises(ValueError, match="action"):
        QARules.from_yaml(f)
    f.write_text("qa:\n  rules:\n    - {classes: [short], action: reject, min_conf: 0.3}\n")
    with pytest.raises(ValueError, match="min_conf"):  # a typo is an error, not a silently ignored key
        QARules.from_yaml(f)
    with pytest.raises(FileNotFoundError, match="QA rules file not found"):
        QARules.from_yaml(tmp_path / "nope.yaml")


# ------------------------------------------------------------------------------------------------ config


def test_make_source_schemes(tmp_path: Path) -> None:
    s = make_source(CameraConfig(name="c1", source="synthetic://?defect_rate=0.25&seed=3&count=2", fps_limit=50))
    assert isinstance(s, SyntheticSource)
    assert (s.defect_rate, s.seed, s.count, s.max_fps) == (0.25, 3, 2, 50)
    assert len(list(s)) == 2
    assert cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8), np.uint8))
    f = make_source(CameraConfig(name="c2", source=f"folder://{tmp_path}?loop=1"))
    assert isinstance(f, FolderSource) and f.loop and f.path == tmp_path
    v = make_source(CameraConfig(name="c3", source=f"file://{tmp_path}/x.mp4"))
    assert isinstance(v, VideoSource) and v.uri == f"{tmp_path}/x.mp4" and not v.live
    r = make_source(CameraConfig(name="c4", source="rtsp://user:pw@10.0.0.5:554/stream1?tcp", stall_timeout_s=2))
    assert isinstance(r, VideoSource) and r.uri == "rtsp://user:pw@10.0.0.5:554/stream1?tcp" and r.live
    assert r.stall_timeout_s == 2
    u = make_source(CameraConfig(name="c5", source="usb://1"))
    assert isinstance(u, VideoSource) and u.uri == 1 and u.live
    plain = make_source(CameraConfig(name="c6", source=str(tmp_path / "y.avi")))
    assert isinstance(plain, VideoSource) and plain.uri == str(tmp_path / "y.avi")


def test_make_source_dataset(tmp_path: Path) -> None:
    from vision.datasets import append_deeppcb

    img = np.full((16, 16), 255, np.uint8)
    append_deeppcb(tmp_path, img, img, [])
    d = make_source(CameraConfig(name="d", source=f"dataset://{tmp_path}?format=deeppcb&split=trainval"))
    assert isinstance(d, DatasetSource) and len(d.samples) == 1
    with pytest.raises(ValueError, match=r"camera d: bad source .*split 'val'"):
        make_source(CameraConfig(name="d", source=f"dataset://{tmp_path}?split=val"))


def test_camera_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="unknown scheme 'ftp'"):
        CameraConfig(name="x", source="ftp://host/cam")
    # Detector strings are shorthand only (all their forms: tests/vision/test_detector_factory.py).
    with pytest.raises(ValidationError, match="expected 'template', 'hybrid:<model>', 'onnx:<model>' or a mapping"):
        CameraConfig(name="x", source="usb://0", detector="yolo:x")
    with pytest.raises(ValidationError, match="'hybrid:': names no model"):
        CameraConfig(name="x", source="usb://0", detector="hybrid:")
    h = CameraConfig(name="x", source="usb://0", detector="hybrid:/models/h1").detector
    assert isinstance(h, HybridDetectorConfig) and h.model == "/models/h1" and h.tta == 4
    with pytest.raises(ValidationError, match=r"mapping form, detector: \{type: hybrid, model: h1, tta: 1\}"):
        CameraConfig(name="x", source="usb://0", detector="hybrid:h1?tta=1")
    with pytest.raises(ValidationError, match=r"detector\.hybrid\.tta\n.*less than or equal to 4"):
        CameraConfig(name="x", source="usb://0", detector={"type": "hybrid", "model": "h1", "tta": 9})
    ok = CameraConfig(name="x", source="usb://0", detector={"type": "hybrid", "model": "h1", "tta": 4, "settled": 0.95})
    assert isinstance(ok.detector, HybridDetectorConfig) and ok.detector.settled == 0.95
    with pytest.raises(ValidationError, match=r"detector\.hybrid\.settled"):
        CameraConfig(name="x", source="usb://0", detector={"type": "hybrid", "model": "h1", "settled": 1.5})
    with pytest.raises(ValidationError, match=r"detector\.hybrid\.second_look"):
        CameraConfig(name="x", source="usb://0", detector={"type": "hybrid", "model": "h1", "second_look": "maybe"})
    with pytest.raises(ValidationError, match=r"detector\.hybrid\.views\n.*Extra inputs are not permitted"):
        CameraConfig(name="x", source="usb://0", detector={"type": "hybrid", "model": "h1", "views": 2})
    o = CameraConfig(name="x", source="usb://0", detector="onnx:pcb-synth@3").detector
    assert isinstance(o, OnnxDetectorConfig) and o.model == "pcb-synth@3"
    assert isinstance(CameraConfig(name="x", source="usb://0").detector, TemplateDetectorConfig)
    with pytest.raises(ValueError, match=r"camera x: bad source 'synthetic://\?defect_rate=2'"):
        make_source(CameraConfig(name="x", source="synthetic://?defect_rate=2"))
    with pytest.raises(ValueError, match=r"camera x: bad source.*image folder not found"):
        make_source(CameraConfig(name="x", source=f"folder://{tmp_path}/missing"))
    with pytest.raises(ValueError, match="template image not readable"):
        make_source(CameraConfig(name="x", source="usb://0", template=tmp_path / "none.png"))


def test_load_cameras(tmp_path: Path) -> None:
    f = tmp_path / "line.yaml"
    f.write_text(
        "cameras:\n"
        "  - name: top\n    source: synthetic://?seed=1\n    qa:\n      rules:\n"
        "        - {classes: [short], action: reject}\n"
        "  - name: bottom\n    source: usb://0\n    detector: onnx:pcb\n    fps_limit: 5\n"
    )
    cams = load_cameras(f)
    assert [c.name for c in cams] == ["top", "bottom"]
    assert cams[0].qa.rules[0].action == Verdict.REJECT and cams[1].fps_limit == 5
    assert cams[1].detector == OnnxDetectorConfig(model="pcb") and cams[0].detector == TemplateDetectorConfig()
    f.write_text("cameras:\n  - {name: a, source: usb://0}\n  - {name: a, source: usb://1}\n")
    with pytest.raises(ValueError, match="camera names must be unique"):
        load_cameras(f)
    f.write_text("cameras:\n  - {name: a, source: 'gopher://x'}\n")
    with pytest.raises(ValueError, match=r"(?s)line\.yaml: cameras\[0\]:.*gopher"):
        load_cameras(f)
    f.write_text("camera: {}\n")
    with pytest.raises(ValueError, match="expected a 'cameras:' list"):
        load_cameras(f)
