"""vision.detectors.factory: one typed config per detector kind, one build_detector, clear errors.

Builds the shipped models (vision/models: pcb-synth-hybrid, a hybrid; pcb-synth, a whole-frame YOLO export);
needs onnxruntime, not torch.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from vision.config import CameraConfig, load_cameras
from vision.detectors.factory import (
    DETECTOR_TYPES,
    CenterNetDetectorConfig,
    HybridDetectorConfig,
    OnnxDetectorConfig,
    TemplateDetectorConfig,
    YoloDetectorConfig,
    build_detector,
    check_detector,
    expand_shorthand,
    model_detector_config,
    parse_detector,
)
from vision.detectors.load import MODELS_DIR

REPO = Path(__file__).resolve().parents[2]


def _ctor_defaults(cls: type) -> dict[str, Any]:
    return {
        n: p.default
        for n, p in inspect.signature(cls.__init__).parameters.items()  # type: ignore[misc]
        if p.default is not inspect.Parameter.empty
    }


@pytest.mark.parametrize(
    ("config", "detector_path", "renamed"),
    [
        (TemplateDetectorConfig, "vision.detectors.template:TemplateDiffDetector", {}),
        (HybridDetectorConfig, "vision.detectors.hybrid:HybridDetector", {"settled": "tta_settled"}),
        (OnnxDetectorConfig, "vision.detectors.onnx:OnnxDetector", {}),
        (CenterNetDetectorConfig, "vision.detectors.centernet:CenterNetDetector", {}),
        (YoloDetectorConfig, "vision.detectors.yolo:YoloDetector", {}),
    ],
)
def test_config_defaults_are_the_detectors_own(
    config: type[BaseModel], detector_path: str, renamed: dict[str, str]
) -> None:
    """A camera that sets nothing runs the detector exactly as its constructor's defaults say."""
    import importlib

    module, _, name = detector_path.partition(":")
    ctor = _ctor_defaults(getattr(importlib.import_module(module), name))
    fields = {n: f.default for n, f in config.model_fields.items() if n not in ("type", "model")}
    assert fields, config
    for field, default in fields.items():
        param = renamed.get(field, field)
        assert param in ctor, f"{config.__name__}.{field}: {name} has no keyword {param!r}"
        assert default == ctor[param], f"{config.__name__}.{field} = {default!r}, {name}({param}={ctor[param]!r})"


def test_template_builds_with_its_options() -> None:
    from vision.detectors.template import TemplateDiffDetector

    det = build_detector(parse_detector("template"))
    assert isinstance(det, TemplateDiffDetector) and det.name == "template-diff" and det.align is True
    tuned = build_detector(TemplateDetectorConfig(threshold=100, align=False, min_area=12))
    assert isinstance(tuned, TemplateDiffDetector)
    assert (tuned.threshold, tuned.align, tuned.min_area) == (100, False, 12)


def test_hybrid_builds_the_shipped_model_with_its_options() -> None:
    pytest.importorskip("onnxruntime")
    from vision.detectors.hybrid import HybridDetector

    plain = build_detector(parse_detector("hybrid:pcb-synth-hybrid"))
    assert isinstance(plain, HybridDetector) and plain.name.startswith("hybrid:pcb-synth-hybrid")
    assert (plain.tta, plain.tta_settled, plain.second_look, plain.unknown_pass) == (4, 0.95, True, True)
    cfg = parse_detector({"type": "hybrid", "model": "pcb-synth-hybrid", "tta": 1, "settled": 0.5,
                          "second_look": False, "min_confidence": 0.3, "threads": 2, "unknown_pass": False})
    det = build_detector(cfg)
    assert isinstance(det, HybridDetector)
    assert (det.tta, det.tta_settled, det.second_look, det.min_confidence, det.unknown_pass) == (1, 0.5, False, 0.3,
                                                                                                  False)
    assert check_detector(cfg) == det.name


def test_onnx_builds_the_shipped_yolo_export_with_its_options() -> None:
    pytest.importorskip("onnxruntime")
    from vision.detectors.onnx import OnnxDetector

    assert not (MODELS_DIR / "pcb-synth" / "v1" / "hybrid.json").exists()  # a whole-frame YOLO export
    det = build_detector(parse_detector("onnx:pcb-synth"))
    assert isinstance(det, OnnxDetector) and det.name == "onnx:pcb-synth-v1"
    assert (det.conf, det.iou, det.max_det) == (0.25, 0.5, 300) and det._template_pass is not None
    tuned = build_detector(OnnxDetectorConfig(model="pcb-synth@v1", conf=0.4, iou=0.6, max_det=10,
                                              unknown_pass=False))
    assert isinstance(tuned, OnnxDetector)
    assert (tuned.conf, tuned.iou, tuned.max_det, tuned._template_pass) == (0.4, 0.6, 10, None)


