"""Synthetic boards: deterministic, DeepPCB-like, and every label box covers exactly what changed."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from vision.datasets import load
from vision.synth import make_board, write_dataset
from vision.types import DEFECT_CLASSES


def _gray(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    assert img is not None, path
    return np.asarray(img, dtype=np.uint8)


def _components(img: np.ndarray) -> int:
    n, _ = cv2.connectedComponents(np.ascontiguousarray(img == 0).astype(np.uint8), connectivity=8)
    return int(n) - 1


def test_deterministic_and_deeppcb_look() -> None:
    a, b, c = make_board(7), make_board(7), make_board(8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.template, b.template) and a.labels == b.labels
    assert not np.array_equal(a.template, c.template)
    assert a.image.shape == (640, 640) and a.image.dtype == np.uint8
    assert set(np.unique(a.image)) <= {0, 255}
    # DeepPCB polarity: white background, black copper; copper a minority of the board.
    assert 0.05 < float((a.template == 0).mean()) < 0.6


def test_good_part_equals_template() -> None:
    b = make_board(3, 0)
    assert b.labels == [] and np.array_equal(b.image, b.template)


def test_boxes_cover_every_change_and_only_changes() -> None:
    for seed in range(12):
        b = make_board(seed, (3, 8))
        assert 3 <= len(b.labels) <= 8
        changed = b.image != b.template
        covered = np.zeros_like(changed)
        for lab in b.labels:
            x1, y1, x2, y2 = (int(v) for v in (lab.box.x1, lab.box.y1, lab.box.x2, lab.box.y2))
            assert changed[y1:y2, x1:x2].any(), f"seed {seed}: empty box {lab}"
            assert lab.box.width >= 20 and lab.box.height >= 20
            covered[y1:y2, x1:x2] = True
        assert not (changed & ~covered).any(), f"seed {seed}: a change outside every box"


@pytest.mark.parametrize("cls", DEFECT_CLASSES)
def test_each_class_has_its_signature(cls: str) -> None:
    """Added/removed copper and the topology change match the class definition, on several boards."""
    made = 0
    for seed in range(8):
        b = make_board(seed, 1, classes=[cls])
        if not b.labels:
            continue
        made += 1
        assert b.labels[0].cls == cls
        added = int(((b.image == 0) & (b.template == 255)).sum())
        removed = int(((b.image == 255) & (b.template == 0)).sum())
        # Topology inside the labelled box: a trace cut there may still be joined far away (a loop).
        x1, y1, x2, y2 = (
            int(v) for v in (b.labels[0].box.x1, b.labels[0].box.y1, b.labels[0].box.x2, b.labels[0].box.y2)
        )
        dc = _components(b.image[y1:y2, x1:x2]) - _components(b.template[y1:y2, x1:x2])
        if cls in ("short", "spur", "spurious_copper"):
            assert added > 0 and removed == 0
        else:
            assert removed > 0 and added == 0
        if cls == "short":
            assert dc < 0  # joins components
        if cls == "open":
            assert dc > 0  # splits one
        if cls == "spurious_copper":
            assert dc == 1
        if cls in ("spur", "pin_hole"):
            assert dc == 0
    assert made >= 6, f"{cls}: generated on only {made} of 8 boards"


def test_bad_class() -> None:
    with pytest.raises(ValueError, match="unknown defect class 'scratch'"):
        make_board(0, 1, classes=["scratch"])


def test_write_dataset_roundtrip(tmp_path: Path) -> None:
    written = write_dataset(tmp_path, 3, seed=40, good_fraction=0.0, progress=False)
    back = load(tmp_path, "deeppcb")
    assert [s.labels for s in back] == [s.labels for s in written]
    assert [s.labels for s in back] == [make_board(40 + i).labels for i in range(3)]
    img = _gray(str(back[1].image_path))
    assert np.array_equal(img, make_board(41).image)  # PNG: lossless
    more = write_dataset(tmp_path, 2, seed=43, good_fraction=1.0, progress=False)
    assert all(s.labels == [] for s in more)
    assert len(load(tmp_path, "deeppcb")) == 5


def test_scan_noise_roughens_edges_only() -> None:
    clean, noisy = make_board(5), make_board(5, scan_noise=0.15)
    assert noisy.labels == clean.labels
    assert np.array_equal(noisy.image, make_board(5, scan_noise=0.15).image)  # still deterministic
    outside = np.ones(noisy.image.shape, bool)
    for lab in noisy.labels:
        outside[int(lab.box.y1) : int(lab.box.y2), int(lab.box.x1) : int(lab.box.x2)] = False
    diff = (noisy.image != noisy.template) & outside
    assert 0 < diff.mean() < 0.02  # the two "scans" differ a little, along edges
    near_edge = cv2.dilate((cv2.Canny(clean.template, 50, 150) > 0).astype(np.uint8), np.ones((5, 5), np.uint8))
    assert not (diff & (near_edge == 0)).any()  # never in flat copper or flat background
