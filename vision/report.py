"""What an evaluation got wrong, as files a person can look at: ``lineguard eval --report DIR``.

A metrics JSON says *how much* a model misses; a quality engineer deciding whether to trust it, or what to
label next, needs to *see* the misses. ``write_report`` writes

* ``metrics.json``: the evaluation's JSON, as printed;
* ``pr.png``: per-class precision-recall curves under both matching rules (COCO IoU >= 0.5 and DeepPCB
  IoU > 0.33), with the operating point marked: the distance between the two panels is how much of the
  AP50 loss is box placement rather than finding the defect;
* ``errors.csv``: every error at the operating point, one row each: a missed truth or a false detection,
  with the best IoU to the other side (a miss whose class was found at IoU 0.4 is a box-placement miss,
  not a blind spot);
* ``errors.png``: a gallery of those errors (test image, and the template where there is one), truth in
  red, detections in green, the error's own box drawn thicker.

Matching follows ``vision.metrics`` (greedy by confidence, same class). Plots need matplotlib (the
``train`` extra); without it the other files are still written and the result says why ``pr.png`` is not.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from vision.metrics import match_image, pr_curve
from vision.stacking import read_gray
from vision.types import Box, Detection, Label, Sample

if TYPE_CHECKING:
    from vision.bench import DetectionRun

#: The two matching rules plotted side by side: (title, IoU threshold, strict ">").
RULES: tuple[tuple[str, float, bool], ...] = (("COCO: IoU >= 0.5", 0.5, False), ("DeepPCB: IoU > 0.33", 0.33, True))
#: Gallery geometry: each tile shows a square of the image around the error, scaled to TILE px.
TILE = 224
_MARGIN = 24
_RED, _GREEN, _INK = (40, 40, 220), (40, 170, 40), (20, 20, 20)


@dataclass(frozen=True, slots=True)
class ErrorCase:
    """One error at the operating point: a truth nothing matched (``miss``) or a detection that matched no
    truth (``false``). ``best_iou`` is the highest IoU with a box of the same class on the other side
    (detections at the operating point for a miss, truths for a false detection); ``nearest`` names the
    class of the most-overlapping box of any class on the other side (empty when nothing overlaps), and
    ``partner`` is that same-class box (None when none overlaps): the gallery frames both."""

    kind: Literal["miss", "false"]
    image: int
    sample_id: str
    cls: str
    box: Box
    confidence: float
    best_iou: float
    nearest: str
    partner: Box | None = None


def find_errors(
    samples: Sequence[Sample],
    preds: Sequence[Sequence[Detection]],
    truths: Sequence[Sequence[Label]],
    *,
    prf_conf: float,
    iou_thr: float = 0.5,
    strict: bool = False,
) -> list[ErrorCase]:
    """Misses and false detections, image by image, at confidence >= ``prf_conf`` and the given IoU rule.

    False detections come first, most confident first (they cost AP the most); then misses in image order.
    """
    falses: list[ErrorCase] = []
    misses: list[ErrorCase] = []
    for i, (dets_all, ts) in enumerate(zip(preds, truths, strict=True)):
        dets = [d for d in dets_all if d.confidence >= prf_conf]
        sid = samples[i].sample_id or samples[i].image_path.name
        matched = match_image(dets, ts, iou_thr, strict=strict)
        for d, j in zip(dets, matched, strict=True):
            if j < 0:
                best, near, partner = _overlap(d.box, d.cls, [(t.box, t.cls) for t in ts])
                falses.append(ErrorCase("false", i, sid, d.cls, d.box, d.confidence, best, near, partner))
        found = {j for j in matched if j >= 0}
        for j, t in enumerate(ts):
            if j not in found:
                best, near, partner = _overlap(t.box, t.cls, [(d.box, d.cls) for d in dets])
                misses.append(ErrorCase("miss", i, sid, t.cls, t.box, 1.0, best, near, partner))
    falses.sort(key=lambda e: -e.confidence)
    return falses + misses


def _overlap(box: Box, cls: str, others: list[tuple[Box, str]]) -> tuple[float, str, Box | None]:
    """(best same-class IoU, class of the most-overlapping box of any class, the best same-class box)."""
    same = max(((b.iou(box), k) for k, (b, c) in enumerate(others) if c == cls), default=(0.0, -1))
    best_any = max(((b.iou(box), c) for b, c in others), default=(0.0, ""))
    partner = others[same[1]][0] if same[0] > 0 else None
    return round(same[0], 3), best_any[1] if best_any[0] > 0 else "", partner


def write_errors_csv(path: Path, errors: Sequence[ErrorCase]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "kind",
                "image",
                "sample_id",
                "class",
                "x1",
                "y1",
                "x2",
                "y2",
                "confidence",
                "best_iou_same_class",
                "nearest_class",
            ]
        )
        for e in errors:
            b = e.box
            w.writerow(
                [
                    e.kind,
                    e.image,
                    e.sample_id,
                    e.cls,
                    f"{b.x1:.1f}",
                    f"{b.y1:.1f}",
                    f"{b.x2:.1f}",
                    f"{b.y2:.1f}",
                    f"{e.confidence:.4f}",
                    f"{e.best_iou:.3f}",
                    e.nearest,
                ]
            )


def plot_pr(
    path: Path,
    preds: Sequence[Sequence[Detection]],
    truths: Sequence[Sequence[Label]],
    classes: Sequence[str],
    *,
    prf_conf: float,
    title: str = "",
) -> None:
    """Per-class PR curves (monotone envelope, as AP integrates it), one panel per rule in ``RULES``."""
    import matplotlib

    matplotlib.use("Agg")  # files only; an edge box has no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(RULES), figsize=(6.2 * len(RULES), 5.2), sharey=True)
    ops: list[tuple[float, float]] = []  # (precision, recall) at the operating point, to frame the axes
    for ax, (name, thr, strict) in zip(np.atleast_1d(axes), RULES, strict=True):
        aps = []
        for k, c in enumerate(classes):
            curve = pr_curve(preds, truths, c, thr, strict=strict)
            if curve is None:
                continue
            ap = curve.average_precision()
            aps.append(ap)
            colour = plt.get_cmap("tab10")(k % 10)
            if len(curve.scores):
                env = curve.envelope()
                ax.step(
                    np.r_[0.0, curve.recall],
                    np.r_[env[0], env],
                    where="pre",
                    color=colour,
                    lw=1.4,
                    label=f"{c} (n={curve.n_truth}) AP {ap:.3f}",
                )
                p, r = curve.at(prf_conf)
                ax.plot([r], [p], "o", color=colour, ms=5)
                ops.append((p, r))
            else:
                ax.plot([], [], color=colour, label=f"{c} (n={curve.n_truth}) AP 0.000")
        mean = f"mAP {np.mean(aps):.3f}" if aps else "no truth"
        ax.set_title(f"{name}: {mean}")
        ax.set_xlabel("recall")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    # A good model's curves hug the top-right corner; frame the axes around the operating points (on a 0.05 /
    # 0.1 grid) so the differences that matter are visible. A weak model gets the full square.
    y0 = float(np.clip(np.floor((min((p for p, _ in ops), default=0.0) - 0.05) / 0.05) * 0.05, 0.0, 0.9))
    x0 = float(np.clip(np.floor((min((r for _, r in ops), default=0.0) - 0.1) / 0.1) * 0.1, 0.0, 0.8))
    for ax in np.atleast_1d(axes):
        ax.set_xlim(x0, 1.005)
        ax.set_ylim(y0, 1.005)
    np.atleast_1d(axes)[0].set_ylabel("precision")
    fig.suptitle(f"{title}  (dots: operating point, confidence >= {prf_conf:g})".strip(), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gallery(
    path: Path,
    samples: Sequence[Sample],
    preds: Sequence[Sequence[Detection]],
    errors: Sequence[ErrorCase],
    *,
    prf_conf: float,
    limit: int = 24,
    columns: int = 2,
) -> int:
    """Tiles of the first ``limit`` errors; returns how many were drawn (0: no file written)."""
    tiles = []
    for e in errors[:limit]:
        s = samples[e.image]
        views = [read_gray(s.image_path)]
        if s.template_path is not None:
            views.append(read_gray(s.template_path))
        truths = list(s.labels)
        dets = [d for d in preds[e.image] if d.confidence >= prf_conf]
        tiles.append(_captioned(np.hstack([_view(v, e, truths, dets) for v in views]), e))
    if not tiles:
        return 0
    width = max(t.shape[1] for t in tiles)
    tiles = [
        cv2.copyMakeBorder(t, 0, 0, 0, width - t.shape[1], cv2.BORDER_CONSTANT, value=(255, 255, 255)) for t in tiles
    ]
    blank = np.full_like(tiles[0], 255)
    rows = [
        np.hstack(tiles[k : k + columns] + [blank] * (columns - len(tiles[k : k + columns])))
        for k in range(0, len(tiles), columns)
    ]
    if not cv2.imwrite(str(path), np.vstack(rows)):
        raise OSError(f"cannot write {path}")
    return len(tiles)


def _view(gray: np.ndarray, e: ErrorCase, truths: list[Label], dets: list[Detection]) -> np.ndarray:
    """A TILE x TILE colour view around ``e.box`` and its partner (square, margin around), boxes drawn."""
    b = e.box
    f = (
        b
        if e.partner is None
        else Box(min(b.x1, e.partner.x1), min(b.y1, e.partner.y1), max(b.x2, e.partner.x2), max(b.y2, e.partner.y2))
    )
    side = max(f.width, f.height) + 2 * _MARGIN
    x0, y0 = (f.x1 + f.x2) / 2 - side / 2, (f.y1 + f.y2) / 2 - side / 2
    scale = TILE / side
    # Crop by an affine warp so a box at the image border still gets a full, centred tile (grey outside).
    m = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]], dtype=np.float32)
    view = cv2.warpAffine(
        gray,
        m,
        (TILE, TILE),
        flags=cv2.INTER_NEAREST if scale >= 1 else cv2.INTER_AREA,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=160,
    )
    img = cv2.cvtColor(view, cv2.COLOR_GRAY2BGR)

    def draw(box: Box, colour: tuple[int, int, int], width: int) -> None:
        p1 = (round((box.x1 - x0) * scale), round((box.y1 - y0) * scale))
        p2 = (round((box.x2 - x0) * scale), round((box.y2 - y0) * scale))
        cv2.rectangle(img, p1, p2, colour, width)

    for t in truths:
        draw(t.box, _RED, 3 if (e.kind == "miss" and t.box == b) else 1)
    for d in dets:
        draw(d.box, _GREEN, 3 if (e.kind == "false" and d.box == b) else 1)
    return np.asarray(cv2.copyMakeBorder(img, 0, 0, 1, 1, cv2.BORDER_CONSTANT, value=(255, 255, 255)))


def _captioned(views: np.ndarray, e: ErrorCase) -> np.ndarray:
    """The views (test | template) with two caption lines below: what went wrong, where, and how close."""
    caption = np.full((36, views.shape[1], 3), 255, dtype=np.uint8)
    what = f"MISSED {e.cls}" if e.kind == "miss" else f"FALSE {e.cls} {e.confidence:.2f}"
    cv2.putText(
        caption, f"{what}   {Path(e.sample_id).name}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, _INK, 1, cv2.LINE_AA
    )
    other = "detection" if e.kind == "miss" else "truth"
    near = f", nearest {other}: {e.nearest}" if e.nearest and e.nearest != e.cls else ""
    cv2.putText(
        caption,
        f"best IoU with a {e.cls} {other}: {e.best_iou:.2f}{near}",
        (4, 30),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.4,
        _INK,
        1,
        cv2.LINE_AA,
    )
    out = np.vstack([views, caption])
    return np.asarray(cv2.copyMakeBorder(out, 3, 3, 3, 3, cv2.BORDER_CONSTANT, value=(255, 255, 255)))


def write_report(
    directory: Path,
    run: DetectionRun,
    classes: Sequence[str],
    *,
    prf_conf: float,
    metrics: dict[str, Any],
    iou_thr: float = 0.5,
    limit: int = 24,
) -> dict[str, Any]:
    """Write the files listed in the module docstring; returns what was written (and why a file was not)."""
    directory.mkdir(parents=True, exist_ok=True)
    truths = run.truths
    written: dict[str, Any] = {"dir": str(directory)}
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    written["metrics"] = "metrics.json"
    errors = find_errors(run.samples, run.preds, truths, prf_conf=prf_conf, iou_thr=iou_thr)
    write_errors_csv(directory / "errors.csv", errors)
    written["errors"] = {
        "file": "errors.csv",
        "iou": iou_thr,
        "false": sum(e.kind == "false" for e in errors),
        "missed": sum(e.kind == "miss" for e in errors),
    }
    n = gallery(directory / "errors.png", run.samples, run.preds, errors, prf_conf=prf_conf, limit=limit)
    written["gallery"] = {"file": "errors.png", "tiles": n} if n else {"file": None, "why": "no errors"}
    try:
        plot_pr(
            directory / "pr.png", run.preds, truths, classes, prf_conf=prf_conf, title=str(metrics.get("detector", ""))
        )
        written["pr"] = "pr.png"
    except ImportError:
        written["pr"] = None
        written["pr_why"] = "matplotlib is not installed (pip install 'lineguard[train]'); the other files are written"
    return written
