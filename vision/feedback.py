"""Operator feedback: store a frame with corrected labels as a training sample (DeepPCB layout).

The dataset directory is the one ``train --format deeppcb`` (and ``vision.datasets.load(dir, "deeppcb")``)
reads: image pair + annotation file, one line appended to the list file. A sidecar ``feedback.jsonl``
records where each sample came from (camera, part, time) without changing the DeepPCB files.

Labels take the classes of the camera's model (``classes=detector.classes``): a steel line's feedback holds
``scratches`` and ``pitted_surface``, written with a ``classes.txt`` that maps the layout's type ids to them.
Without ``classes`` the six DeepPCB classes are assumed (the layout's own).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from vision.datasets import append_deeppcb
from vision.types import DEFECT_CLASSES, UNKNOWN_CLASS, Frame, Label, Sample

# One lock per process: two operators saving at once must not get the same file index.
_LOCK = threading.Lock()


def save_feedback(
    dataset_dir: Path,
    frame: Frame,
    labels: Sequence[Label],
    *,
    list_name: str = "trainval.txt",
    group: str = "80000",
    note: str = "",
    classes: Sequence[str] | None = None,
) -> Sample:
    """Save ``frame`` (image + its template, if any) with ``labels`` (the operator's corrected truth; empty
    = good part). Labels must use ``classes`` (the camera's model's classes; default the six DeepPCB ones):
    ``unknown`` is never a training label."""
    allowed = tuple(classes) if classes is not None else DEFECT_CLASSES
    bad = [lab.cls for lab in labels if lab.cls not in allowed or lab.cls == UNKNOWN_CLASS]
    if bad:
        raise ValueError(f"feedback labels must be one of the model's classes {allowed}; got {bad}")
    h, w = frame.image.shape[:2]
    for lab in labels:
        b = lab.box
        if not (0 <= b.x1 < b.x2 <= w and 0 <= b.y1 < b.y2 <= h):
            raise ValueError(f"label box {b} is empty or outside the {w}x{h} image")
    dataset_dir = Path(dataset_dir)
    with _LOCK:
        # PNG: lossless, so the saved frame is exactly what the operator judged.
        sample = append_deeppcb(
            dataset_dir, frame.image, frame.template, labels, list_name=list_name, group=group, ext=".png",
            classes=[c for c in allowed if c != UNKNOWN_CLASS],
        )
        rec = {
            "sample_id": sample.sample_id,
            "camera": frame.camera,
            "seq": frame.seq,
            "part_id": frame.part_id,
            "frame_ts": frame.ts,
            "saved_ts": time.time(),
            "n_labels": len(labels),
            "note": note,
        }
        with (dataset_dir / "feedback.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
    return sample
