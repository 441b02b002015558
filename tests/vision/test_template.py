"""TemplateDiffDetector: the topology heuristics on hand-drawn cases, and recall on synthetic boards."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vision.detectors.base import Detector
from vision.detectors.template import TemplateDiffDetector
from vision.metrics import precision_recall
from vision.synth import make_board
from vision.types import UNKNOWN_CLASS, Box, Frame, Image

W, B = 255, 0  # DeepPCB: white background, black copper


def _frame(img: Image, tmpl: Image | None) -> Frame:
    return Frame("t", 0, 0.0, img, tmpl)


def _two_traces() -> Image:
    t = np.full((200, 200), W, np.uint8)
    cv2.rectangle(t, (20, 60), (180, 71), B, -1)  # 12 px trace
    cv2.rectangle(t, (20, 100), (180, 111), B, -1)
    cv2.rectangle(t, (120, 140), (180, 195), B, -1)  # a copper area
    return t


def _one(det: TemplateDiffDetector, img: Image, tmpl: Image) -> tuple[str, Box]:
    out = det.detect(_frame(img, tmpl))
    assert len(out) == 1, out
    return out[0].cls, out[0].box


@pytest.mark.parametrize(
    ("cls", "draw"),
    [
        ("short", lambda im: cv2.rectangle(im, (80, 71), (84, 100), B, -1)),
        ("open", lambda im: cv2.rectangle(im, (80, 58), (84, 73), W, -1)),
        ("spur", lambda im: cv2.rectangle(im, (80, 72), (83, 82), B, -1)),
        ("spurious_copper", lambda im: cv2.circle(im, (60, 30), 4, B, -1)),
        ("mousebite", lambda im: cv2.circle(im, (80, 60), 4, W, -1)),
        ("pin_hole", lambda im: cv2.circle(im, (150, 167), 3, W, -1)),
    ],
)
def test_heuristics_on_drawn_defects(cls: str, draw: object) -> None:
    t = _two_traces()
    img = t.copy()
    draw(img)  # type: ignore[operator]
    got, box = _one(TemplateDiffDetector(), img, t)
    assert got == cls
    changed = np.argwhere(img != t)
    (y0, x0), (y1, x1) = changed.min(0), changed.max(0)
    assert box.x1 <= x0 and box.y1 <= y0 and box.x2 >= x1 + 1 and box.y2 >= y1 + 1


def test_mixed_change_is_unknown() -> None:
    t = _two_traces()
    img = t.copy()
    cv2.rectangle(img, (60, 20), (90, 40), B, -1)  # copper added ...
    cv2.rectangle(img, (60, 60), (90, 71), W, -1)  # ... and a trace removed in the same place
    cv2.rectangle(img, (60, 40), (90, 60), B, -1)
    out = TemplateDiffDetector().detect(_frame(img, t))
    assert [d.cls for d in out] == [UNKNOWN_CLASS] or all(d.cls != "open" for d in out)


def test_good_part_and_edge_noise() -> None:
    t = _two_traces()
    noisy = t.copy()
    noisy[60, 20:180] = W  # a 1-px sliver along an edge: binarisation noise, not a defect
    assert TemplateDiffDetector().detect(_frame(t.copy(), t)) == []
    assert TemplateDiffDetector().detect(_frame(noisy, t)) == []


def test_protocol_errors_and_color_input() -> None:
    det = TemplateDiffDetector()
    assert isinstance(det, Detector)
    t = _two_traces()
    with pytest.raises(ValueError, match="has no golden template"):
        det.detect(_frame(t, None))
    with pytest.raises(ValueError, match="differ in size"):
        det.detect(_frame(t, t[:100]))
    img = t.copy()
    cv2.circle(img, (60, 30), 4, B, -1)
    out = det.detect(_frame(np.asarray(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR), dtype=np.uint8), t))
    assert [d.cls for d in out] == ["spurious_copper"]


def _run(det: TemplateDiffDetector, seeds: range, shift: int = 0) -> tuple[float, float]:
    preds, truths = [], []
    for s in seeds:
        b = make_board(1000 + s)
        tmpl = np.roll(b.template, (shift, -shift), axis=(0, 1)) if shift else b.template
        preds.append(det.detect(_frame(b.image, tmpl)))
        truths.append(b.labels)
    agn, _ = precision_recall(preds, truths, same_class=False)
    cls, _ = precision_recall(preds, truths)
    return agn.recall, cls.recall


def test_recall_on_synthetic_boards() -> None:
    agn, same = _run(TemplateDiffDetector(), range(15))
    assert agn >= 0.93
    assert same >= 0.9


def test_alignment_recovers_a_shifted_template() -> None:
    aligned_agn, _ = _run(TemplateDiffDetector(), range(5), shift=3)
    assert aligned_agn >= 0.85
    unaligned = TemplateDiffDetector(align=False)
    b = make_board(1000)
    shifted = np.roll(b.template, (3, -3), axis=(0, 1))
    assert len(unaligned.detect(_frame(b.image, shifted))) > 3 * len(b.labels)  # every edge differs
