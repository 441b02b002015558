"""Plain data types shared by every part of vision/: boxes, detections, samples, frames.

Kept free of torch and of any detector so that the edge runtime, the dataset importers and the
trainer all speak the same language.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

# DeepPCB's six defect classes, in the order of its type ids 1..6 (Tang et al., 2019).
DEFECT_CLASSES: tuple[str, ...] = ("open", "short", "mousebite", "spur", "spurious_copper", "pin_hole")
# A difference against the golden template that matches no trained class.
UNKNOWN_CLASS = "unknown"

Image = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Box:
    """An axis-aligned box in pixel corners (x1, y1) top-left, (x2, y2) bottom-right."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return max(0.0, self.x2 - self.x1)

    @property
    def height(self) -> float:
        return max(0.0, self.y2 - self.y1)

    @property
    def area(self) -> float:
        return self.width * self.height

    def intersection(self, other: Box) -> float:
        """Area of the overlap (0 when disjoint)."""
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        return ix * iy

    def iou(self, other: Box) -> float:
        inter = self.intersection(other)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Label:
    """A ground-truth object: a box and its class name."""

    box: Box
    cls: str


@dataclass(frozen=True, slots=True)
class Detection:
    """A detector's output: a box, a class name and a confidence in [0, 1]."""

    box: Box
    cls: str
    confidence: float


@dataclass(slots=True)
class Sample:
    """One dataset item: an inspected image, its optional golden template, and its labels.

    Images are loaded lazily from paths so a 10,000-image dataset costs no memory to list.
    """

    image_path: Path
    labels: list[Label]
    template_path: Path | None = None
    sample_id: str = ""


@dataclass(slots=True)
class Frame:
    """One frame from an image source, as the inspection loop sees it."""

    camera: str
    seq: int
    ts: float  # unix seconds
    image: Image  # grayscale (H, W) or BGR (H, W, 3)
    template: Image | None = None
    # Ground truth where the source knows it (synthetic boards, replayed datasets); None on a real line.
    truth: list[Label] | None = None
    part_id: str = ""
    meta: dict[str, str] = field(default_factory=dict)
