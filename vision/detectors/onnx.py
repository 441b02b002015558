"""The edge detector: a YOLO model exported to ONNX, run with onnxruntime + OpenCV + numpy.

No torch anywhere on this path (tests check ``'torch' not in sys.modules`` after a detection).

Pipeline per frame: stack (test, template, |diff|) per the model's InputSpec -> letterbox -> ONNX ->
decode the raw YOLO head (1, 4 + nc, anchors: cx, cy, w, h in input pixels, then per-class scores)
-> confidence threshold -> class-aware NMS (cv2.dnn) -> boxes back to original pixels. Where the
frame has a template, a cheap template-difference pass runs too and every difference that overlaps
no model detection is reported as class ``unknown``: a defect the model was never trained on must
not pass silently.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from vision.detectors.base import Detector
from vision.detectors.load import MODELS_DIR, resolve_model_dir
from vision.registry import MODEL_FILE, resolve
from vision.stacking import InputSpec, prepare
from vision.types import UNKNOWN_CLASS, Box, Detection, Frame

log = logging.getLogger("vision.detectors.onnx")

DEFAULT_MODEL = "pcb-synth"


def _make_template_pass() -> Detector | None:
    """vision-A's TemplateDiffDetector when available; None otherwise (no unknown pass)."""
    try:
        from vision.detectors.template import TemplateDiffDetector
    except ImportError:
        return None
    try:
        return TemplateDiffDetector()
    except TypeError:
        return None



def cpu_session(model_path: Path, threads: int, size: int) -> tuple[Any, str]:
    """An onnxruntime CPU session for a square ``size`` input, and its input's name.

    A fixed thread count: the edge box runs other workers too, and ORT defaults to all cores."""
    import onnxruntime as ort

    if not model_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {model_path}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    if list(inp.shape[2:]) != [size, size]:
        raise ValueError(f"{model_path}: input shape {inp.shape} does not match spec size {size}")
    return session, str(inp.name)

