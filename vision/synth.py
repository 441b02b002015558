"""Synthetic PCB-like boards with exact ground truth, in the look of DeepPCB.

DeepPCB images (checked against ../shared/datasets/deeppcb) are 640x640 binarised grayscale with a
*white* background and *black* copper: traces 3..30 px wide, round and square pads, vias with drilled
holes. ``make_board`` keeps that polarity by default (``copper=0``); pass ``copper=255`` for the inverse.

A board is drawn from a seed (same seed -> same pixels), its copy is the golden template, and defects of
the six DeepPCB classes are injected into the test image only:

    open             a gap cut across a trace           (copper removed, splits the trace locally)
    short            a bridge between two traces        (copper added, joins two components)
    mousebite        bites taken out of a trace edge    (copper removed, no split)
    spur             a thin protrusion from an edge     (copper added, attached to one component)
    spurious_copper  an isolated blob in free space     (copper added, a new component)
    pin_hole         a small hole inside copper         (copper removed, inside a wide area)

Defect sizes are in the range of DeepPCB's training part (median changed pixels per defect there:
mousebite ~50, open ~80, pin_hole ~110, short ~150, spur ~70, spurious_copper ~160; here 60..110).
Each ground-truth box is the bounding box of the pixels the defect changed, padded like DeepPCB's
annotations (about 9 px around, at least 20 px a side), so real and synthetic labels have the same scale.
``scan_noise`` makes image and template differ along edges the way two real scans do.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from vision.types import DEFECT_CLASSES, Box, Image, Label, Sample

SIZE = 640
_BOX_PAD = 9  # DeepPCB annotations sit ~9 px around the changed pixels (see detectors/template.py)
_BOX_MIN = 20


@dataclass(slots=True)
class _Segment:
    p0: tuple[float, float]
    p1: tuple[float, float]
    width: int


@dataclass(slots=True)
class SynthBoard:
    """One generated pair: the test image with defects, its golden template and the exact labels."""

    image: Image
    template: Image
    labels: list[Label]
    seed: int
    segments: list[_Segment] = field(default_factory=list, repr=False)


def _rot_dir(rng: np.random.Generator) -> tuple[float, float]:
    # PCB routing: mostly horizontal/vertical, some 45-degree runs.
    angle = rng.choice([0, 90, 180, 270, 45, 135, 225, 315], p=[0.2, 0.2, 0.2, 0.2, 0.05, 0.05, 0.05, 0.05])
    a = math.radians(float(angle))
    return math.cos(a), math.sin(a)


def draw_template(seed: int, size: int = SIZE, copper: int = 0) -> tuple[Image, list[_Segment]]:
    """A defect-free board: copper areas, pad arrays and bundles of routed traces with pads and vias.

    Each group is drawn on its own layer and kept only if it stays ``clearance`` px away from the copper
    already placed, as separate nets on a real board do; so a short or an open changes the topology.
    Returns the image and the trace segments (where the defect injector finds traces).
    """
    rng = np.random.default_rng(seed)
    bg = 255 - copper
    placed = np.zeros((size, size), np.uint8)  # 1 = copper
    segs: list[_Segment] = []
    # Scale varies between boards like DeepPCB's groups (some zoomed in on thick copper, some fine pitch).
    scale = float(rng.uniform(0.6, 1.6))
    clearance = max(5, int(6 * scale))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * clearance + 1, 2 * clearance + 1))

    forbidden = np.zeros_like(placed)  # placed copper grown by the clearance

    def commit(layer: np.ndarray, new_segs: list[_Segment]) -> bool:
        if (forbidden & layer).any():
            return False
        placed[:] |= layer
        forbidden[:] |= np.asarray(cv2.dilate(layer, kernel), dtype=np.uint8)
        segs.extend(new_segs)
        return True

    for _ in range(int(rng.integers(0, 2))):  # a large copper area (ground plane, big pad)
        layer = np.zeros_like(placed)
        c = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        if rng.random() < 0.5:
            cv2.circle(layer, c, int(rng.integers(40, 140)), 1, -1)
        else:
            w, h = int(rng.integers(60, 200)), int(rng.integers(40, 160))
            cv2.rectangle(layer, c, (c[0] + w, c[1] + h), 1, -1)
        commit(layer, [])
    for _ in range(int(rng.integers(1, 4))):  # pad arrays: IC footprints, headers
        layer = np.zeros_like(placed)
        w = int(rng.integers(10, 26) * scale)
        h = int(rng.integers(10, 40) * scale)
        step = w + int(rng.integers(8, 20) * scale)
        x0, y0 = int(rng.integers(0, size - 40)), int(rng.integers(0, size - 40))
        round_pads = rng.random() < 0.5
        for i in range(int(rng.integers(2, 8))):
            cx = x0 + i * step
            if round_pads:
                cv2.circle(layer, (cx, y0), w // 2 + 2, 1, -1)
                cv2.circle(layer, (cx, y0), max(2, w // 5), 0, -1)
            else:
                cv2.rectangle(layer, (cx - w // 2, y0 - h // 2), (cx + w // 2, y0 + h // 2), 1, -1)
        commit(layer, [])
    want, tries = int(rng.integers(5, 11)), 0
    while want > 0 and tries < 40:
        tries += 1
        layer = np.zeros_like(placed)
        new: list[_Segment] = []
        width = max(3, int(rng.integers(4, 12) * scale))
        pitch = width + max(clearance + 2, int(rng.integers(8, 20) * scale))
        n_lines = int(rng.integers(1, 6))
        x, y = float(rng.uniform(0.05, 0.95) * size), float(rng.uniform(0.05, 0.95) * size)
        dx, dy = _rot_dir(rng)
        px, py = -dy, dx  # perpendicular offset for the parallel lines of a bus
        path = [(x, y)]
        for _t in range(int(rng.integers(1, 4))):
            length = float(rng.uniform(60, 300))
            x, y = x + dx * length, y + dy * length
            path.append((x, y))
            turn = math.radians(float(rng.choice([-90, -45, 45, 90])))
            dx, dy = dx * math.cos(turn) - dy * math.sin(turn), dx * math.sin(turn) + dy * math.cos(turn)
        # Pads may not reach the neighbouring line of the bus.
        r_max = (pitch - 3) // 2 if n_lines > 1 else 3 * width
        for k in range(n_lines):
            off = (k - (n_lines - 1) / 2) * pitch
            pts = [(p[0] + px * off, p[1] + py * off) for p in path]
            for a, b in itertools.pairwise(pts):
                cv2.line(layer, _pt(a), _pt(b), 1, width, cv2.LINE_8)
                new.append(_Segment(a, b, width))
            for end in (pts[0], pts[-1]):  # round pads and vias with a drilled hole
                if rng.random() < 0.6:
                    r = min(r_max, int(width * rng.uniform(1.3, 2.2)) + 3)
                    cv2.circle(layer, _pt(end), r, 1, -1)
                    if rng.random() < 0.7 and r >= 5:
                        cv2.circle(layer, _pt(end), max(2, int(r * rng.uniform(0.35, 0.55))), 0, -1)
        if commit(layer, new):
            want -= 1
    img = np.full((size, size), bg, np.uint8)
    img[placed > 0] = copper
    return img, segs


def _pt(p: tuple[float, float]) -> tuple[int, int]:
    return round(p[0]), round(p[1])


def _seg_point(seg: _Segment, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """A point on a segment (away from its ends) and the segment's unit direction."""
    (x0, y0), (x1, y1) = seg.p0, seg.p1
    length = math.hypot(x1 - x0, y1 - y0)
    t = float(rng.uniform(0.2, 0.8))
    return x0 + (x1 - x0) * t, y0 + (y1 - y0) * t, (x1 - x0) / length, (y1 - y0) / length


