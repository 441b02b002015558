"""Whole-frame detector for template-free products: CenterNet-style head on EfficientNet-Lite0, ONNX at the edge.

Trained by ``lineguard train --arch centernet`` (vision.train_centernet, torch); run here with onnxruntime +
OpenCV + numpy only, no torch. A registry version holds ``model.onnx``, ``input_spec.json`` (size, grayscale
stacking, class names) and ``centernet.json`` (stride, decoding), which is what marks it as this kind.

Per frame: grayscale -> letterbox to the spec's square size -> (1, 3, S, S) in [0, 1] -> ONNX, whose two outputs
are ``peaks`` (1, C, S/stride, S/stride): per-class centre heat after a 3x3 local-maximum filter (non-peaks
zeroed in the graph), and ``reg`` (1, 4, ...): log distances from the cell's centre to the box's left, top,
right and bottom side, in stride units. The top ``max_det`` peaks above ``conf`` become boxes, class-wise NMS
merges neighbouring peaks of one object, boxes go back to original pixels. No template is used: there is no
``unknown`` pass.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from vision.registry import MODEL_FILE
from vision.stacking import InputSpec, letterbox, to_gray, to_tensor
from vision.types import Box, Detection, Frame

META_FILE = "centernet.json"
#: The centre-peak heat a centernet model runs at when nobody says otherwise: the line's default, the P/R/F point
#: of the training metrics and of ``lineguard eval``. Fixed, not tuned on validation data.
OPERATING_CONF = 0.3


@dataclass(frozen=True, slots=True)
class CenterNetMeta:
    """What decoding needs beyond the input spec; saved as ``centernet.json`` beside the model."""

    stride: int = 8
    backbone: str = "efficientnet-lite0"
    #: Peaks considered per frame before the confidence threshold and NMS.
    top_k: int = 100

    def save(self, directory: Path) -> Path:
        p = Path(directory) / META_FILE
        p.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return p

    @classmethod
    def load(cls, directory: Path) -> CenterNetMeta:
        p = Path(directory) / META_FILE
        if not p.is_file():
            raise FileNotFoundError(f"no {META_FILE} in {directory}: not a centernet model")
        d = json.loads(p.read_text())
        return cls(stride=int(d.get("stride", 8)), backbone=str(d.get("backbone", "efficientnet-lite0")),
                   top_k=int(d.get("top_k", 100)))


def is_centernet(model_dir: Path) -> bool:
    return (Path(model_dir) / META_FILE).is_file()


def decode(
    peaks: npt.NDArray[np.float32], reg: npt.NDArray[np.float32], stride: int, conf: float, top_k: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """(xyxy boxes in network pixels, scores, class ids) from one image's ``peaks`` (C, H, W), ``reg`` (4, H, W)."""
    _, h, w = peaks.shape
    flat = peaks.reshape(-1)
    k = min(top_k, flat.size)
    idx = np.argpartition(-flat, k - 1)[:k]
    idx = idx[flat[idx] >= conf]
    if idx.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    scores = flat[idx]
    cls_ids = idx // (h * w)
    cell = idx % (h * w)
    ys, xs = cell // w, cell % w
    left, top, right, bottom = (np.exp(np.clip(reg[i, ys, xs], -6, 6)) * stride for i in range(4))
    cx, cy = (xs + 0.5) * stride, (ys + 0.5) * stride
    xyxy = np.stack([cx - left, cy - top, cx + right, cy + bottom], axis=1).astype(np.float32)
    return xyxy, scores.astype(np.float32), cls_ids.astype(np.int64)


class CenterNetDetector:
    """Detector over a ``lineguard train --arch centernet`` export. Construct via the factory (type: centernet)."""

    def __init__(
        self,
        model_dir: Path,
        *,
        name: str | None = None,
        conf: float = OPERATING_CONF,
        iou: float = 0.5,
        threads: int = 2,
        max_det: int = 100,
    ) -> None:
        from vision.detectors.onnx import cpu_session

        model_dir = Path(model_dir)
        if model_dir.is_file() and model_dir.suffix == ".onnx":
            model_dir = model_dir.parent
        model_path = model_dir / MODEL_FILE
        if not model_path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {model_path}")
        self.meta = CenterNetMeta.load(model_dir)
        self.spec = InputSpec.load(model_dir)
        self._session, self._input_name = cpu_session(model_path, threads, self.spec.size)
        outs = {o.name: o.shape for o in self._session.get_outputs()}
        if set(outs) != {"peaks", "reg"}:
            raise ValueError(f"{model_path}: outputs {sorted(outs)}, expected 'peaks' and 'reg' (a centernet export)")
        n_out = outs["peaks"][1]
        if isinstance(n_out, int) and n_out != len(self.spec.class_names):
            raise ValueError(f"{model_path}: {n_out} class outputs, the spec lists {len(self.spec.class_names)}")
        #: The classes the model emits, in output order: what the console offers and QA rules may name.
        self.classes: tuple[str, ...] = tuple(self.spec.class_names)
        self.name = name or f"centernet:{model_dir.parent.name}-{model_dir.name}"
        self.conf = conf
        self.iou = iou
        self.max_det = max_det

    def detect(self, frame: Frame) -> list[Detection]:
        gray = to_gray(frame.image)
        boxed, lb = letterbox(np.dstack([gray, gray, gray]), self.spec.size, self.spec.pad_value)
        peaks, reg = self._session.run(["peaks", "reg"], {self._input_name: to_tensor(boxed)})
        xyxy, scores, cls_ids = decode(peaks[0], reg[0], self.meta.stride, self.conf,
                                       max(self.meta.top_k, self.max_det))
        if len(scores) == 0:
            return []
        xywh = np.stack([xyxy[:, 0], xyxy[:, 1], xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], axis=1)
        kept = cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), cls_ids.tolist(), self.conf, self.iou,
                                       top_k=self.max_det)
        idx = np.asarray(kept, dtype=np.int64).reshape(-1)[: self.max_det]
        boxes = lb.to_original(xyxy[idx])
        h, w = gray.shape[:2]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        return [
            Detection(Box(float(b[0]), float(b[1]), float(b[2]), float(b[3])), self.classes[int(c)], float(s))
            for b, s, c in zip(boxes, scores[idx], cls_ids[idx], strict=True)
            if b[2] - b[0] >= 1 and b[3] - b[1] >= 1
        ]