class OnnxDetector:
    """Detector over an exported YOLO ONNX model. Build with from_dir / from_registry / default."""

    def __init__(
        self,
        model_path: Path,
        spec: InputSpec,
        *,
        name: str | None = None,
        conf: float = 0.25,
        iou: float = 0.5,
        threads: int = 2,
        max_det: int = 300,
        unknown_pass: bool = True,
        unknown_iou: float = 0.1,
    ) -> None:
        model_path = Path(model_path)
        self._session, self._input_name = cpu_session(model_path, threads, spec.size)
        out_shape = self._session.get_outputs()[0].shape
        if len(out_shape) == 3 and isinstance(out_shape[1], int) and out_shape[1] != 4 + len(spec.class_names):
            raise ValueError(
                f"{model_path}: output has {out_shape[1] - 4} classes, spec lists {len(spec.class_names)}"
            )
        self.spec = spec
        self.classes: tuple[str, ...] = tuple(spec.class_names)
        self.name = name or f"onnx:{model_path.parent.name}"
        self.conf = conf
        self.iou = iou
        self.max_det = max_det
        self.unknown_iou = unknown_iou
        self._template_pass = _make_template_pass() if unknown_pass else None
        self._warned_no_template = False

    # ------------------------------------------------------------------------------------ builders

    @classmethod
    def from_dir(cls, path: Path, **kwargs: Any) -> OnnxDetector:
        """A model directory holding model.onnx + input_spec.json (a registry version dir)."""
        path = Path(path)
        if path.is_file() and path.suffix == ".onnx":
            path = path.parent
        spec = InputSpec.load(path)
        kwargs.setdefault("name", f"onnx:{path.parent.name}-{path.name}")
        return cls(path / MODEL_FILE, spec, **kwargs)

    @classmethod
    def from_registry(
        cls, registry: Path, name: str, version: str = "latest", **kwargs: Any
    ) -> OnnxDetector:
        entry = resolve(registry, name, version)
        kwargs.setdefault("name", f"onnx:{entry.name}-{entry.version}")
        return cls.from_dir(entry.path, **kwargs)

    @classmethod
    def default(cls, **kwargs: Any) -> OnnxDetector:
        """The shipped model (trained on synthetic boards only), from vision/models/."""
        return cls.from_registry(MODELS_DIR, DEFAULT_MODEL, **kwargs)

    @classmethod
    def load(cls, ref: str | Path, registry: Path | None = None, **kwargs: Any) -> OnnxDetector:
        """A path (model dir or .onnx) or a registry reference ``name[@version]``.

        Registry references are looked up in ``registry`` first, then in the shipped models.
        """
        return cls.from_dir(resolve_model_dir(ref, registry), **kwargs)

    # ---------------------------------------------------------------------------------- inference

    def raw(self, frame: Frame) -> list[Detection]:
        """Model detections only (no unknown pass)."""
        tensor, lb, used_template = prepare(frame, self.spec)
        if not used_template and self.spec.stacking == "diff" and not self._warned_no_template:
            log.warning("%s: frame without template; input is (test, test, 0): %s", self.name,
                        self.spec.no_template_fallback)
            self._warned_no_template = True
        out = self._session.run(None, {self._input_name: tensor})[0]
        boxes, scores, cls_ids = self._decode(out)
        if len(scores) == 0:
            return []
        boxes = lb.to_original(boxes)
        h, w = frame.image.shape[:2]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        return [
            Detection(Box(float(b[0]), float(b[1]), float(b[2]), float(b[3])), self.classes[int(c)], float(s))
            for b, s, c in zip(boxes, scores, cls_ids, strict=True)
        ]

    def detect(self, frame: Frame) -> list[Detection]:
        dets = self.raw(frame)
        if self._template_pass is not None and frame.template is not None:
            dets.extend(self._unknowns(frame, dets))
        return dets

    def _unknowns(self, frame: Frame, dets: list[Detection]) -> list[Detection]:
        assert self._template_pass is not None
        out = []
        for d in self._template_pass.detect(frame):
            # A difference that any model detection overlaps is explained; the rest are unknown.
            if any(d.box.iou(m.box) > self.unknown_iou or _contains(m.box, d.box) for m in dets):
                continue
            out.append(Detection(d.box, UNKNOWN_CLASS, d.confidence))
        return out

    def _decode(
        self, out: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        pred = out[0]  # (4 + nc, anchors)
        if pred.shape[0] != 4 + len(self.classes):
            pred = pred.T  # some exporters emit (anchors, 4 + nc)
        cls_scores = pred[4:]
        cls_ids = cls_scores.argmax(axis=0)
        scores = cls_scores[cls_ids, np.arange(cls_scores.shape[1])]
        keep = scores >= self.conf
        if not keep.any():
            empty = np.zeros((0, 4), np.float32)
            return empty, np.zeros(0, np.float32), np.zeros(0, np.int64)
        cx, cy, bw, bh = pred[0, keep], pred[1, keep], pred[2, keep], pred[3, keep]
        scores, cls_ids = scores[keep], cls_ids[keep]
        xywh = np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1)
        kept = cv2.dnn.NMSBoxesBatched(
            xywh.tolist(), scores.tolist(), cls_ids.tolist(), self.conf, self.iou, top_k=self.max_det
        )
        idx = np.asarray(kept, dtype=np.int64).reshape(-1)[: self.max_det]
        xyxy = np.stack([xywh[:, 0], xywh[:, 1], xywh[:, 0] + xywh[:, 2], xywh[:, 1] + xywh[:, 3]], axis=1)
        return xyxy[idx].astype(np.float32), scores[idx].astype(np.float32), cls_ids[idx].astype(np.int64)


def _contains(outer: Box, inner: Box) -> bool:
    return outer.x1 <= inner.x1 and outer.y1 <= inner.y1 and outer.x2 >= inner.x2 and outer.y2 >= inner.y2