def test_a_model_of_the_other_kind_is_refused_naming_the_right_type() -> None:
    pytest.importorskip("onnxruntime")
    with pytest.raises(ValueError, match=r"'pcb-synth-hybrid' .* is a hybrid model .*use type: hybrid"):
        check_detector(OnnxDetectorConfig(model="pcb-synth-hybrid"))
    with pytest.raises(ValueError, match=r"'pcb-synth' .* is a whole-frame YOLO export.*use type: onnx"):
        check_detector(HybridDetectorConfig(model="pcb-synth"))


def test_check_detector_names_a_missing_model_and_where_it_looked(tmp_path: Path) -> None:
    cfg = CameraConfig(name="c", source="usb://0", detector="hybrid:does-not-exist").detector  # validates: a name
    with pytest.raises(LookupError, match="does-not-exist") as e:
        check_detector(cfg, tmp_path)
    msg = str(e.value)
    assert msg.startswith("detector hybrid:does-not-exist: ")
    assert f"registry {tmp_path}" in msg and f"registry {MODELS_DIR}" in msg, msg
    with pytest.raises(LookupError, match="'nope'"):
        check_detector(OnnxDetectorConfig(model="nope"))
    with pytest.raises(LookupError, match="'nope'"):
        check_detector(YoloDetectorConfig(model="nope"))  # fails before torch is needed


