"""Export trained ultralytics weights to ONNX for the edge runtime (onnxruntime, no torch).

Static shape (1, 3, S, S), no NMS in the graph: vision.detectors.onnx decodes and runs NMS with
OpenCV so the graph stays portable across onnxruntime builds.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def export_onnx(weights: Path, imgsz: int, out: Path, opset: int | None = None) -> Path:
    """Export ``weights`` (ultralytics .pt) to ``out``; returns ``out``."""
    from vision.train import TrainError, _import_ultralytics

    weights = Path(weights)
    if not weights.is_file():
        raise TrainError(f"weights not found: {weights}")
    ultralytics = _import_ultralytics()
    model = ultralytics.YOLO(str(weights))
    kwargs: dict[str, object] = {
        "format": "onnx",
        "imgsz": imgsz,
        "dynamic": False,
        "simplify": True,
        "nms": False,
        "device": "cpu",
    }
    if opset is not None:
        kwargs["opset"] = opset
    produced = Path(str(model.export(**kwargs)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if produced.resolve() != out.resolve():
        shutil.copyfile(produced, out)
    _check(out, imgsz)
    return out


def _check(path: Path, imgsz: int) -> None:
    """Load the exported graph in onnxruntime and verify its input shape: fail at export, not on the line."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = sess.get_inputs()[0].shape
    if list(shape) != [1, 3, imgsz, imgsz]:
        raise RuntimeError(f"exported ONNX {path} has input shape {shape}, expected [1, 3, {imgsz}, {imgsz}]")