def _inside(x: float, y: float, size: int, margin: int = 24) -> bool:
    return margin <= x < size - margin and margin <= y < size - margin


class _Injector:
    """Applies defects to a copy of the template; each method returns True when it changed the image."""

    def __init__(self, template: Image, segs: Sequence[_Segment], copper: int, rng: np.random.Generator) -> None:
        self.t = template
        self.img = template.copy()
        self.segs = [s for s in segs if math.hypot(s.p1[0] - s.p0[0], s.p1[1] - s.p0[1]) > 30]
        self.copper = copper
        self.bg = 255 - copper
        self.rng = rng
        self.size = template.shape[0]
        cu = (template == copper).astype(np.uint8)
        _, self.comp = cv2.connectedComponents(cu, connectivity=8)
        self.dist_cu = cv2.distanceTransform(cu, cv2.DIST_L2, 3)  # depth inside copper
        self.dist_bg = cv2.distanceTransform(1 - cu, cv2.DIST_L2, 3)  # distance to nearest copper

    def _trace_point(self, min_width: int = 3) -> tuple[float, float, float, float, _Segment] | None:
        cands = [s for s in self.segs if s.width >= min_width]
        for _ in range(30):
            if not cands:
                return None
            seg = cands[int(self.rng.integers(len(cands)))]
            x, y, ux, uy = _seg_point(seg, self.rng)
            xi, yi = round(x), round(y)
            # The point must still be on a plain stretch of trace (not under a pad or another defect).
            if _inside(x, y, self.size) and self.t[yi, xi] == self.copper and self.dist_cu[yi, xi] <= seg.width:
                return x, y, ux, uy, seg
        return None

    def open(self) -> bool:
        hit = self._trace_point()
        if hit is None:
            return False
        x, y, ux, uy, seg = hit
        nx, ny = -uy, ux
        half = seg.width / 2 + 4
        gap = int(self.rng.integers(4, 10))  # >= 3 px: a thinner diagonal cut leaves 8-connected copper
        a = (x - nx * half, y - ny * half)
        b = (x + nx * half, y + ny * half)
        cv2.line(self.img, _pt(a), _pt(b), self.bg, gap)
        return True

    def short(self) -> bool:
        for _ in range(20):
            hit = self._trace_point()
            if hit is None:
                return False
            x, y, ux, uy, seg = hit
            nx, ny = -uy, ux
            first = 1 if self.rng.random() < 0.5 else -1
            own = self.comp[round(y), round(x)]
            start = int(seg.width / 2 + 1)
            for sign in (first, -first):
                gap = 0  # background pixels crossed so far
                for d in range(start, start + 50):
                    qx, qy = x + sign * nx * d, y + sign * ny * d
                    if not _inside(qx, qy, self.size, 4):
                        break
                    lab = self.comp[round(qy), round(qx)]
                    if lab == 0:
                        gap += 1
                        continue
                    if lab == own:
                        if gap:
                            break  # back on our own copper (a bend): no bridge this way
                        continue  # still leaving our own trace/pad
                    if gap:
                        thick = int(self.rng.integers(3, 9))
                        ex, ey = qx + sign * nx * 2, qy + sign * ny * 2
                        cv2.line(self.img, _pt((x, y)), _pt((ex, ey)), self.copper, thick)
                        return True
        return False

    def mousebite(self) -> bool:
        hit = self._trace_point(min_width=8)
        if hit is None:
            return False
        x, y, ux, uy, seg = hit
        nx, ny = -uy, ux
        sign = 1 if self.rng.random() < 0.5 else -1
        ex, ey = x + sign * nx * seg.width / 2, y + sign * ny * seg.width / 2
        # Bites up to ~45% of the trace width, as in DeepPCB (large enough to see, never a cut through).
        r_max = max(4.5, seg.width * 0.5)
        for k in range(int(self.rng.integers(2, 5))):
            r = float(self.rng.uniform(3.5, r_max))
            off = (k - 1) * r * 1.6
            cv2.circle(self.img, _pt((ex + ux * off, ey + uy * off)), round(r), self.bg, -1)
        return True

    def spur(self) -> bool:
        for _ in range(20):
            hit = self._trace_point()
            if hit is None:
                return False
            x, y, ux, uy, seg = hit
            nx, ny = -uy, ux
            sign = 1 if self.rng.random() < 0.5 else -1
            ang = float(self.rng.uniform(-0.6, 0.6))
            dx = (sign * nx) * math.cos(ang) + ux * math.sin(ang)
            dy = (sign * ny) * math.cos(ang) + uy * math.sin(ang)
            length = float(self.rng.uniform(6, 18))
            sx, sy = x + sign * nx * (seg.width / 2 - 1), y + sign * ny * (seg.width / 2 - 1)
            tx, ty = sx + dx * length, sy + dy * length
            # A spur must not reach other copper, else it is a short.
            if not _inside(tx, ty, self.size) or self.dist_bg[round(ty), round(tx)] < 6:
                continue
            cv2.line(self.img, _pt((sx, sy)), _pt((tx, ty)), self.copper, int(self.rng.integers(3, 6)))
            return True
        return False

    def spurious_copper(self) -> bool:
        for _ in range(50):
            x = float(self.rng.uniform(24, self.size - 24))
            y = float(self.rng.uniform(24, self.size - 24))
            r = float(self.rng.uniform(3, 9))
            if self.dist_bg[round(y), round(x)] < r * 1.5 + 8:
                continue
            axes = (round(r), round(r * self.rng.uniform(0.5, 1.5)))
            cv2.ellipse(self.img, _pt((x, y)), axes, float(self.rng.uniform(0, 180)), 0, 360, self.copper, -1)
            return True
        return False

    def pin_hole(self) -> bool:
        # Prefer wide copper (pads, planes) where a real-size hole fits; fall back to any wide-enough trace.
        ys, xs = np.nonzero(self.dist_cu > 9)
        if len(xs) < 50:
            ys, xs = np.nonzero(self.dist_cu > 6)
        ok = (xs >= 24) & (xs < self.size - 24) & (ys >= 24) & (ys < self.size - 24)
        ys, xs = ys[ok], xs[ok]
        if len(xs) == 0:
            return False
        i = int(self.rng.integers(len(xs)))
        r = float(self.rng.uniform(2.5, max(2.6, min(7.0, self.dist_cu[ys[i], xs[i]] - 3))))
        cv2.circle(self.img, (int(xs[i]), int(ys[i])), round(r), self.bg, -1)
        return True


