"""Golden-template difference detector: no training, needs the defect-free template of the part.

Pipeline (all OpenCV; about 7 ms per 640x640 pair on one busy 2-core CPU, see
docs/benchmarks/vision-template.md):

1. Binarise test and template (copper dark by default, as in DeepPCB; ``copper_dark=False`` for the inverse).
2. Align: when more than ``align_trigger`` of the pixels differ, estimate the template's translation by phase
   correlation at half resolution and refine it by trying the 3x3 neighbouring integer shifts at full
   resolution (fewest differing pixels wins). Many DeepPCB pairs are 1-2 px apart; shifts above
   ``max_shift`` are refused (a wrong template, not a moved board).
3. Copper *added* = test copper and not template copper; copper *removed* = the reverse. A 3x3 opening
   removes the 1-px ragged-edge noise of binarised scans while keeping defects 2 px or thicker.
4. Group nearby difference pixels (dilation), connected components -> candidates; drop those under
   ``min_area`` px; pad boxes by 10 px (min 20 px a side), the scale of DeepPCB's annotations.
5. Classify each candidate by what it did to the copper topology in a local window (components under
   12 px are ignored when counting, so JPEG specks do not fake a split or a join):

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

6. Confidence (see ``confidence``) comes from evidence, not from a model: the thickness of the change
   (largest inscribed distance; slivers between two scans are under ~2 px, real defects thicker), its size,
   and how decisive the rule was (lower for ``unknown``, for a mousebite with some added copper, and for a
   long thin spur/mousebite running along an edge, which is usually a scan difference). On DeepPCB a
   confidence threshold of 0.5 is a good operating point; keep everything (0.0) for recall.
"""

from __future__ import annotations

import cv2
import numpy as np

from vision.types import DEFECT_CLASSES, UNKNOWN_CLASS, Box, Detection, Frame, Image

