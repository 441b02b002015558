"""YoloDetector: the PyTorch (ultralytics) model behind the Detector interface.

For training-time checks only (compare with the exported ONNX model, debug a run); the edge uses
vision.detectors.onnx. Feeds exactly the pixels OnnxDetector feeds: same stacking, same letterbox.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vision.registry import WEIGHTS_FILE, parse_ref, resolve
from vision.stacking import InputSpec, letterbox, stack_frame
from vision.types import Box, Detection, Frame


class YoloDetector:
    def __init__(self, weights: Path, spec: InputSpec, *, name: str | None = None, conf: float = 0.25,
                 iou: float = 0.5, threads: int = 2, max_det: int = 300) -> None:
        from vision.train import _import_ultralytics

        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(f"weights not found: {weights}")
        ultralytics = _import_ultralytics()
        import torch

        torch.set_num_threads(max(1, threads))
        self._model = ultralytics.YOLO(str(weights))
        self.spec = spec
        self.classes: tuple[str, ...] = tuple(spec.class_names)
        self.name = name or f"yolo:{weights.parent.name}"
        self.conf, self.iou, self.max_det = conf, iou, max_det

    @classmethod
    def from_dir(cls, path: Path, **kwargs: Any) -> YoloDetector:
        path = Path(path)
        kwargs.setdefault("name", f"yolo:{path.parent.name}-{path.name}")
        return cls(path / WEIGHTS_FILE, InputSpec.load(path), **kwargs)

    @classmethod
    def load(cls, ref: str | Path, registry: Path | None = None, **kwargs: Any) -> YoloDetector:
        p = Path(ref)
        if p.is_dir():
            return cls.from_dir(p, **kwargs)
        if p.is_file() and p.suffix == ".pt":
            return cls(p, InputSpec.load(p.parent), **kwargs)
        if registry is None:
            raise LookupError(f"{ref!r} is not a model dir or .pt, and no registry was given")
        name, version = parse_ref(str(ref))
        return cls.from_dir(resolve(registry, name, version).path, **kwargs)

    def detect(self, frame: Frame) -> list[Detection]:
        stacked, _ = stack_frame(frame, self.spec.stacking)
        boxed, lb = letterbox(stacked, self.spec.size, self.spec.pad_value)
        # ultralytics treats numpy input as BGR and flips it; pre-flip so the net sees (test, template, diff).
        res = self._model.predict(np.ascontiguousarray(boxed[:, :, ::-1]), imgsz=self.spec.size, conf=self.conf,
                                  iou=self.iou, max_det=self.max_det, device="cpu", verbose=False)[0]
        if res.boxes is None or len(res.boxes) == 0:
            return []
        xyxy = lb.to_original(res.boxes.xyxy.cpu().numpy())
        h, w = frame.image.shape[:2]
        xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, w)
        xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, h)
        confs = res.boxes.conf.cpu().numpy()
        cls_ids = res.boxes.cls.cpu().numpy().astype(int)
        return [
            Detection(Box(*(float(v) for v in b)), self.classes[c], float(s))
            for b, s, c in zip(xyxy, confs, cls_ids, strict=True)
        ]
