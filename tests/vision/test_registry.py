"""vision.registry: versioned model directories, latest resolution, data hashing. No torch needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vision.registry import (
    REQUIRED_FILES,
    RegistryError,
    hash_samples,
    list_models,
    list_versions,
    parse_ref,
    publish,
    resolve,
)
from vision.stacking import InputSpec
from vision.types import DEFECT_CLASSES, Box, Label, Sample


def _fake_onnx(tmp_path: Path) -> Path:
    p = tmp_path / "m.onnx"
    p.write_bytes(b"not really onnx; the registry only stores it")
    return p


def _publish(reg: Path, onnx: Path, name: str = "pcb", **kw: object) -> object:
    spec = InputSpec(size=320, class_names=DEFECT_CLASSES)
    return publish(reg, name, onnx_path=onnx, spec=spec, data_hash="abc", train_command="lineguard train x",
                   metrics={"map50": 0.5}, **kw)  # type: ignore[arg-type]


def test_publish_versions_and_latest(tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    onnx = _fake_onnx(tmp_path)
    e1 = _publish(reg, onnx)
    e2 = _publish(reg, onnx)
    assert (e1.version, e2.version) == ("v1", "v2")  # type: ignore[attr-defined]
    for f in REQUIRED_FILES:
        assert (e2.path / f).is_file(), f  # type: ignore[attr-defined]
    assert list_versions(reg, "pcb") == ["v1", "v2"]
    assert list_models(reg) == ["pcb"]
    latest = resolve(reg, "pcb")
    assert latest.version == "v2"
    assert resolve(reg, "pcb", "v1").version == "v1"
    assert latest.classes() == DEFECT_CLASSES
    assert latest.spec().size == 320
    assert latest.metrics() == {"map50": 0.5}
    info = latest.info()
    assert info["train_command"] == "lineguard train x" and info["data_hash"] == "abc" and info["created"]
    json.dumps(info)  # serialisable for the CLI


def test_versions_sort_numerically_and_skip_incomplete(tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    onnx = _fake_onnx(tmp_path)
    for _ in range(10):
        _publish(reg, onnx)
    assert resolve(reg, "pcb").version == "v10"  # not "v9" (string sort)
    # A half-written version (crash) must not become latest.
    (reg / "pcb" / "v11").mkdir()
    (reg / "pcb" / "v11" / "model.onnx").write_bytes(b"x")
    assert resolve(reg, "pcb").version == "v10"
    assert _publish(reg, onnx).version == "v12"  # type: ignore[attr-defined]


def test_weights_are_optional(tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    onnx = _fake_onnx(tmp_path)
    e = _publish(reg, onnx)
    assert e.weights_path is None  # type: ignore[attr-defined]
    w = tmp_path / "w.pt"
    w.write_bytes(b"w")
    e = _publish(reg, onnx, weights_path=w)
    assert e.weights_path is not None and e.weights_path.read_bytes() == b"w"  # type: ignore[attr-defined]


def test_errors_name_the_problem(tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    with pytest.raises(RegistryError, match="no model 'nope'"):
        resolve(reg, "nope")
    _publish(reg, _fake_onnx(tmp_path))
    with pytest.raises(RegistryError, match="no complete version 'v7'"):
        resolve(reg, "pcb", "v7")
    with pytest.raises(RegistryError, match="bad model name"):
        _publish(reg, _fake_onnx(tmp_path), name="../escape")
    with pytest.raises(RegistryError, match="ONNX model not found"):
        _publish(reg, tmp_path / "missing.onnx")


def test_parse_ref() -> None:
    assert parse_ref("pcb") == ("pcb", "latest")
    assert parse_ref("pcb@v3") == ("pcb", "v3")
    assert parse_ref("pcb:latest") == ("pcb", "latest")


def test_hash_samples_tracks_content_and_labels(tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    img.write_bytes(b"pixels")
    lab = Label(Box(1, 2, 30, 40), "open")
    base = [Sample(image_path=img, labels=[lab])]
    h = hash_samples(base)
    assert h == hash_samples([Sample(image_path=img, labels=[lab])])
    assert h != hash_samples([Sample(image_path=img, labels=[Label(Box(1, 2, 30, 40), "short")])])
    img.write_bytes(b"other pixels")
    assert h != hash_samples(base)