_BOX_PAD = 10  # best IoU with DeepPCB annotations (tuned on the training part, not the holdout)
_BOX_MIN = 20
#: ``TemplateDiffDetector.proposals``' passes: (opening side, grouping radius) in px (see there).
PROPOSAL_PASSES: tuple[tuple[int, int], ...] = ((3, 3), (5, 3))


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
        min_confidence: float = 0.0,
    ) -> None:
        self.copper_dark = copper_dark
        self.threshold = threshold
        self.min_area = min_area
        self.max_area = max_area
        self.group_px = group_px
        self.align = align
        self.max_shift = max_shift
        self.align_trigger = align_trigger
        self.min_confidence = min_confidence
        self._k3 = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
        self._kg = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * group_px + 1, 2 * group_px + 1))

    # ------------------------------------------------------------------------------------------ helpers

    def _copper(self, img: Image) -> np.ndarray:
        mode = cv2.THRESH_BINARY_INV if self.copper_dark else cv2.THRESH_BINARY
        _, m = cv2.threshold(_gray(img), self.threshold, 1, mode)
        return m

    @staticmethod
    def _shifted(temp: np.ndarray, dx: int, dy: int) -> np.ndarray:
        m = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
        h, w = temp.shape
        out = cv2.warpAffine(temp, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
        return np.asarray(out, dtype=np.uint8)

    def _shift(self, test: np.ndarray, temp: np.ndarray) -> tuple[int, int]:
        """Integer (dx, dy) that moves the template onto the test; (0, 0) when no real, plausible shift.

        Phase correlation at half resolution (4x cheaper) gives the shift to +-1 px; the 3x3 neighbourhood
        at full resolution is then searched for the fewest differing pixels.
        """
        small = (test.shape[1] // 2, test.shape[0] // 2)
        a = cv2.resize(temp.astype(np.float32), small, interpolation=cv2.INTER_AREA)
        b = cv2.resize(test.astype(np.float32), small, interpolation=cv2.INTER_AREA)
        (dx, dy), response = cv2.phaseCorrelate(a, b)
        if response < 0.05 or max(abs(dx), abs(dy)) * 2 > self.max_shift:
            return (0, 0)
        cx, cy = round(dx * 2), round(dy * 2)
        m = int(self.max_shift) + 1
        h, w = test.shape
        core = test[m : h - m, m : w - m]  # compare on the interior so every shift sees the same pixels
        best, best_n = (0, 0), int(np.count_nonzero(core != temp[m : h - m, m : w - m]))
        for ox in (-1, 0, 1):
            for oy in (-1, 0, 1):
                sx, sy = cx + ox, cy + oy
                if (sx == 0 and sy == 0) or max(abs(sx), abs(sy)) >= m:
                    continue
                n = int(np.count_nonzero(core != temp[m - sy : h - m - sy, m - sx : w - m - sx]))
                if n < best_n:
                    best, best_n = (sx, sy), n
        return best

    @staticmethod
    def _n_components(mask: np.ndarray, min_px: int = 12) -> int:
        """Copper components in a crop, ignoring specks (binarisation/JPEG noise would fake a split)."""
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
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
        """Class of one candidate, from crops around it (see the module table), and how sure the rule is
        (1.0 decisive, lower when it fell through to a default)."""
        n_add, n_rem = int(added.sum()), int(removed.sum())
        total = n_add + n_rem
        if total == 0 or total > self.max_area:
            return UNKNOWN_CLASS, 0.5
        dominant = max(n_add, n_rem) / total
        if dominant < 0.7:  # copper both added and removed in one place: not one of the six shapes
            return UNKNOWN_CLASS, 0.6
        c_test, c_temp = self._n_components(test_cu), self._n_components(temp_cu)
        if n_add >= n_rem:
            if c_test < c_temp:
                return "short", 1.0
            touches = cv2.dilate(added, self._k3, iterations=2) & temp_cu
            if touches.any():
                return "spur", 1.0
            return "spurious_copper", 1.0  # touches nothing: a new island of copper
        if c_test > c_temp:
            return "open", 1.0
        # A pin-hole leaves copper all round it: the background region holding the missing pixels is
        # enclosed in the test image (does not reach the crop border).
        _, bg_lab = cv2.connectedComponents(1 - test_cu, connectivity=4)
        ids = np.unique(bg_lab[(removed > 0) & (test_cu == 0)])
        ids = ids[ids > 0]
        if len(ids):
            border = np.concatenate([bg_lab[0], bg_lab[-1], bg_lab[:, 0], bg_lab[:, -1]])
            if not np.isin(ids, border).any():
                return "pin_hole", 1.0
        return "mousebite", 0.9 if dominant > 0.9 else 0.7

    @staticmethod
    def confidence(thickness: float, n_px: int, sure: float) -> float:
        """Confidence from the evidence: thickness (1.9 px, an edge sliver -> ~0.3; 2.6 px or more -> full)
        and size (full at 60 changed px), times how decisive the class rule was."""
        t = min(1.0, max(0.0, (thickness - 1.6) / 1.0))
        a = 0.6 + 0.4 * min(1.0, n_px / 60.0)
        return round(0.05 + 0.9 * t * a * sure, 4)

    # ------------------------------------------------------------------------------------------- detect

    def _binarised(self, frame: Frame) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """(test copper, template copper aligned onto the test, the integer shift applied to it), 0/1 uint8."""
        if frame.template is None:
            raise ValueError(f"{self.name}: frame {frame.camera}#{frame.seq} has no golden template")
        test_cu = self._copper(frame.image)
        temp_cu = self._copper(frame.template)
        if test_cu.shape != temp_cu.shape:
            raise ValueError(f"{self.name}: image {test_cu.shape} and template {temp_cu.shape} differ in size")
        # Alignment costs a few ms, so run it only when the raw difference says the pair is off (an aligned
        # pair differs in well under align_trigger of its pixels).
        shift = (0, 0)
        if self.align and np.count_nonzero(test_cu != temp_cu) > self.align_trigger * test_cu.size:
            shift = self._shift(test_cu, temp_cu)
            if shift != (0, 0):
                temp_cu = self._shifted(temp_cu, *shift)
        return test_cu, temp_cu, shift

    def proposals(self, frame: Frame, passes: tuple[tuple[int, int], ...] = PROPOSAL_PASSES) -> list[Box]:
        """Candidate boxes; see ``proposals_and_shift``."""
        return self.proposals_and_shift(frame, passes)[0]

    def proposals_and_shift(
        self, frame: Frame, passes: tuple[tuple[int, int], ...] = PROPOSAL_PASSES
    ) -> tuple[list[Box], tuple[int, int]]:
        """Candidate boxes (padded like ``detect``'s) for a second stage to classify; no classes, no scores.

        One box set per pass in ``passes`` (opening side after a 3x3 closing, grouping radius), concatenated:
        duplicates are expected and left to the second stage's NMS. Why several passes: the 3x3 opening of
        ``detect`` also erases defects that the binarised scan shows dithered (a speckled mousebite), and
        keeps 2-px slivers along trace edges that chain a defect to its neighbours into one long box; the
        closing re-fills the speckle and the 5x5 pass cuts the chains. On DeepPCB's training lines the
        share of defects with a proposal at IoU > 0.33 goes from 0.984 (detect's boxes) to 0.995.
        Also returns the integer shift that aligned the template, so a second stage cuts its crops from
        the same alignment instead of estimating it again.
        """
        test_cu, temp_cu, shift = self._binarised(frame)
        raw = (test_cu & (1 - temp_cu), temp_cu & (1 - test_cu))
        closed = [cv2.morphologyEx(m, cv2.MORPH_CLOSE, self._k3) for m in raw]
        out: list[Box] = []
        seen: set[Box] = set()
        for k, g in passes:
            kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
            group = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * g + 1, 2 * g + 1))
            diff = np.zeros_like(test_cu)
            for m in closed:
                diff |= np.asarray(cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel), dtype=np.uint8)
            _, lab = cv2.connectedComponents(cv2.dilate(diff, group), connectivity=8)
            # Tight box of each group's changed pixels (the dilation only groups them), all groups at once.
            pts = cv2.findNonZero(diff)  # (x, y) per changed pixel; several times faster than np.nonzero
            if pts is None:
                continue
            xy = np.asarray(pts).reshape(-1, 2)
            xs, ys = xy[:, 0], xy[:, 1]
            ids = lab[ys, xs]
            order = np.argsort(ids, kind="stable")
            ids, xs, ys = ids[order], xs[order], ys[order]
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            count = np.diff(np.r_[starts, len(ids)])
            x0s, x1s = np.minimum.reduceat(xs, starts), np.maximum.reduceat(xs, starts)
            y0s, y1s = np.minimum.reduceat(ys, starts), np.maximum.reduceat(ys, starts)
            for j in range(len(starts)):  # groups in label order, as connectedComponents numbers them
                if count[j] < self.min_area:
                    continue
                x0, y0 = int(x0s[j]), int(y0s[j])
                box = self._pad_box(x0, y0, int(x1s[j]) + 1 - x0, int(y1s[j]) + 1 - y0, diff.shape)
                if box not in seen:  # the passes agree on most clean defects: score each box once
                    seen.add(box)
                    out.append(box)
        return out, shift

    def detect(self, frame: Frame) -> list[Detection]:
        test_cu, temp_cu, _ = self._binarised(frame)
        added = test_cu & (1 - temp_cu)
        removed = temp_cu & (1 - test_cu)
        # Thickness evidence: the largest inscribed distance of the raw difference. Edge noise between two
        # scans is a sliver (<= ~2 px across); real defects are thicker. Measured on DeepPCB's training part.
        thick = cv2.distanceTransform(test_cu ^ temp_cu, cv2.DIST_L2, 3)
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
            cls, sure = self.classify(
                np.ascontiguousarray(test_cu[cy0:cy1, cx0:cx1]),
                np.ascontiguousarray(temp_cu[cy0:cy1, cx0:cx1]),
                (added[cy0:cy1, cx0:cx1] & sub).astype(np.uint8),
                (removed[cy0:cy1, cx0:cx1] & sub).astype(np.uint8),
            )
            ext = max(x1 - x0, y1 - y0)
            n_px = int(d.sum())
            if cls in ("spur", "mousebite") and ext > 25 and ext * ext > 8 * n_px:
                # A long, thin change along an edge is more often two scans disagreeing than a spur or a
                # bite (true ones are compact: 95% under 25 px on DeepPCB's training part).
                sure *= 0.5
            t_max = float(thick[y : y + bh, x : x + bw][region > 0].max())
            conf = self.confidence(t_max, n_px, sure)
            if conf < self.min_confidence:
                continue
            out.append(Detection(self._pad_box(x0, y0, x1 - x0, y1 - y0, diff.shape), cls, conf))
        return out


