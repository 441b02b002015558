"""Metrics against hand-computed cases (COCO 101-point AP, DeepPCB IoU > 0.33 P/R/F)."""

from __future__ import annotations

import pytest

from vision.metrics import PRF, average_precision, evaluate, match_image, precision_recall
from vision.types import Box, Detection, Label


def L(x1: float, y1: float, x2: float, y2: float, c: str = "open") -> Label:
    return Label(Box(x1, y1, x2, y2), c)


def D(x1: float, y1: float, x2: float, y2: float, conf: float, c: str = "open") -> Detection:
    return Detection(Box(x1, y1, x2, y2), c, conf)


def test_ap_hand_computed_tp_fp_tp() -> None:
    # 2 truths; detections by confidence: TP, FP, TP -> recall (.5, .5, 1), precision (1, .5, 2/3).
    # Monotone envelope (1, 2/3, 2/3); recall points 0..0.50 (51 of them) read 1, 0.51..1.00 (50) read 2/3.
    truths = [[L(0, 0, 10, 10), L(20, 20, 30, 30)]]
    preds = [[D(0, 0, 10, 10, 0.9), D(50, 50, 60, 60, 0.8), D(20, 20, 30, 30, 0.7)]]
    assert average_precision(preds, truths, "open", 0.5) == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_ap_perfect_and_empty_and_no_truth() -> None:
    truths = [[L(0, 0, 10, 10)], [L(5, 5, 15, 15)]]
    assert average_precision([[D(0, 0, 10, 10, 0.5)], [D(5, 5, 15, 15, 0.9)]], truths, "open", 0.5) == 1.0
    assert average_precision([[], []], truths, "open", 0.5) == 0.0
    assert average_precision([[], []], truths, "short", 0.5) is None


def test_ap_half_recall_reaches_only_half_the_points() -> None:
    # One of two truths found, no false positives: precision 1 up to recall 0.5 -> 51/101.
    truths = [[L(0, 0, 10, 10), L(20, 20, 30, 30)]]
    assert average_precision([[D(0, 0, 10, 10, 0.9)]], truths, "open", 0.5) == pytest.approx(51 / 101)


def test_map50_95_counts_thresholds_met() -> None:
    # IoU of (0,0,10,6) with (0,0,10,10) is exactly 0.6: a hit at 0.50, 0.55, 0.60 and a miss above.
    rep = evaluate([[D(0, 0, 10, 6, 0.9)]], [[L(0, 0, 10, 10)]])
    assert rep.ap50["open"] == 1.0
    assert rep.ap50_95["open"] == pytest.approx(0.3)
    assert rep.map50_95 == pytest.approx(0.3)


def test_map_skips_classes_without_truth() -> None:
    rep = evaluate([[D(0, 0, 10, 10, 0.9), D(50, 50, 60, 60, 0.9, "short")]], [[L(0, 0, 10, 10)]], ["open", "short"])
    assert set(rep.ap50) == {"open"}
    assert rep.map50 == 1.0


def test_deeppcb_iou_must_exceed_033() -> None:
    truth = [[L(0, 0, 100, 100)]]
    at = [[D(0, 0, 100, 33, 0.9)]]  # IoU exactly 0.33: not a hit under "exceeds"
    above = [[D(0, 0, 100, 34, 0.9)]]
    assert precision_recall(at, truth)[0] == PRF(0, 1, 1)
    assert precision_recall(above, truth)[0] == PRF(1, 0, 0)
    assert precision_recall(at, truth, strict=False)[0] == PRF(1, 0, 0)


def test_same_class_vs_agnostic() -> None:
    truth = [[L(0, 0, 10, 10, "open"), L(20, 20, 30, 30, "short")]]
    preds = [[D(0, 0, 10, 10, 0.9, "short"), D(20, 20, 30, 30, 0.8, "short"), D(40, 40, 50, 50, 0.7, "spur")]]
    overall, per = precision_recall(preds, truth)
    assert overall == PRF(tp=1, fp=2, fn=1)
    assert overall.precision == pytest.approx(1 / 3)
    assert overall.recall == pytest.approx(1 / 2)
    assert overall.f1 == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert per["short"] == PRF(1, 1, 0)
    assert per["open"] == PRF(0, 0, 1)
    assert per["spur"] == PRF(0, 1, 0)
    agn, _ = precision_recall(preds, truth, same_class=False)
    assert agn == PRF(tp=2, fp=1, fn=0)


def test_greedy_matching_by_confidence() -> None:
    # The more confident detection takes the truth even though the other overlaps it better.
    truth = [L(0, 0, 10, 10)]
    dets = [D(0, 0, 10, 10, 0.4), D(0, 0, 10, 8, 0.9)]
    assert match_image(dets, truth, 0.5) == [-1, 0]


def test_best_iou_wins_among_free_truths() -> None:
    truth = [L(0, 0, 10, 10), L(2, 0, 12, 10)]
    assert match_image([D(2, 0, 12, 10, 0.9)], truth, 0.5) == [1]


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 prediction lists for 1 images"):
        evaluate([[], []], [[]])


def test_map_deeppcb_uses_the_looser_iou_rule() -> None:
    from vision.metrics import evaluate

    truth = [[Label(Box(0, 0, 100, 100), "open")]]
    # IoU 0.4 with the truth: a hit under DeepPCB's IoU > 0.33, a miss at COCO's 0.5.
    pred = [[Detection(Box(0, 0, 100, 40), "open", 0.9)]]
    rep = evaluate(pred, truth, ["open"])
    assert rep.map50 == 0.0 and rep.map_deeppcb == 1.0
    assert rep.as_dict()["map_deeppcb"] == 1.0