def _box_of(mask: np.ndarray, size: int) -> Box | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    x1, y1, x2, y2 = (
        xs.min() - _BOX_PAD,
        ys.min() - _BOX_PAD,
        xs.max() + 1 + _BOX_PAD,
        ys.max() + 1 + _BOX_PAD,
    )
    # Grow small boxes to DeepPCB's minimum annotation size, centred on the defect.
    if x2 - x1 < _BOX_MIN:
        c = (x1 + x2) / 2
        x1, x2 = c - _BOX_MIN / 2, c + _BOX_MIN / 2
    if y2 - y1 < _BOX_MIN:
        c = (y1 + y2) / 2
        y1, y2 = c - _BOX_MIN / 2, c + _BOX_MIN / 2
    return Box(
        float(max(0, round(x1))),
        float(max(0, round(y1))),
        float(min(size, round(x2))),
        float(min(size, round(y2))),
    )


def make_board(
    seed: int,
    n_defects: int | tuple[int, int] = (3, 8),
    classes: Sequence[str] = DEFECT_CLASSES,
    *,
    size: int = SIZE,
    copper: int = 0,
    scan_noise: float = 0.0,
) -> SynthBoard:
    """Generate one board pair with defects. ``n_defects`` is a count or an inclusive (lo, hi) range;
    0 gives a good part (image == template). Defects never overlap each other's boxes.

    ``scan_noise`` > 0 (e.g. 0.15) roughens copper edges independently in image and template, like two
    binarised scans of the same board in DeepPCB: the pair then also differs by 1-px slivers along edges,
    which are not defects (training data for models that must ignore them). 0 keeps the pair exact.
    """
    for c in classes:
        if c not in DEFECT_CLASSES:
            raise ValueError(f"unknown defect class {c!r}; expected one of {DEFECT_CLASSES}")
    template, segs = draw_template(seed, size, copper)
    rng = np.random.default_rng([seed, 1])
    want = n_defects if isinstance(n_defects, int) else int(rng.integers(n_defects[0], n_defects[1] + 1))
    inj = _Injector(template, segs, copper, rng)
    labels: list[Label] = []
    taken = np.zeros_like(template, dtype=bool)
    attempts = 0
    while len(labels) < want and attempts < want * 15 and classes:
        attempts += 1
        cls = classes[int(rng.integers(len(classes)))]
        before = inj.img.copy()
        apply: Callable[[], bool] = getattr(inj, cls)
        if not apply():
            continue
        changed = before != inj.img
        box = _box_of(changed, size)
        if box is None:
            continue
        x1, y1, x2, y2 = int(box.x1), int(box.y1), int(box.x2), int(box.y2)
        if taken[max(0, y1 - 4) : y2 + 4, max(0, x1 - 4) : x2 + 4].any():
            inj.img = before  # overlapping defects make ambiguous labels: undo and try elsewhere
            continue
        taken[y1:y2, x1:x2] = True
        labels.append(Label(box=box, cls=cls))
    image = inj.img
    if scan_noise > 0:
        nrng = np.random.default_rng([seed, 4])
        image, template = _rough(image, scan_noise, nrng), _rough(template, scan_noise, nrng)
    return SynthBoard(image=image, template=template, labels=labels, seed=seed, segments=segs)


