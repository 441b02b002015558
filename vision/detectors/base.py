"""The one seam every detector plugs into.

A detector takes a Frame (image, optional golden template) and returns Detections. It owns its
own pre- and post-processing; the inspection loop knows nothing else about it. Modelled on
Frigate's detector plugins: one small interface, many implementations.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from vision.types import Detection, Frame


@runtime_checkable
class Detector(Protocol):
    """Finds defects in a frame."""

    #: Short identifier shown in metrics and the console, e.g. "onnx:pcb-synth-v3" or "template-diff".
    name: str
    #: Class names this detector can emit (besides vision.types.UNKNOWN_CLASS).
    classes: tuple[str, ...]

    def detect(self, frame: Frame) -> list[Detection]:
        """Return the defects found in ``frame``; an empty list for a good part."""
        ...