def _bench(argv: list[str] | None = None) -> None:
    """Measure on a dataset's fixed holdout: ``python -m vision.detectors.template --data DIR``.

    Prints JSON: mAP50 / mAP50-95 over the six classes; DeepPCB P/R/F (same class, IoU > 0.33; an
    ``unknown`` detection counts as a false positive) and class-agnostic P/R/F at IoU > 0.33, for all
    detections and at the operating confidence ``--conf``; latency of ``detect`` alone (images preloaded).
    """
    import argparse
    import json
    import time
    from pathlib import Path

    from vision.datasets import load, split_holdout
    from vision.metrics import PRF, evaluate, precision_recall

    ap = argparse.ArgumentParser(description=_bench.__doc__)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--format", default="deeppcb")
    ap.add_argument("--split", default=None)
    ap.add_argument("--holdout", type=int, default=200, help="evaluate on the last N samples (0 = all)")
    ap.add_argument("--conf", type=float, default=0.5, help="operating confidence for P/R/F")
    ap.add_argument("--no-align", action="store_true")
    args = ap.parse_args(argv)
    samples = load(args.data, args.format, args.split)
    if args.holdout:
        samples = split_holdout(samples, args.holdout)[1]
    det = TemplateDiffDetector(align=not args.no_align)
    preds: list[list[Detection]] = []
    truths = []
    times = []
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

    def prf(ps: list[list[Detection]]) -> dict[str, object]:
        overall, per = precision_recall(ps, truths, classes=DEFECT_CLASSES)
        agn, _ = precision_recall(ps, truths, same_class=False)

        def d(p: PRF) -> dict[str, float]:
            return {
                "P": round(p.precision, 4),
                "R": round(p.recall, 4),
                "F": round(p.f1, 4),
                "tp": p.tp,
                "fp": p.fp,
                "fn": p.fn,
            }

        return {"same_class": d(overall), "agnostic": d(agn), "per_class": {c: d(v) for c, v in per.items()}}

    rep = evaluate(preds, truths, DEFECT_CLASSES)
    at_conf = [[x for x in p if x.confidence >= args.conf] for p in preds]
    out = {
        "images": len(samples),
        "truth_boxes": sum(len(t) for t in truths),
        "map50": round(rep.map50, 4),
        "map50_95": round(rep.map50_95, 4),
        "ap50": {c: round(v, 4) for c, v in rep.ap50.items()},
        "unknown_detections": sum(x.cls == UNKNOWN_CLASS for p in preds for x in p),
        "all_detections": prf(preds),
        f"conf>={args.conf}": prf(at_conf),
        "latency_ms": {
            "mean": round(float(np.mean(times)), 2),
            "p50": round(float(np.median(times)), 2),
            "p95": round(float(np.percentile(times, 95)), 2),
        },
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    _bench()