def _rough(img: Image, amount: float, rng: np.random.Generator) -> Image:
    """Blur, add noise on the edges only, re-binarise: edges move by about a pixel, flat areas (and so the
    defects' interiors) stay as they are."""
    g = cv2.GaussianBlur(img, (5, 5), 0).astype(np.float32)
    edge = (g > 8) & (g < 247)
    g[edge] += rng.normal(0, amount * 255, int(edge.sum())).astype(np.float32)
    return np.where(g > 127, 255, 0).astype(np.uint8)


def write_dataset(
    out_dir: Path,
    n: int,
    *,
    seed: int = 0,
    n_defects: int | tuple[int, int] = (3, 8),
    good_fraction: float = 0.0,
    list_name: str = "trainval.txt",
    group: str = "90000",
    progress: bool = True,
    scan_noise: float = 0.0,
    ext: str = ".png",
) -> list[Sample]:
    """Write ``n`` synthetic pairs to ``out_dir`` in DeepPCB layout (``load(out_dir, "deeppcb")`` reads it).

    Sample i uses seed ``seed + i``, so a dataset is reproducible and can be extended without repeats.
    ``good_fraction`` of the samples are good parts (no defects, empty annotation file). ``scan_noise``
    see make_board; ``ext=".jpg"`` adds DeepPCB's JPEG artefacts (PNG, the default, is lossless).
    """
    from tqdm import tqdm

    from vision.datasets import append_deeppcb

    rng = np.random.default_rng([seed, 2])
    samples: list[Sample] = []
    for i in tqdm(range(n), desc=f"synth -> {out_dir}", unit="board", disable=not progress):
        good = rng.random() < good_fraction
        board = make_board(seed + i, 0 if good else n_defects, scan_noise=scan_noise)
        samples.append(
            append_deeppcb(
                out_dir,
                board.image,
                board.template,
                board.labels,
                list_name=list_name,
                group=group,
                ext=ext,
            )
        )
    return samples
