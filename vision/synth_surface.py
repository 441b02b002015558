"""Generated template-free surfaces (rolled-steel-like texture) with scratches, pits, inclusions and patches.

For developing and testing whole-frame detectors without a golden template, and for a data set laid out the
way public steel-surface sets are published (Pascal VOC in ``IMAGES/`` + ``ANNOTATIONS/``, upper-case folders,
files sorted by class, some ``<filename>`` tags without an extension): ``write_voc``.

    python -m vision.synth_surface --out var/data/surface --per-class 60

Every image is grayscale; each has one dominant class (like NEU-DET: one class per image, 1-4 boxes of it).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from vision.types import Box, Image, Label

SURFACE_CLASSES: tuple[str, ...] = ("scratch", "pit", "inclusion", "patch")


def texture(size: int, rng: np.random.Generator) -> Image:
    """Rolled-metal texture: a mid-gray base, streaks along the rolling direction, fine grain, slow shading."""
    base = rng.uniform(90, 170)
    streak = cv2.resize(rng.normal(0, 1, (size, max(2, size // 16))).astype(np.float32), (size, size))
    grain = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 0.8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    shade = (rng.uniform(-1, 1) * (xx - 0.5) + rng.uniform(-1, 1) * (yy - 0.5)) * rng.uniform(10, 30)
    img = base + streak * rng.uniform(3, 9) + grain * rng.uniform(4, 10) + shade
    if rng.random() < 0.5:
        img = img.T
    return np.clip(img, 0, 255).astype(np.uint8)


def _box(mask: np.ndarray) -> Box | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def _defect(img: np.ndarray, cls: str, rng: np.random.Generator) -> Box | None:
    size = img.shape[0]
    mask = np.zeros(img.shape, np.uint8)
    if cls == "scratch":
        length = rng.uniform(0.25, 0.8) * size
        ang = rng.uniform(0, np.pi)
        cx, cy = rng.uniform(0.2, 0.8, 2) * size
        dx, dy = np.cos(ang) * length / 2, np.sin(ang) * length / 2
        p1, p2 = (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy))
        cv2.line(mask, p1, p2, 255, int(rng.integers(1, 3)), cv2.LINE_AA)
        delta = rng.choice([-1, 1]) * rng.uniform(35, 70)
    elif cls == "pit":
        n = int(rng.integers(3, 10))
        cx, cy = rng.uniform(0.15, 0.85, 2) * size
        spread = rng.uniform(0.04, 0.12) * size
        for _ in range(n):
            x, y = rng.normal(cx, spread), rng.normal(cy, spread)
            cv2.circle(mask, (int(x), int(y)), int(rng.integers(1, 4)), 255, -1, cv2.LINE_AA)
        delta = -rng.uniform(45, 80)
    elif cls == "inclusion":
        cx, cy = rng.uniform(0.15, 0.85, 2) * size
        axes = (int(rng.uniform(0.04, 0.15) * size), int(rng.uniform(0.01, 0.03) * size) + 1)
        cv2.ellipse(mask, (int(cx), int(cy)), axes, float(rng.uniform(-20, 20)), 0, 360, 255, -1, cv2.LINE_AA)
        delta = -rng.uniform(40, 70)
    else:  # patch: a large, soft-edged blotch
        cx, cy = rng.uniform(0.25, 0.75, 2) * size
        pts = []
        r0 = rng.uniform(0.1, 0.22) * size
        for k in range(10):
            a = 2 * np.pi * k / 10
            r = r0 * rng.uniform(0.6, 1.3)
            pts.append((int(cx + r * np.cos(a)), int(cy + r * np.sin(a))))
        cv2.fillPoly(mask, [np.asarray(pts, np.int32)], 255, cv2.LINE_AA)
        mask = np.asarray(cv2.GaussianBlur(mask, (0, 0), 2.0), dtype=np.uint8)
        delta = rng.choice([-1, 1]) * rng.uniform(25, 45)
    box = _box(mask > 64)
    if box is None or box.width < 2 or box.height < 2:
        return None
    m = mask.astype(np.float32) / 255.0
    out = img.astype(np.float32) + m * delta
    img[:] = np.clip(out, 0, 255).astype(np.uint8)
    return box


def make_surface(seed: int, cls: str, size: int = 200, max_defects: int = 3) -> tuple[Image, list[Label]]:
    """One surface of ``size`` px with 1..``max_defects`` defects of class ``cls`` (non-overlapping boxes)."""
    if cls not in SURFACE_CLASSES:
        raise ValueError(f"unknown surface class {cls!r}; expected one of {SURFACE_CLASSES}")
    rng = np.random.default_rng(seed)
    img = texture(size, rng)
    labels: list[Label] = []
    for _ in range(int(rng.integers(1, max_defects + 1)) * 3):
        if len(labels) >= max_defects:
            break
        trial = img.copy()
        b = _defect(trial, cls, rng)
        if b is None or any(b.iou(lab.box) > 0 or b.intersection(lab.box) > 0 for lab in labels):
            continue
        img = trial
        labels.append(Label(b, cls))
        if rng.random() < 0.5:
            break
    if not labels:
        b = _defect(img, cls, rng)
        if b is not None:
            labels.append(Label(b, cls))
    return img, labels


def _voc_xml(fname: str, w: int, h: int, labels: Sequence[Label]) -> str:
    objs = "".join(
        f"<object><name>{lab.cls}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{round(lab.box.x1)}</xmin><ymin>{round(lab.box.y1)}</ymin>"
        f"<xmax>{round(lab.box.x2)}</xmax><ymax>{round(lab.box.y2)}</ymax></bndbox></object>"
        for lab in labels
    )
    return (f"<annotation><folder>IMAGES</folder><filename>{fname}</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>1</depth></size>{objs}</annotation>\n")


def write_voc(
    out: Path,
    per_class: int,
    *,
    size: int = 200,
    seed: int = 0,
    classes: Sequence[str] = SURFACE_CLASSES,
    no_ext_every: int = 10,
    ext: str = ".jpg",
) -> Path:
    """A VOC data set as public steel sets ship: ``IMAGES/`` and ``ANNOTATIONS/`` (upper case), files named and
    sorted by class (``<class>_<n>``), every ``no_ext_every``-th ``<filename>`` without its extension."""
    out = Path(out)
    (out / "IMAGES").mkdir(parents=True, exist_ok=True)
    (out / "ANNOTATIONS").mkdir(parents=True, exist_ok=True)
    k = 0
    for ci, cls in enumerate(classes):
        for i in range(1, per_class + 1):
            img, labels = make_surface(seed * 100_003 + ci * 10_007 + i, cls, size)
            stem = f"{cls}_{i}"
            if not cv2.imwrite(str(out / "IMAGES" / f"{stem}{ext}"), img):
                raise OSError(f"cannot write {out / 'IMAGES' / stem}{ext}")
            fname = stem if no_ext_every and k % no_ext_every == 0 else f"{stem}{ext}"
            (out / "ANNOTATIONS" / f"{stem}.xml").write_text(_voc_xml(fname, size, size, labels), encoding="utf-8")
            k += 1
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="generate a template-free surface-defect data set (VOC layout)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    write_voc(a.out, a.per_class, size=a.size, seed=a.seed)
    print(a.out)


if __name__ == "__main__":
    main()
