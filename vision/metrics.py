"""Detection metrics: COCO-style AP (mAP50, mAP50-95) and the DeepPCB P/R/F-score protocol.

Definitions used here, so figures are comparable with the literature:

* AP (COCO, Lin et al. 2014; pycocotools ``COCOeval.evaluate``/``accumulate``): per class, detections of
  all images are sorted by confidence; each is matched greedily, per image, to the not-yet-matched
  same-class ground truth with the highest IoU >= threshold. Precision is made monotone (each point takes
  the max precision at any higher recall) and sampled at the 101 recall points 0, 0.01, ..., 1; AP is
  their mean (a recall point beyond the reached recall counts as precision 0). Classes without ground truth
  are left out of the mean. mAP50-95 averages AP over IoU thresholds 0.50, 0.55, ..., 0.95. ``map_deeppcb``
  is the same AP with the DeepPCB matching rule (IoU > 0.33) instead of IoU >= 0.5.
* DeepPCB (Tang et al., 2019, "On-line PCB Defect Detector On A New PCB Defect Dataset"): a detection is
  a true positive when its IoU with a same-class ground-truth box *exceeds* 0.33; precision = TP / detections,
  recall = TP / ground truths, F-score = 2PR / (P + R). Matching here is greedy by confidence, one ground
  truth per detection.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from vision.types import Detection, Label

COCO_IOUS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def match_image(
    dets: Sequence[Detection],
    truths: Sequence[Label],
    iou_thr: float,
    *,
    same_class: bool = True,
    strict: bool = False,
) -> list[int]:
    """Greedy matching in one image. Returns, for each detection (input order), the index of the ground
    truth it matched, or -1. Detections are taken by descending confidence (stable for ties); each takes the
    unmatched ground truth with the highest IoU that is >= ``iou_thr`` (> when ``strict``)."""
    result = [-1] * len(dets)
    taken = [False] * len(truths)
    order = sorted(range(len(dets)), key=lambda i: -dets[i].confidence)
    for i in order:
        d = dets[i]
        best, best_iou = -1, -1.0
        for j, t in enumerate(truths):
            if taken[j] or (same_class and t.cls != d.cls):
                continue
            iou = d.box.iou(t.box)
            ok = iou > iou_thr if strict else iou >= iou_thr
            if ok and iou > best_iou:
                best, best_iou = j, iou
        if best >= 0:
            taken[best] = True
            result[i] = best
    return result


@dataclass(frozen=True, slots=True)
class PRCurve:
    """One class's ranked detections at one matching rule: what AP and a precision-recall plot are made of.

    Arrays follow descending confidence: ``scores[i]`` is the i-th detection's confidence, ``recall[i]`` and
    ``precision[i]`` the rates over the first i + 1 detections (raw precision, not the monotone envelope).
    """

    n_truth: int
    scores: np.ndarray
    recall: np.ndarray
    precision: np.ndarray

    def at(self, confidence: float) -> tuple[float, float]:
        """(precision, recall) keeping detections with confidence >= ``confidence``: an operating point."""
        k = int(np.count_nonzero(self.scores >= confidence))
        if k == 0:
            return 0.0, 0.0
        return float(self.precision[k - 1]), float(self.recall[k - 1])

    def envelope(self) -> np.ndarray:
        """Precision made monotone: at each rank, the best precision at that recall or any higher one."""
        return np.maximum.accumulate(self.precision[::-1])[::-1]

    def average_precision(self) -> float:
        """COCO 101-point interpolated AP (see the module docstring)."""
        if not len(self.scores):
            return 0.0
        envelope = self.envelope()
        idx = np.searchsorted(self.recall, _RECALL_POINTS, side="left")
        sampled = np.where(idx < len(envelope), envelope[np.minimum(idx, len(envelope) - 1)], 0.0)
        return float(sampled.mean())


def pr_curve(
    preds: Sequence[Sequence[Detection]],
    truths: Sequence[Sequence[Label]],
    cls: str,
    iou_thr: float,
    *,
    strict: bool = False,
) -> PRCurve | None:
    """The ranked detections of class ``cls`` matched at ``iou_thr`` (``strict``: IoU must exceed it); None
    when the class has no truth."""
    _check_lengths(preds, truths)
    n_gt = sum(1 for ts in truths for t in ts if t.cls == cls)
    if n_gt == 0:
        return None
    scores: list[float] = []
    hits: list[bool] = []
    for dets, ts in zip(preds, truths, strict=True):
        cd = [d for d in dets if d.cls == cls]
        ct = [t for t in ts if t.cls == cls]
        m = match_image(cd, ct, iou_thr, strict=strict)
        scores.extend(d.confidence for d in cd)
        hits.extend(j >= 0 for j in m)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    hit = np.asarray(hits, dtype=np.float64)[order]
    tp, fp = np.cumsum(hit), np.cumsum(1.0 - hit)
    return PRCurve(
        n_truth=n_gt,
        scores=np.asarray(scores, dtype=np.float64)[order],
        recall=tp / n_gt,
        precision=tp / np.maximum(tp + fp, np.finfo(np.float64).eps),
    )


def average_precision(
    preds: Sequence[Sequence[Detection]],
    truths: Sequence[Sequence[Label]],
    cls: str,
    iou_thr: float,
    *,
    strict: bool = False,
) -> float | None:
    """COCO 101-point interpolated AP of one class at one IoU threshold; None when the class has no truth."""
    curve = pr_curve(preds, truths, cls, iou_thr, strict=strict)
    return None if curve is None else curve.average_precision()


@dataclass(frozen=True, slots=True)
class PRF:
    """Counts and rates at one matching rule."""

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def precision_recall(
    preds: Sequence[Sequence[Detection]],
    truths: Sequence[Sequence[Label]],
    *,
    iou_thr: float = 0.33,
    same_class: bool = True,
    strict: bool = True,
    classes: Iterable[str] | None = None,
) -> tuple[PRF, dict[str, PRF]]:
    """DeepPCB-protocol counts: (overall, per class). Defaults: IoU > 0.33 with same-class matching.

    With ``same_class=False`` it is the class-agnostic rule (any detection may cover any truth); per-class
    figures then count a truth as found by any detection, and a detection as correct by any truth, bucketed by
    the truth's class for FN/TP and the detection's class for FP.
    """
    _check_lengths(preds, truths)
    names = set(classes or ())
    for dets, ts in zip(preds, truths, strict=True):
        names.update(d.cls for d in dets)
        names.update(t.cls for t in ts)
    tp = dict.fromkeys(names, 0)
    fp = dict.fromkeys(names, 0)
    fn = dict.fromkeys(names, 0)
    for dets, ts in zip(preds, truths, strict=True):
        m = match_image(dets, ts, iou_thr, same_class=same_class, strict=strict)
        matched = set()
        for d, j in zip(dets, m, strict=True):
            if j >= 0:
                tp[ts[j].cls] += 1
                matched.add(j)
            else:
                fp[d.cls] += 1
        for j, t in enumerate(ts):
            if j not in matched:
                fn[t.cls] += 1
    per = {c: PRF(tp[c], fp[c], fn[c]) for c in sorted(names)}
    overall = PRF(sum(tp.values()), sum(fp.values()), sum(fn.values()))
    return overall, per


@dataclass(slots=True)
class DetectionReport:
    """Everything ``evaluate`` measures; ``as_dict`` is what benchmarks print/store."""

    ap50: dict[str, float] = field(default_factory=dict)
    ap50_95: dict[str, float] = field(default_factory=dict)
    map50: float = 0.0
    map50_95: float = 0.0
    #: mAP under the DeepPCB matching rule (IoU > 0.33), the rule of the paper's 98.6 % mAP.
    map_deeppcb: float = 0.0
    prf: PRF = field(default_factory=lambda: PRF(0, 0, 0))
    per_class: dict[str, PRF] = field(default_factory=dict)
    agnostic: PRF = field(default_factory=lambda: PRF(0, 0, 0))

    def as_dict(self) -> dict[str, object]:
        def d(p: PRF) -> dict[str, float]:
            return {
                "tp": p.tp,
                "fp": p.fp,
                "fn": p.fn,
                "precision": p.precision,
                "recall": p.recall,
                "f1": p.f1,
            }

        return {
            "map50": self.map50,
            "map50_95": self.map50_95,
            "map_deeppcb": self.map_deeppcb,
            "ap50": self.ap50,
            "ap50_95": self.ap50_95,
            "deeppcb": d(self.prf),
            "per_class": {c: d(p) for c, p in self.per_class.items()},
            "agnostic": d(self.agnostic),
        }


def evaluate(
    preds: Sequence[Sequence[Detection]],
    truths: Sequence[Sequence[Label]],
    classes: Sequence[str] | None = None,
    *,
    pr_iou: float = 0.33,
) -> DetectionReport:
    """AP50, AP50-95 per class and their means over classes with truth, plus DeepPCB P/R/F (same class,
    IoU > ``pr_iou``) and the class-agnostic counts at the same IoU."""
    _check_lengths(preds, truths)
    names = list(classes) if classes is not None else sorted({t.cls for ts in truths for t in ts})
    rep = DetectionReport()
    ap_pcb: list[float] = []
    for c in names:
        aps = [average_precision(preds, truths, c, t) for t in COCO_IOUS]
        if aps[0] is None:
            continue
        rep.ap50[c] = float(aps[0])
        rep.ap50_95[c] = float(np.mean([a for a in aps if a is not None]))
        ap_pcb.append(float(average_precision(preds, truths, c, pr_iou, strict=True) or 0.0))
    if rep.ap50:
        rep.map50 = float(np.mean(list(rep.ap50.values())))
        rep.map50_95 = float(np.mean(list(rep.ap50_95.values())))
        rep.map_deeppcb = float(np.mean(ap_pcb))
    rep.prf, rep.per_class = precision_recall(preds, truths, iou_thr=pr_iou, classes=names)
    rep.agnostic, _ = precision_recall(preds, truths, iou_thr=pr_iou, same_class=False)
    return rep


def _check_lengths(preds: Sequence[object], truths: Sequence[object]) -> None:
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} prediction lists for {len(truths)} images")
