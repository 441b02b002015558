"""Golden-template difference detector: no training, needs the defect-free template of the part.

Pipeline (all OpenCV, about a few ms per 640x640 image on one CPU core):

1. Binarise test and template (copper dark by default, as in DeepPCB; ``copper_dark=False`` for the inverse).
2. Optionally align the template to the test with phase correlation (a translation; boards on a fixture move
   by a few pixels at most), applied only when the shift is plausible (< ``max_shift`` px).
3. Copper *added* = test copper and not template copper; copper *removed* = the reverse. A 1-px edge
   tolerance (opening) removes the ragged-edge noise of binarised JPEGs while keeping 2-px defects.
4. Group nearby difference pixels (dilation), connected components -> candidate boxes, drop specks
   smaller than ``min_area`` px, pad boxes like DeepPCB's annotations.
5. Classify each candidate by what it did to the copper topology in a local window:

   ====================  ==================================================================================
   extra copper          * joins template components (fewer components than in template) -> short
                         * touches existing copper, no join                              -> spur
                         * free-standing (a new component)                               -> spurious_copper
   missing copper        * splits a template component (more components in test)         -> open
                         * a hole fully surrounded by copper                             -> pin_hole
                         * a bite out of an edge, no split                               -> mousebite
   mixed / huge / none   both added and removed in one blob in similar amounts, or larger than
                         ``max_area`` (misalignment, wrong template)                             -> unknown
   ====================  ==================================================================================

Confidence grows with the amount of changed copper (a 1-px speck is less sure than a 40-px bridge) and is
lowered when the topology rule was not decisive.
"""

from __future__ import annotations

import cv2
import numpy as np

from vision.types import DEFECT_CLASSES, UNKNOWN_CLASS, Box, Detection, Frame, Image

_BOX_PAD = 6
_BOX_MIN = 20


def _gray(img: Image) -> Image:
    if img.ndim == 3:
        return np.asarray(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), dtype=np.uint8)
    return img