def test_check_detector_names_missing_model_files(tmp_path: Path) -> None:
    with pytest.raises(LookupError, match=f"no hybrid ONNX model at {tmp_path}"):
        check_detector(HybridDetectorConfig(model=str(tmp_path)))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"type": "magic"}, r"detector\n.*tag 'magic'.*'template', 'hybrid', 'onnx', 'centernet', 'yolo'"),
        ({"model": "x"}, r"needs a 'type:', one of template, hybrid, onnx, centernet, yolo"),
        ({"type": "hybrid", "model": "x", "second_lok": False}, r"detector\.hybrid\.second_lok\n.*Extra inputs"),
        ({"type": "template", "model": "x"}, r"detector\.template\.model\n.*Extra inputs"),
        ({"type": "onnx", "model": "x", "tta": 1}, r"detector\.onnx\.tta\n.*Extra inputs"),
        ({"type": "hybrid"}, r"detector\.hybrid\.model\n.*Field required"),
        ({"type": "onnx", "model": ""}, r"detector\.onnx\.model\n.*at least 1 character"),
        ({"type": "yolo"}, r"detector\.yolo\.model\n.*Field required"),
        ({"type": "hybrid", "model": "x", "tta": 5}, r"detector\.hybrid\.tta\n.*less than or equal to 4"),
        ({"type": "hybrid", "model": "x", "settled": 0}, r"detector\.hybrid\.settled\n.*greater than 0"),
        ({"type": "onnx", "model": "x", "conf": 1.5}, r"detector\.onnx\.conf\n.*less than or equal to 1"),
        ("hybrid", r"'hybrid': needs a model, e\.g\. \{type: hybrid, model: "),
        ("onnx:", r"'onnx:': names no model"),
        ("yolo:x", r"expected 'template', 'hybrid:<model>', 'onnx:<model>' or a mapping"),
        ("magic", r"expected 'template', 'hybrid:<model>', 'onnx:<model>' or a mapping"),
        ("hybrid:pcb-synth-hybrid?tta=1",
         r"query string are not accepted; .*detector: \{type: hybrid, model: pcb-synth-hybrid, tta: 1\}"),
        ("hybrid:h?look=0&settled=1", r"detector: \{type: hybrid, model: h, second_look: false, settled: 1\}"),
        ("onnx:m?conf=0.3", r"detector: \{type: onnx, model: m, conf: 0\.3\}"),
    ],
)
def test_bad_detector_configs_name_the_field(value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CameraConfig(name="c", source="usb://0", detector=value)


def test_shorthand_forms() -> None:
    assert expand_shorthand("template") == {"type": "template"}
    assert expand_shorthand(" hybrid:pcb-synth-hybrid@v2 ") == {"type": "hybrid", "model": "pcb-synth-hybrid@v2"}
    assert expand_shorthand("onnx:/models/x/v1") == {"type": "onnx", "model": "/models/x/v1"}
    assert expand_shorthand("hybrid:name:latest") == {"type": "hybrid", "model": "name:latest"}
    mapping = {"type": "hybrid", "model": "m", "tta": 2}
    assert expand_shorthand(mapping) is mapping
    assert parse_detector("hybrid:m") == HybridDetectorConfig(model="m")
    built = HybridDetectorConfig(model="m", tta=2)
    assert parse_detector(built) == built and parse_detector(mapping) == built
    assert [str(parse_detector(s)) for s in ("template", "hybrid:m", "onnx:pcb-synth@v1")] == [
        "template", "hybrid:m", "onnx:pcb-synth@v1"
    ]
    assert set(DETECTOR_TYPES) == {"template", "hybrid", "onnx", "centernet", "yolo"}


@pytest.mark.parametrize(
    "detector",
    [
        None,
        "template",
        "hybrid:pcb-synth-hybrid",
        {"type": "hybrid", "model": "pcb-synth-hybrid", "tta": 1, "second_look": False},
        {"type": "onnx", "model": "pcb-synth", "conf": 0.4},
        {"type": "yolo", "model": "runs/x/weights.pt"},
        {"type": "template", "align": False},
    ],
)
def test_camera_config_round_trips(detector: Any) -> None:
    kw = {} if detector is None else {"detector": detector}
    cam = CameraConfig(name="c", source="usb://0", **kw)
    assert CameraConfig.model_validate(cam.model_dump()) == cam
    # Through YAML, as a dumped config would be written back into a line file.
    text = yaml.safe_dump(cam.model_dump(mode="json"))
    assert CameraConfig.model_validate(yaml.safe_load(text)) == cam
    # Dumped as the mapping form (never a string), every option spelt out.
    dumped = cam.model_dump()["detector"]
    assert isinstance(dumped, dict) and set(dumped) == set(type(cam.detector).model_fields)


def test_model_detector_config_picks_the_kind_from_the_directory() -> None:
    h = model_detector_config("pcb-synth-hybrid", conf=0.5, threads=2, unknown_pass=False, tta=1)
    assert h == HybridDetectorConfig(model="pcb-synth-hybrid", min_confidence=0.5, threads=2, unknown_pass=False,
                                     tta=1)
    o = model_detector_config("pcb-synth", conf=0.001)
    assert o == OnnxDetectorConfig(model="pcb-synth", conf=0.001)
    with pytest.raises(ValueError, match="'pcb-synth' is a YOLO export; tta, second_look apply to hybrid models"):
        model_detector_config("pcb-synth", tta=1, second_look=False)
    with pytest.raises(ValidationError, match="tta"):
        model_detector_config("pcb-synth-hybrid", tta=7)
    with pytest.raises(LookupError, match="'no-such'"):
        model_detector_config("no-such")


def test_bench_flags_build_configs() -> None:
    from vision.bench import bench_config

    assert bench_config("onnx", None, conf=0.25, threads=1) == OnnxDetectorConfig(
        model="pcb-synth", conf=0.25, threads=1, unknown_pass=False)
    assert bench_config("template", None, conf=0.9, threads=3) == TemplateDetectorConfig()
    assert bench_config("yolo", "w.pt", conf=0.1, threads=1) == YoloDetectorConfig(model="w.pt", conf=0.1, threads=1)
    with pytest.raises(ValueError, match="needs --model"):
        bench_config("yolo", None, conf=0.1, threads=1)
    with pytest.raises(ValueError, match="unknown detector kind 'magic'"):
        bench_config("magic", None, conf=0.1, threads=1)


def test_example_line_uses_the_mapping_form_and_every_model_loads() -> None:
    pytest.importorskip("onnxruntime")
    path = REPO / "examples" / "line.yaml"
    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw["cameras"][0]["detector"], dict), "the shipped example shows the mapping form"
    cams = load_cameras(path)
    assert [check_detector(c.detector).startswith(c.detector.type) for c in cams] == [True] * len(cams)


def test_building_edge_detectors_never_imports_torch() -> None:
    pytest.importorskip("onnxruntime")
    code = (
        "import sys\n"
        "from vision.config import CameraConfig\n"
        "from vision.detectors.factory import build_detector, parse_detector\n"
        "for d in ('template', 'hybrid:pcb-synth-hybrid', 'onnx:pcb-synth', {'type': 'yolo', 'model': 'x.pt'}):\n"
        "    cfg = CameraConfig(name='c', source='usb://0', detector=d).detector\n"
        "    if cfg.type != 'yolo':\n"
        "        build_detector(cfg)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
