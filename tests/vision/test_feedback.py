"""Operator feedback lands in a DeepPCB-layout dataset the importer (and so the trainer) reads back."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from vision.datasets import load
from vision.feedback import save_feedback
from vision.synth import make_board
from vision.types import Box, Frame, Label


def _gray(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    assert img is not None, path
    return np.asarray(img, dtype=np.uint8)


def _frame(seed: int) -> Frame:
    b = make_board(seed, 2)
    return Frame("top", seed, 1700000000.0 + seed, b.image, b.template, b.labels, f"P-{seed}")


def test_feedback_roundtrip(tmp_path: Path) -> None:
    f1, f2 = _frame(1), _frame(2)
    corrected = [Label(Box(10, 10, 40, 40), "short")]
    s1 = save_feedback(tmp_path, f1, corrected, note="operator: missed short")
    s2 = save_feedback(tmp_path, f2, [])  # operator says: good part
    back = load(tmp_path, "deeppcb")
    assert [b.labels for b in back] == [corrected, []]
    assert [b.sample_id for b in back] == [s1.sample_id, s2.sample_id]
    assert np.array_equal(_gray(str(back[0].image_path)), f1.image)  # lossless
    assert back[0].template_path is not None and f1.template is not None
    assert np.array_equal(_gray(str(back[0].template_path)), f1.template)
    recs = [json.loads(x) for x in (tmp_path / "feedback.jsonl").read_text().splitlines()]
    assert [r["part_id"] for r in recs] == ["P-1", "P-2"]
    assert recs[0]["note"] == "operator: missed short" and recs[0]["camera"] == "top"


def test_feedback_rejects_bad_labels(tmp_path: Path) -> None:
    f = _frame(3)
    with pytest.raises(ValueError, match=r"must be one of .*got \['unknown'\]"):
        save_feedback(tmp_path, f, [Label(Box(1, 1, 9, 9), "unknown")])
    with pytest.raises(ValueError, match="outside the 640x640 image"):
        save_feedback(tmp_path, f, [Label(Box(600, 600, 700, 700), "spur")])
    assert not (tmp_path / "trainval.txt").exists()  # nothing half-written


def test_concurrent_feedback_gets_distinct_files(tmp_path: Path) -> None:
    frames = [_frame(10 + i) for i in range(6)]
    threads = [threading.Thread(target=save_feedback, args=(tmp_path, f, [])) for f in frames]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    back = load(tmp_path, "deeppcb")
    assert len(back) == 6 and len({b.image_path for b in back}) == 6