class TemplateDiffDetector:
    """Detector Protocol implementation comparing each frame with its golden template."""

    name = "template-diff"
    classes: tuple[str, ...] = DEFECT_CLASSES

    def __init__(
        self,
        *,
        copper_dark: bool = True,
        threshold: int = 127,
        min_area: int = 6,
        max_area: int = 20_000,
        group_px: int = 3,
        align: bool = True,
        max_shift: float = 20.0,
        align_trigger: float = 0.01,
    ) -> None:
        self.copper_dark = copper_dark
        self.threshold = threshold
        self.min_area = min_area
        self.max_area = max_area
        self.group_px = group_px
        self.align = align
        self.max_shift = max_shift
        self.align_trigger = align_trigger
        self._k3 = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
        self._kg = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * group_px + 1, 2 * group_px + 1))

    # ------------------------------------------------------------------------------------------ helpers

    def _copper(self, img: Image) -> np.ndarray:
        mode = cv2.THRESH_BINARY_INV if self.copper_dark else cv2.THRESH_BINARY
        _, m = cv2.threshold(_gray(img), self.threshold, 1, mode)
        return m

    def _aligned(self, test: np.ndarray, temp: np.ndarray) -> np.ndarray:
        """Shift the template onto the test by phase correlation when the shift is real and plausible."""
        (dx, dy), response = cv2.phaseCorrelate(temp.astype(np.float32), test.astype(np.float32))
        if response < 0.1 or abs(dx) + abs(dy) < 0.5 or max(abs(dx), abs(dy)) > self.max_shift:
            return temp
        m = np.array([[1, 0, round(dx)], [0, 1, round(dy)]], dtype=np.float32)
        h, w = temp.shape
        out = cv2.warpAffine(temp, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
        return np.asarray(out, dtype=np.uint8)

    @staticmethod
    def _n_components(mask: np.ndarray, min_px: int = 12) -> int:
        """Copper components in a crop, ignoring specks (binarisation/JPEG noise would fake a split)."""
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        return int((stats[1:, cv2.CC_STAT_AREA] >= min_px).sum())

    @staticmethod
    def _pad_box(x: int, y: int, w: int, h: int, shape: tuple[int, ...]) -> Box:
        x1, y1, x2, y2 = x - _BOX_PAD, y - _BOX_PAD, x + w + _BOX_PAD, y + h + _BOX_PAD
        if x2 - x1 < _BOX_MIN:
            c = (x1 + x2) / 2
            x1, x2 = round(c - _BOX_MIN / 2), round(c + _BOX_MIN / 2)
        if y2 - y1 < _BOX_MIN:
            c = (y1 + y2) / 2
            y1, y2 = round(c - _BOX_MIN / 2), round(c + _BOX_MIN / 2)
        return Box(float(max(0, x1)), float(max(0, y1)), float(min(shape[1], x2)), float(min(shape[0], y2)))

    def classify(
        self, test_cu: np.ndarray, temp_cu: np.ndarray, added: np.ndarray, removed: np.ndarray
    ) -> tuple[str, float]:
        """Class and confidence of one candidate, from crops around it (see the module table)."""
        n_add, n_rem = int(added.sum()), int(removed.sum())
        total = n_add + n_rem
        if total == 0 or total > self.max_area:
            return UNKNOWN_CLASS, 0.3
        base = min(0.95, 0.5 + 0.45 * min(1.0, total / 60.0))
        dominant = max(n_add, n_rem) / total
        if dominant < 0.7:  # copper both added and removed in one place: not one of the six shapes
            return UNKNOWN_CLASS, base * 0.6
        c_test, c_temp = self._n_components(test_cu), self._n_components(temp_cu)
        if n_add >= n_rem:
            if c_test < c_temp:
                return "short", base
            touches = cv2.dilate(added, self._k3, iterations=2) & temp_cu
            if touches.any():
                return "spur", base
            if c_test > c_temp:
                return "spurious_copper", base
            return UNKNOWN_CLASS, base * 0.6
        if c_test > c_temp:
            return "open", base
        # A pin-hole leaves copper all round it: the background region holding the missing pixels is
        # enclosed in the test image (does not reach the crop border).
        _, bg_lab = cv2.connectedComponents(1 - test_cu, connectivity=4)
        ids = np.unique(bg_lab[(removed > 0) & (test_cu == 0)])
        ids = ids[ids > 0]
        if len(ids):
            border = np.concatenate([bg_lab[0], bg_lab[-1], bg_lab[:, 0], bg_lab[:, -1]])
            if not np.isin(ids, border).any():
                return "pin_hole", base
        return "mousebite", base * (0.9 if dominant > 0.9 else 0.7)

    # ------------------------------------------------------------------------------------------- detect

    def detect(self, frame: Frame) -> list[Detection]:
        if frame.template is None:
            raise ValueError(f"{self.name}: frame {frame.camera}#{frame.seq} has no golden template")
        test_cu = self._copper(frame.image)
        temp_cu = self._copper(frame.template)
        if test_cu.shape != temp_cu.shape:
            raise ValueError(f"{self.name}: image {test_cu.shape} and template {temp_cu.shape} differ in size")
        # Phase correlation costs ~15 ms at 640x640, so run it only when the raw difference says the pair
        # is off (an aligned pair differs in well under align_trigger of its pixels).
        if self.align and np.count_nonzero(test_cu != temp_cu) > self.align_trigger * test_cu.size:
            temp_cu = self._aligned(test_cu, temp_cu)
        added = test_cu & (1 - temp_cu)
        removed = temp_cu & (1 - test_cu)
        # Edge tolerance: drop 1-px slivers along edges (binarisation/JPEG noise), keep anything 2 px thick.
        added = np.asarray(cv2.morphologyEx(added, cv2.MORPH_OPEN, self._k3), dtype=np.uint8)
        removed = np.asarray(cv2.morphologyEx(removed, cv2.MORPH_OPEN, self._k3), dtype=np.uint8)
        diff = added | removed
        grouped = cv2.dilate(diff, self._kg)
        n, lab, stats, _ = cv2.connectedComponentsWithStats(grouped, connectivity=8)
        h, w = diff.shape
        out: list[Detection] = []
        for i in range(1, n):
            x, y, bw, bh, _ = (int(v) for v in stats[i])
            # Undo the grouping dilation so the box hugs the changed pixels.
            region = (lab[y : y + bh, x : x + bw] == i).astype(np.uint8)
            d = diff[y : y + bh, x : x + bw] & region
            if int(d.sum()) < self.min_area:
                continue
            ys, xs = np.nonzero(d)
            x0, y0, x1, y1 = (
                x + int(xs.min()),
                y + int(ys.min()),
                x + int(xs.max()) + 1,
                y + int(ys.max()) + 1,
            )
            m = 12  # context so a split/join is visible within the crop
            cx0, cy0, cx1, cy1 = max(0, x0 - m), max(0, y0 - m), min(w, x1 + m), min(h, y1 + m)
            sub = lab[cy0:cy1, cx0:cx1] == i
            cls, conf = self.classify(
                np.ascontiguousarray(test_cu[cy0:cy1, cx0:cx1]),
                np.ascontiguousarray(temp_cu[cy0:cy1, cx0:cx1]),
                (added[cy0:cy1, cx0:cx1] & sub).astype(np.uint8),
                (removed[cy0:cy1, cx0:cx1] & sub).astype(np.uint8),
            )
            out.append(Detection(self._pad_box(x0, y0, x1 - x0, y1 - y0, diff.shape), cls, round(conf, 4)))
        return out


def _bench(argv: list[str] | None = None) -> None:
    """Measure on a dataset's fixed holdout: ``python -m vision.detectors.template --data DIR``."""
    import argparse
    import json
    import time
    from pathlib import Path

    from vision.datasets import load, split_holdout
    from vision.metrics import evaluate

    ap = argparse.ArgumentParser(description=_bench.__doc__)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--format", default="deeppcb")
    ap.add_argument("--split", default=None)
    ap.add_argument("--holdout", type=int, default=200, help="evaluate on the last N samples (0 = all)")
    ap.add_argument("--no-align", action="store_true")
    args = ap.parse_args(argv)
    samples = load(args.data, args.format, args.split)
    if args.holdout:
        samples = split_holdout(samples, args.holdout)[1]
    det = TemplateDiffDetector(align=not args.no_align)
    preds, truths, times = [], [], []
    for k, s in enumerate(samples):
        raw = cv2.imread(str(s.image_path), cv2.IMREAD_GRAYSCALE)
        raw_t = cv2.imread(str(s.template_path), cv2.IMREAD_GRAYSCALE) if s.template_path else None
        if raw is None or raw_t is None:
            raise SystemExit(f"cannot read image/template of {s.sample_id}")
        img, tmpl = np.asarray(raw, dtype=np.uint8), np.asarray(raw_t, dtype=np.uint8)
        t0 = time.perf_counter()
        preds.append(det.detect(Frame("bench", k, 0.0, img, tmpl)))
        times.append((time.perf_counter() - t0) * 1000)
        truths.append(s.labels)
    rep = evaluate(preds, truths, DEFECT_CLASSES)
    out = rep.as_dict()
    out["images"] = len(samples)
    out["latency_ms"] = {
        "mean": float(np.mean(times)),
        "p50": float(np.median(times)),
        "p95": float(np.percentile(times, 95)),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    _bench()
