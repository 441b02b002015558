"""Train and export stage 2 of ``vision.detectors.hybrid`` (torch; never imported on the edge path).

    python -m vision.train_hybrid train --data ../shared/datasets/deeppcb --out var/hybrid/v1
    python -m vision.train_hybrid eval  --data ../shared/datasets/deeppcb --model var/hybrid/v1 --part holdout

Training pairs are the first 800 lines of DeepPCB trainval minus board group ``--val-group``, kept for
validation; the 200-line holdout is only read by ``eval --part holdout``.
Targets: every stage-1 proposal is matched to the ground truth (IoU >= POS_IOU -> that truth's class and
box; best IoU < NEG_IOU, or a fragment lying FRAG_INSIDE within a truth box -> background; otherwise
ignored), and each truth box is added ``jitter`` times, shifted and rescaled, as an extra positive so the
regressor sees more than stage 1's typical error. Each pair is seen again with a misregistered template
(``misregister``) and, on that copy, extra defects drawn as dotted strokes (``dotted_strokes``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from vision.detectors.hybrid import (
    CROP,
    META_FILE,
    MODEL_FILE,
    HybridDetector,
    HybridMeta,
    crop_batch,
    encode_target,
    stacked_padded,
)
from vision.detectors.template import PROPOSAL_PASSES, TemplateDiffDetector
from vision.types import DEFECT_CLASSES, UNKNOWN_CLASS, Box, Detection, Frame, Image, Label

if TYPE_CHECKING:
    from vision.train import TrainConfig, TrainResult

POS_IOU = 0.3
NEG_IOU = 0.1
#: A proposal below POS_IOU lying at least this much inside a truth box is a *fragment* of that defect (a piece
#: that stage 1 cut off a dotted or ragged change): background, so stage 2 learns to keep only whole-defect boxes.
FRAG_INSIDE = 0.7
#: Dotted-stroke defects drawn, on average, on each misregistered copy (``dotted_strokes``) by ``train_registry``.
DOTS = 1.5
#: Operating confidence for P/R/F: a proposal is reported as its class when the CNN gives that class >= 0.5,
#: i.e. more than background and every other class together. Fixed before any holdout run, never tuned on it.
OPERATING_CONF = 0.5
#: Peak learning rate when starting from trained weights (``--weights``), relative to training from scratch. Adam
#: moves every weight by about the learning rate in its first steps whatever the gradient, so a few batches from a
#: handful of boards at the from-scratch rate undo a trained network: one epoch on four synthetic boards at a third
#: of it took a model's mAP50 from 0.95 to 0.77; at a tenth it stayed, and ten DeepPCB boards of a new design
#: still lifted that design as much as at a third (docs/benchmarks/vision.md, "adapting to a new design").
FINETUNE_LR_SCALE = 0.1


@dataclass(frozen=True, slots=True)
class StartWeights:
    """Trained stage-2 weights to fine-tune from, with what the model they belong to was trained on."""

    path: Path
    state: dict[str, Any]
    classes: tuple[str, ...]
    passes: tuple[tuple[int, int], ...]


def load_start(weights: Path, data_classes: tuple[str, ...]) -> StartWeights:
    """The weights behind ``lineguard train --arch hybrid --weights``: a hybrid model directory (a registry
    version: weights.pt + hybrid.json) or a weights.pt beside its hybrid.json. The model's class order and
    proposal passes are kept, so the fine-tuned network answers in the same terms; data with a class the model
    has no output for is refused (train from scratch for new classes). ValueError on anything unusable."""
    import torch

    weights = Path(weights)
    pt = weights / "weights.pt" if weights.is_dir() else weights
    if not pt.is_file():
        raise ValueError(f"weights file not found: {pt} (only local weights are used, never downloads)")
    try:
        meta = HybridMeta.load(pt.parent)
    except FileNotFoundError:
        raise ValueError(
            f"{pt.parent} has no {META_FILE}: hybrid weights need the metadata they were exported with "
            "(pass the model's directory, e.g. var/registry/<name>/v3)"
        ) from None
    new = sorted(set(data_classes) - set(meta.classes))
    if new:
        raise ValueError(f"the data has classes the model {pt.parent} was not trained on: {new} ({meta.classes})")
    try:
        state = torch.load(pt, map_location="cpu", weights_only=True)
        build_model(len(meta.classes)).load_state_dict(state)
    except Exception as e:  # unpickling errors, missing keys and shape mismatches all mean: not these weights
        raise ValueError(f"{pt} is not a hybrid stage-2 network for {len(meta.classes)} classes: {e}") from e
    return StartWeights(pt, state, meta.classes, meta.passes)


def _read(path: Path | None) -> Image:
    if path is None:
        raise ValueError("sample has no golden template")
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return np.asarray(img, dtype=np.uint8)


def _jitter(b: Box, rng: np.random.Generator, shape: tuple[int, ...]) -> Box:
    w, h = b.width, b.height
    cx = (b.x1 + b.x2) / 2 + rng.uniform(-0.15, 0.15) * w
    cy = (b.y1 + b.y2) / 2 + rng.uniform(-0.15, 0.15) * h
    w *= float(np.exp(rng.uniform(-0.25, 0.25)))
    h *= float(np.exp(rng.uniform(-0.25, 0.25)))
    return Box(
        max(0.0, cx - w / 2), max(0.0, cy - h / 2), min(float(shape[1]), cx + w / 2), min(float(shape[0]), cy + h / 2)
    )


def misregister(tmpl: Image, rng: np.random.Generator) -> Image:
    """The template as a second scan might see it: shifted by under a pixel, turned by under 0.15 degrees and
    scaled by under 0.1 %, about the centre. Integer alignment cannot undo this, so the pair shows the thin
    edge slivers of a real rescan; training on them teaches stage 2 that slivers along traces are background."""
    h, w = tmpl.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-0.15, 0.15)), float(1 + rng.uniform(-1e-3, 1e-3)))
    shift = rng.uniform(-0.7, 0.7, size=2)
    m = np.asarray(m, dtype=np.float64) + np.array([[0.0, 0.0, shift[0]], [0.0, 0.0, shift[1]]])
    out = cv2.warpAffine(tmpl, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.asarray(out, dtype=np.uint8)


#: Classes a dotted stroke can stand for: (ink is copper?, where it runs). "free": clear of every edge;
#: "edge": grows from an edge into the other side; "across": from an edge across to the next edge.
_STROKE_KINDS: dict[str, tuple[bool, str]] = {
    "spurious_copper": (True, "free"),  # dark dots on bare laminate, touching nothing
    "spur": (True, "edge"),  # dark dots growing out of a copper edge
    "short": (True, "across"),  # dark dots from one copper part to another
    "pin_hole": (False, "free"),  # bare dots inside copper, touching no edge
    "mousebite": (False, "edge"),  # bare dots eating in from a copper edge
    "open": (False, "across"),  # bare dots across a trace
}


def _mark_busy(busy: npt.NDArray[np.uint8], box: Box, margin: int = 8) -> None:
    """Mark ``box`` and ``margin`` px around it as taken: a drawn defect must not touch another one."""
    busy[max(0, int(box.y1) - margin) : int(box.y2) + margin, max(0, int(box.x1) - margin) : int(box.x2) + margin] = 1


def _busy_mask(labels: list[Label], shape: tuple[int, ...]) -> npt.NDArray[np.uint8]:
    busy = np.zeros(shape[:2], np.uint8)
    for t in labels:
        _mark_busy(busy, t.box)
    return busy


def _drawn_box(xs: npt.NDArray[np.intp], ys: npt.NDArray[np.intp], shape: tuple[int, ...]) -> Box:
    """The label box of a drawn defect's pixels: 8 px of margin (DeepPCB's boxes are loose), inside the frame."""
    h, w = shape[:2]
    return Box(
        max(0.0, float(xs.min() - 8)),
        max(0.0, float(ys.min() - 8)),
        min(float(w), float(xs.max() + 9)),
        min(float(h), float(ys.max() + 9)),
    )


def _stroke(
    rng: np.random.Generator, start: tuple[float, float], heading: float, length: int, wander: float = 0.1
) -> list[tuple[int, int]]:
    """A smooth random path (x, y) of ``length`` one-pixel steps: the heading wanders a little each step."""
    x, y = start
    turn = 0.0
    pts: list[tuple[int, int]] = []
    for _ in range(length):
        turn = 0.85 * turn + rng.normal(0.0, wander)
        heading += turn
        x, y = x + float(np.cos(heading)), y + float(np.sin(heading))
        pts.append((round(x), round(y)))
    return pts


def dotted_strokes(
    img: Image,
    copper: npt.NDArray[np.uint8],
    labels: list[Label],
    rng: np.random.Generator,
    n: int,
    classes: tuple[str, ...] = DEFECT_CLASSES,
) -> tuple[Image, list[Label]]:
    """``img`` with up to ``n`` new defects drawn as dotted strokes (chains of 3x3 crosses 2-4 px apart, most
    touching), and the labels including them. ``copper`` is the test's copper mask (1 = copper); only kinds
    named in ``classes`` are drawn (none for a dataset whose classes are not DeepPCB's).

    Some boards show defects as dotted strokes (a scratch, an etched or drawn mark); stage 1 cuts such a chain
    into pieces as well as boxing it whole, and stage 2 must learn that the whole chain is the defect and each
    piece is not. The class follows from where the stroke lies (``_STROKE_KINDS``); a stroke that would touch
    another defect, the frame border or the wrong side of an edge is not drawn."""
    kinds = [k for k in _STROKE_KINDS if k in classes]
    if not kinds or n <= 0:
        return img, labels
    out = img.copy()
    h, w = img.shape[:2]
    dist_in = cv2.distanceTransform(copper, cv2.DIST_L2, 3)
    dist_out = cv2.distanceTransform(1 - copper, cv2.DIST_L2, 3)
    busy = _busy_mask(labels, img.shape)
    dark, light = int(np.percentile(img, 2)), int(np.percentile(img, 98))
    _, parts = cv2.connectedComponents(copper, connectivity=8)
    # Medium pixels on its edge, (y, x), per medium; found once, the first time a stroke needs them.
    edge_starts: dict[bool, npt.NDArray[np.intp]] = {}
    new: list[Label] = []
    for _ in range(n):
        cls = str(rng.choice(kinds))
        ink_copper, run = _STROKE_KINDS[cls]
        # The medium the stroke is drawn on: copper for bare ink, bare laminate for copper ink.
        clear = dist_in if not ink_copper else dist_out
        if run != "free" and ink_copper not in edge_starts:
            edge_starts[ink_copper] = np.argwhere((clear > 0) & (clear < 1.5))
        starts = edge_starts.get(ink_copper, np.zeros((0, 2), np.intp))
        for _attempt in range(40):
            if run != "free" and len(starts):
                y0, x0 = (int(v) for v in starts[rng.integers(len(starts))])
                gy, gx = np.gradient(clear[max(0, y0 - 2) : y0 + 3, max(0, x0 - 2) : x0 + 3].astype(np.float32))
                heading = float(np.arctan2(gy.mean(), gx.mean())) + rng.normal(0.0, 0.3)
            else:
                y0, x0 = int(rng.integers(10, h - 10)), int(rng.integers(10, w - 10))
                heading = float(rng.uniform(0, 2 * np.pi))
            if run == "across":
                pts = _stroke(rng, (x0, y0), heading, 120, wander=0.03)
                inside = [
                    0 <= x < w and 0 <= y < h and clear[y, x] > 0 for x, y in pts
                ]  # the walk ends where it leaves the medium
                end = next((i for i in range(4, len(pts)) if not inside[i]), None)
                # Nearly straight, so it crosses to the far edge instead of curling back to the near one.
                if end is None or np.hypot(pts[end - 1][0] - x0, pts[end - 1][1] - y0) < 0.8 * end:
                    continue
                hit, pts = pts[end], pts[:end]
            else:
                pts = _stroke(rng, (x0, y0), heading, int(rng.integers(20, 140)))
            xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
            if xs.min() < 4 or ys.min() < 4 or xs.max() >= w - 4 or ys.max() >= h - 4:
                continue
            if run == "across" and ink_copper:
                # A short joins two copper parts: the one its first dot touches (only one) and the one it ran into.
                touched = set(np.unique(parts[ys[0] - 1 : ys[0] + 2, xs[0] - 1 : xs[0] + 2])) - {0}
                if len(touched) != 1 or parts[hit[1], hit[0]] in touched:
                    continue
            depth = clear[ys, xs]
            # Clear of the other side, except the first steps of an edge stroke (an "across" stroke
            # has left the medium only at its ends, by construction).
            body = depth if run == "free" else depth[6:] if run == "edge" else depth[:1]
            margin = 4.0 if run == "free" else 3.0  # a free stroke's crosses must not touch the other side
            if body.size == 0 or (run != "across" and body.min() < margin) or busy[ys, xs].any():
                continue
            gap = int(rng.choice((2, 3, 3, 4)))
            colour = dark if ink_copper else light
            for x, y in pts[::gap]:
                for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
                    out[y + dy, x + dx] = colour
            box = _drawn_box(xs, ys, img.shape)
            new.append(Label(box, cls))
            _mark_busy(busy, box)
            break
    return out, [*labels, *new]


def channel_fills(
    img: Image,
    copper: npt.NDArray[np.uint8],
    labels: list[Label],
    rng: np.random.Generator,
    n: int,
    classes: tuple[str, ...] = DEFECT_CLASSES,
) -> tuple[Image, list[Label]]:
    """``img`` with up to ``n`` solid defects that run *along* a narrow feature, and the labels including them:
    a stretch of a narrow clearance (<= 8 px) filled with copper where it then joins two copper parts (short),
    or a stretch of a narrow trace etched away where it then splits the trace (open).

    The dotted strokes cross features; a defect can also follow one for tens of pixels (an unetched clearance
    channel, a trace lost over a length). Stage 1 boxes those whole, but they look like the long thin scan
    slivers that training calls background, so the model needs examples. A fill that would touch another
    defect or the frame border, or not change the topology, is not drawn."""
    kinds = [c for c in ("short", "open") if c in classes]
    if not kinds or n <= 0:
        return img, labels
    out = img.copy()
    h, w = img.shape[:2]
    k9 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
    closed = np.asarray(cv2.morphologyEx(copper, cv2.MORPH_CLOSE, k9), dtype=np.uint8)
    opened = np.asarray(cv2.morphologyEx(copper, cv2.MORPH_OPEN, k9), dtype=np.uint8)
    narrow = {"short": np.argwhere(closed & (1 - copper)), "open": np.argwhere(copper & (1 - opened))}
    busy = _busy_mask(labels, img.shape)
    dark, light = int(np.percentile(img, 2)), int(np.percentile(img, 98))
    cu = copper.copy()
    new: list[Label] = []
    for _ in range(n):
        cls = str(rng.choice(kinds))
        pts = narrow[cls]
        for _attempt in range(40):
            if not len(pts):
                break
            y0, x0 = (int(v) for v in pts[rng.integers(len(pts))])
            r = int(rng.integers(10, 36))
            y1, y2, x1, x2 = y0 - r, y0 + r + 1, x0 - r, x0 + r + 1
            if y1 < 12 or x1 < 12 or y2 > h - 12 or x2 > w - 12 or busy[y1:y2, x1:x2].any():
                continue
            win = cu[y1 - 8 : y2 + 8, x1 - 8 : x2 + 8]
            medium = (1 - win) if cls == "short" else win  # what gets filled / etched: laminate or copper
            thin = medium & (1 - np.asarray(cv2.morphologyEx(medium, cv2.MORPH_OPEN, k9), dtype=np.uint8))
            disk = np.zeros_like(win)
            cv2.circle(disk, (x0 - x1 + 8, y0 - y1 + 8), r, 1, -1)
            _, comp = cv2.connectedComponents(thin & disk, connectivity=8)
            seg = (comp == comp[y0 - y1 + 8, x0 - x1 + 8]) & (comp > 0)
            if seg.sum() < 40:
                continue
            after = win.copy()
            after[seg] = 1 if cls == "short" else 0
            # A short joins copper parts, an open splits one: count the window's copper parts before and after.
            before_n = cv2.connectedComponents(win, connectivity=8)[0]
            after_n = cv2.connectedComponents(after, connectivity=8)[0]
            if (cls == "short" and after_n >= before_n) or (cls == "open" and after_n <= before_n):
                continue
            ys, xs = np.nonzero(seg)
            ys, xs = ys + y1 - 8, xs + x1 - 8
            out[ys, xs] = dark if cls == "short" else light
            cu[ys, xs] = 1 if cls == "short" else 0
            box = _drawn_box(xs, ys, img.shape)
            new.append(Label(box, cls))
            _mark_busy(busy, box)
            break
    return out, [*labels, *new]


def examples(
    pairs: list[tuple[Image, Image, list[Label]]],
    *,
    jitter: int = 3,
    misreg: int = 0,
    dots: float = 0.0,
    frag_inside: float = 0.0,
    seed: int = 0,
    classes: tuple[str, ...] = DEFECT_CLASSES,
    fills: float = 0.0,
    passes: tuple[tuple[int, int], ...] = PROPOSAL_PASSES,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Crops (N, 3, CROP, CROP), class ids (0 = background, -1 = ignore) and box targets (N, 4).

    Each pair is used as it is and ``misreg`` more times with a misregistered template (``misregister``); in
    those extra copies ``dots`` dotted-stroke defects (``dotted_strokes``) and ``fills`` solid defects along
    narrow features (``channel_fills``) are drawn on average."""
    rng = np.random.default_rng(seed)
    proposer = TemplateDiffDetector(min_confidence=0.0)
    crops: list[npt.NDArray[np.uint8]] = []
    ys: list[int] = []
    ts: list[npt.NDArray[np.float32]] = []
    views: list[tuple[Image, Image, list[Label]]] = []
    for img, tmpl, labels in pairs:
        views.append((img, tmpl, labels))
        copper = proposer._copper(img) if misreg and (dots > 0 or fills > 0) else None
        for _ in range(misreg):
            test, lab = img, labels
            if copper is not None and dots > 0:
                test, lab = dotted_strokes(img, copper, labels, rng, int(rng.poisson(dots)), classes)
            if copper is not None and fills > 0:
                test, lab = channel_fills(test, copper, lab, rng, int(rng.poisson(fills)), classes)
            views.append((test, misregister(tmpl, rng), lab))
    for k, (img, tmpl, labels) in enumerate(views):
        props, shift = proposer.proposals_and_shift(Frame("train", k, 0.0, img, tmpl), passes)
        boxes: list[Box] = []
        for p in props:
            ious = [p.iou(t.box) for t in labels]
            j = int(np.argmax(ious)) if ious else -1
            best = ious[j] if ious else 0.0
            if best >= POS_IOU:
                ys.append(1 + classes.index(labels[j].cls))
                ts.append(encode_target(p, labels[j].box))
            else:
                frag = frag_inside and any(p.intersection(t.box) >= frag_inside * p.area for t in labels)
                ys.append(0 if best < NEG_IOU or frag else -1)
                ts.append(np.zeros(4, dtype=np.float32))
            boxes.append(p)
        for t in labels:
            for _ in range(jitter):
                jb = _jitter(t.box, rng, img.shape)
                boxes.append(jb)
                ys.append(1 + classes.index(t.cls))
                ts.append(encode_target(jb, t.box))
        if boxes:
            crops.append(crop_batch(stacked_padded(img, tmpl, shift), boxes))
    if not crops:
        return np.zeros((0, 3, CROP, CROP), np.uint8), np.zeros(0, np.int64), np.zeros((0, 4), np.float32)
    return np.concatenate(crops), np.asarray(ys, dtype=np.int64), np.stack(ts).astype(np.float32)


def build_model(n_classes: int = len(DEFECT_CLASSES)):  # type: ignore[no-untyped-def]
    """Four conv blocks to 4x4x128, one hidden layer, then class logits (background + n) and 4 offsets."""
    import torch
    from torch import nn

    def block(i: int, o: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

    class CropNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(block(3, 16), block(16, 32), block(32, 64), block(64, 128), nn.Flatten())
            self.hidden = nn.Sequential(nn.Linear(128 * (CROP // 16) ** 2, 256), nn.ReLU(), nn.Dropout(0.2))
            self.cls = nn.Linear(256, n_classes + 1)
            self.box = nn.Linear(256, 4)
            nn.init.zeros_(self.box.weight)
            nn.init.zeros_(self.box.bias)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.hidden(self.body(x))
            return self.cls(h), self.box(h)

    return CropNet()


def flip(
    x: npt.NDArray[np.float32],
    t: npt.NDArray[np.float32],
    h: npt.NDArray[np.bool_],
    v: npt.NDArray[np.bool_],
    tr: npt.NDArray[np.bool_],
) -> None:
    """Flip crops horizontally (``h``), vertically (``v``), then transpose (``tr``), in place; the box offsets
    (corner deltas relative to the crop centre) follow. Defect classes are invariant to all three."""
    x[h] = x[h][..., ::-1]
    t[h] = np.stack([-t[h, 2], t[h, 1], -t[h, 0], t[h, 3]], axis=1)
    x[v] = x[v][..., ::-1, :]
    t[v] = np.stack([t[v, 0], -t[v, 3], t[v, 2], -t[v, 1]], axis=1)
    x[tr] = x[tr].transpose(0, 1, 3, 2)
    t[tr] = t[tr][:, [1, 0, 3, 2]]


def train(
    crops: npt.NDArray[np.uint8],
    ys: npt.NDArray[np.int64],
    ts: npt.NDArray[np.float32],
    out: Path,
    *,
    epochs: int = 8,
    minutes: float = 20.0,
    batch: int = 128,
    seed: int = 0,
    log: bool = True,
    classes: tuple[str, ...] = DEFECT_CLASSES,
    progress: bool = False,
    passes: tuple[tuple[int, int], ...] = PROPOSAL_PASSES,
    start: StartWeights | None = None,
) -> Path:
    """Train on the examples, export ONNX + metadata to ``out``; stops early at ``minutes``. ``start``: begin
    from those weights (same classes), at FINETUNE_LR_SCALE of the learning rate."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    keep = ys >= 0
    crops, ys, ts = crops[keep], ys[keep], ts[keep]
    model = build_model(len(classes))
    lr = 1.0
    if start is not None:
        if start.classes != tuple(classes):
            raise ValueError(f"start weights are for classes {start.classes}, training asks for {tuple(classes)}")
        model.load_state_dict(start.state)
        lr = FINETUNE_LR_SCALE
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3 * lr, weight_decay=1e-4)
    steps = epochs * max(1, -(-len(ys) // batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3 * lr, total_steps=steps, pct_start=0.15)
    t0 = time.time()
    step = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="hybrid stage 2", unit="batch")
    for ep in range(epochs):
        model.train()
        order = rng.permutation(len(ys))
        tot = 0.0
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            x = crops[idx].astype(np.float32) / 255.0
            t = ts[idx].copy()
            h, v, tr = rng.random((3, len(idx))) < 0.5
            flip(x, t, h, v, tr)
            xb = torch.from_numpy(np.ascontiguousarray(x))
            yb = torch.from_numpy(ys[idx])
            tb = torch.from_numpy(np.ascontiguousarray(t))
            logits, deltas = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=0.02)
            pos = yb > 0
            if pos.any():
                loss = loss + 10.0 * F.smooth_l1_loss(deltas[pos], tb[pos], beta=0.02)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step < steps - 1:
                sched.step()
            step += 1
            tot += loss.item() * len(idx)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=ep + 1, loss=f"{loss.item():.3f}")
        if log:
            print(f"epoch {ep + 1}/{epochs} loss {tot / len(ys):.4f} {time.time() - t0:.0f}s", flush=True)
        if time.time() - t0 > minutes * 60:
            print(f"time budget of {minutes} min reached after epoch {ep + 1}", flush=True)
            break
    if bar is not None:
        bar.close()
    return export(model, out, classes, passes)


def export(  # type: ignore[no-untyped-def]
    model, out: Path, classes: tuple[str, ...] = DEFECT_CLASSES, passes: tuple[tuple[int, int], ...] = PROPOSAL_PASSES
) -> Path:
    """ONNX (dynamic batch) + hybrid.json into ``out``; weights.pt beside it for later fine-tuning."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    torch.save(model.state_dict(), out / "weights.pt")
    dummy = torch.zeros(2, 3, CROP, CROP)
    torch.onnx.export(
        model,
        (dummy,),
        str(out / MODEL_FILE),
        input_names=["crops"],
        output_names=["logits", "deltas"],
        dynamic_axes={"crops": {0: "n"}, "logits": {0: "n"}, "deltas": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )
    HybridMeta(classes=tuple(classes), passes=passes).save(out)
    return out / MODEL_FILE


def run_eval(
    det: HybridDetector,
    pairs: list[tuple[Image, Image, list[Label]]],
    confs: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7),
) -> dict[str, object]:
    """evaluate() over all detections, DeepPCB P/R/F at each confidence in ``confs``, latency of detect()."""
    from vision.metrics import evaluate, precision_recall

    preds: list[list[Detection]] = []
    times: list[float] = []
    for k, (img, tmpl, _) in enumerate(pairs):
        t0 = time.perf_counter()
        # ``unknown`` belongs to no trained class: reported to the line, not scored (as in vision.bench).
        preds.append([d for d in det.detect(Frame("eval", k, 0.0, img, tmpl)) if d.cls != UNKNOWN_CLASS])
        times.append((time.perf_counter() - t0) * 1000)
    truths = [lab for _, _, lab in pairs]
    rep = evaluate(preds, truths, DEFECT_CLASSES)
    res: dict[str, object] = {
        "images": len(pairs),
        "truth_boxes": sum(len(t) for t in truths),
        "map50": round(rep.map50, 4),
        "map50_95": round(rep.map50_95, 4),
        "map_deeppcb": round(rep.map_deeppcb, 4),
        "ap50": {c: round(v, 4) for c, v in rep.ap50.items()},
    }
    for c in confs:
        ps = [[d for d in p if d.confidence >= c] for p in preds]
        o, _ = precision_recall(ps, truths, classes=DEFECT_CLASSES)
        a, _ = precision_recall(ps, truths, same_class=False)
        res[f"conf>={c}"] = {
            "P": round(o.precision, 4), "R": round(o.recall, 4), "F": round(o.f1, 4),
            "tp": o.tp, "fp": o.fp, "fn": o.fn, "agnostic_R": round(a.recall, 4),
        }  # fmt: skip
    res["latency_ms"] = {
        "mean": round(float(np.mean(times)), 2),
        "p50": round(float(np.median(times)), 2),
        "p95": round(float(np.percentile(times, 95)), 2),
    }
    return res


def train_registry(cfg: TrainConfig, command: str) -> TrainResult:
    """``lineguard train --arch hybrid``: examples from the dataset, stage 2 trained, exported and published as
    a registry version (model.onnx = the crop CNN, hybrid.json, weights.pt, metrics of the held-out part)."""
    import tempfile

    from vision.bench import evaluate
    from vision.registry import hash_samples, publish
    from vision.stacking import InputSpec
    from vision.train import TrainError, TrainResult, class_names_for, load_split

    try:
        import torch
    except ImportError as e:  # an edge box installs the runtime only
        raise TrainError(f"training needs torch: pip install 'lineguard[train]' (import failed: {e})") from e
    fit, held = load_split(cfg)
    no_template = [s.sample_id or str(s.image_path) for s in (*fit, *held) if s.template_path is None]
    if no_template:
        raise TrainError(
            f"--arch hybrid needs a golden template for every sample; {len(no_template)} have none "
            f"(first: {no_template[0]}). Use --arch yolo for data without templates."
        )
    classes = class_names_for(fit)
    start = None
    passes = PROPOSAL_PASSES
    if cfg.weights is not None:
        from vision.detectors.load import resolve_model_dir

        weights = Path(cfg.weights)
        if not weights.exists():  # a model name: this registry, then the shipped models
            with contextlib.suppress(LookupError):  # not one either: load_start names the missing file
                weights = resolve_model_dir(str(cfg.weights), cfg.out)
        try:
            start = load_start(weights, classes)
        except ValueError as e:
            raise TrainError(str(e)) from e
        # The fine-tuned network keeps the outputs and the proposals of the one it starts from.
        classes, passes = start.classes, start.passes
    torch.set_num_threads(max(1, cfg.threads))
    cv2.setNumThreads(max(1, cfg.threads))
    t0 = time.monotonic()
    pairs = [(_read(s.image_path), _read(s.template_path), s.labels) for s in fit]
    misreg = int(cfg.extra.get("misreg", 1))
    crops, ys, ts = examples(
        pairs, misreg=misreg, dots=DOTS, frag_inside=FRAG_INSIDE, seed=cfg.seed, classes=classes, passes=passes
    )
    if not (ys > 0).any():
        raise TrainError("no labelled defects in the training samples: nothing to learn")
    minutes = cfg.time_hours * 60 if cfg.time_hours else float("inf")
    with tempfile.TemporaryDirectory(prefix="lineguard-hybrid-") as tmp:
        out = Path(tmp)
        train(
            crops,
            ys,
            ts,
            out,
            epochs=cfg.epochs,
            minutes=minutes,
            batch=cfg.batch,
            seed=cfg.seed,
            log=False,
            classes=classes,
            progress=True,
            passes=passes,
            start=start,
        )
        train_seconds = time.monotonic() - t0
        spec = InputSpec(
            size=CROP,
            stacking="diff",
            class_names=classes,
            no_template_fallback="refused: the hybrid detector needs a golden template",
            extra={
                "arch": "hybrid",
                "trained_on": cfg.fmt,
                "holdout_last": cfg.holdout_last,
                "misreg": misreg,
                "dots": DOTS,
                "frag_inside": FRAG_INSIDE,
                "fine_tuned_from": str(start.path) if start is not None else None,
            },
        )
        metrics: dict[str, Any] = {
            "arch": "hybrid",
            "train_seconds": round(train_seconds, 1),
            "train_samples": len(fit),
            "train_crops": int((ys >= 0).sum()),
            "heldout_samples": len(held),
            "epochs_requested": cfg.epochs,
            "fine_tuned_from": str(start.path) if start is not None else None,
        }
        entry = publish(
            cfg.out,
            cfg.name,
            onnx_path=out / MODEL_FILE,
            spec=spec,
            data_hash=hash_samples(fit),
            train_command=command,
            metrics=metrics,
            weights_path=out / "weights.pt",
            extra_files=[out / META_FILE],
        )
    if held:
        det = HybridDetector(entry.path, threads=cfg.threads)
        metrics["heldout"] = evaluate(det, held, prf_conf=OPERATING_CONF)
    else:
        metrics["heldout"] = None
        metrics["note"] = "no --holdout-last: no held-out evaluation"
    (entry.path / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return TrainResult(entry=entry, metrics=metrics, train_seconds=train_seconds)


def _pairs(data: Path, part: str, val_group: str | None) -> list[tuple[Image, Image, list[Label]]]:
    """``train``: the first 800 lines minus board group ``val_group``; ``val``: that group's lines among the 800;
    ``holdout``: the last 200 lines. A whole board design held out is what the holdout asks of a model (its
    groups 44000 and 50600 appear nowhere in the 800); a random line split would be far too optimistic."""
    from vision.datasets import load, split_holdout

    train_all, holdout = split_holdout(load(data, "deeppcb", "trainval"), 200)
    in_val = [val_group is not None and s.image_path.parent.name == val_group for s in train_all]
    chosen = {
        "train": [s for s, v in zip(train_all, in_val, strict=True) if not v],
        "val": [s for s, v in zip(train_all, in_val, strict=True) if v],
        "holdout": holdout,
    }
    if not chosen[part]:
        raise SystemExit(f"no samples in part {part!r} (val group {val_group!r})")
    return [(_read(s.image_path), _read(s.template_path), s.labels) for s in chosen[part]]


def _passes_arg(text: str) -> tuple[tuple[int, int], ...]:
    """``3x3,5x3`` -> ((3, 3), (5, 3)): (opening side, grouping radius) per pass, each >= 1."""
    try:
        passes = tuple((int(k), int(g)) for k, g in (p.split("x") for p in text.split(",")))
    except ValueError:
        passes = ()
    if not passes or min(min(p) for p in passes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected side x radius per pass, e.g. 3x3,5x3 (each >= 1)")
    return passes


def main(argv: list[str] | None = None) -> None:
    import os

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=("train", "eval"))
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("var/hybrid/v1"))
    ap.add_argument("--model", type=Path, default=Path("var/hybrid/v1"))
    ap.add_argument("--part", choices=("train", "val", "holdout"), default="val")
    ap.add_argument("--val-group", default=None, help="board group held out of training for validation, e.g. 77000")
    ap.add_argument("--misreg", type=int, default=1, help="extra copies of each pair with a misregistered template")
    ap.add_argument("--dots", type=float, default=0.0, help="dotted-stroke defects drawn per extra copy, on average")
    ap.add_argument("--fills", type=float, default=0.0, help="channel fills / trace cuts per extra copy, on average")
    ap.add_argument("--frag", type=float, default=0.0, help="fragments (this much inside a truth box) -> background")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--passes", type=_passes_arg, default=PROPOSAL_PASSES, help="stage-1 proposal passes, e.g. 3x3,5x3,3x9"
    )
    ap.add_argument("--tta", type=int, default=4, help="flipped views averaged at inference (1 = off)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = ap.parse_args(argv)
    passes = args.passes
    cv2.setNumThreads(args.threads)
    if args.cmd == "train":
        import torch

        torch.set_num_threads(args.threads)
        t0 = time.time()
        crops, ys, ts = examples(
            _pairs(args.data, "train", args.val_group),
            misreg=args.misreg,
            dots=args.dots,
            frag_inside=args.frag,
            seed=args.seed,
            fills=args.fills,
            passes=passes,
        )
        counts = {c: int((ys == i).sum()) for i, c in enumerate(("background", *DEFECT_CLASSES))}
        print(f"{len(ys)} examples ({int((ys < 0).sum())} ignored) {counts} in {time.time() - t0:.0f}s", flush=True)
        train(crops, ys, ts, args.out, epochs=args.epochs, minutes=args.minutes, seed=args.seed, passes=passes)
        print(f"exported to {args.out}", flush=True)
        if args.val_group:
            det = HybridDetector(args.out, threads=args.threads, tta=args.tta)
            print(json.dumps(run_eval(det, _pairs(args.data, "val", args.val_group)), indent=1))
    else:
        det = HybridDetector(args.model, threads=args.threads, tta=args.tta)
        print(json.dumps(run_eval(det, _pairs(args.data, args.part, args.val_group)), indent=1))


if __name__ == "__main__":
    main()
