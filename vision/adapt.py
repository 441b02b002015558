"""How many labelled boards does a model need to adapt to a new design? ``lineguard bench adapt``.

A factory's line runs one board design; a model trained elsewhere meets it unseen, and its inspectors may
also draw boxes their own way. The fix the product offers is the feedback loop: operators save frames with
corrected labels (``vision.feedback.save_feedback``), and ``lineguard train --arch hybrid --weights <model>``
fine-tunes on them. This module measures that loop end to end, through the same calls:

1. the design's pairs, in order, are split into a pool (the boards an operator could label) and the last
   ``eval_last`` (the boards the line inspects next; never trained on);
2. for each count k and seed, k boards drawn from the pool (seeded) are saved as feedback, the model is
   fine-tuned on them alone, and evaluated on the next boards; k = 0 is the model as it is.

The result is a learning curve (mAP50, mAP at IoU > 0.33, F-score against k), as JSON and as a plot.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vision.types import Sample

#: The scores a learning curve plots: (AdaptPoint field, legend).
CURVES = (("map50", "mAP50 (IoU >= 0.5)"), ("map_deeppcb", "mAP (IoU > 0.33)"), ("f1", "F-score (IoU > 0.33)"))


@dataclass(frozen=True, slots=True)
class AdaptPoint:
    """One fine-tune (or the base model for ``boards`` = 0) scored on the evaluation boards."""

    boards: int
    seed: int
    map50: float
    map_deeppcb: float
    f1: float
    precision: float
    recall: float
    train_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_design(samples: Sequence[Sample], eval_last: int) -> tuple[list[Sample], list[Sample]]:
    """(pool, evaluation boards): the last ``eval_last`` in dataset order are evaluated, never trained on."""
    if not 0 < eval_last < len(samples):
        raise ValueError(f"--eval-last must be between 1 and {len(samples) - 1} for {len(samples)} boards")
    return list(samples[:-eval_last]), list(samples[-eval_last:])


def learning_curve(
    samples: Sequence[Sample],
    model: Path,
    counts: Sequence[int],
    *,
    eval_last: int,
    seeds: Sequence[int] = (0,),
    epochs: int = 8,
    threads: int = 2,
    work: Path | None = None,
    on_point: Callable[[AdaptPoint], None] | None = None,
) -> list[AdaptPoint]:
    """Fine-tune ``model`` (a hybrid model directory) on k boards of the pool for each k in ``counts`` and each
    seed, and score each on the evaluation boards. ``work``: where the feedback datasets and fine-tuned models
    go (a temporary directory when None)."""
    from vision.bench import evaluate
    from vision.detectors.factory import HybridDetectorConfig, build_detector
    from vision.feedback import save_feedback
    from vision.stacking import read_gray
    from vision.train import DEFAULT_BATCH, TrainConfig, train
    from vision.train_hybrid import OPERATING_CONF
    from vision.types import Frame

    pool, held = split_design(samples, eval_last)
    bad = [k for k in counts if not 0 <= k <= len(pool)]
    if bad:
        raise ValueError(f"board counts {bad} outside 0..{len(pool)} (the pool left after --eval-last {eval_last})")
    missing = [s.sample_id for s in samples if s.template_path is None]
    if missing:
        raise ValueError(f"{len(missing)} boards have no golden template (first: {missing[0]}); hybrid models need one")

    def score(model_dir: Path, k: int, seed: int, seconds: float) -> AdaptPoint:
        det = build_detector(HybridDetectorConfig(model=str(model_dir), threads=threads))
        r = evaluate(det, held, prf_conf=OPERATING_CONF, warmup=1)
        p = AdaptPoint(k, seed, r["map50"], r["map_deeppcb"], r["f1"], r["precision"], r["recall"], seconds)
        if on_point is not None:
            on_point(p)
        return p

    points: list[AdaptPoint] = []
    with tempfile.TemporaryDirectory(prefix="lineguard-adapt-") as tmp:
        root = Path(work) if work is not None else Path(tmp)
        for k in sorted(set(counts)):
            if k == 0:  # the model as shipped: seeds change nothing
                points.append(score(Path(model), 0, 0, 0.0))
                continue
            for seed in seeds:
                rng = np.random.default_rng(seed)
                chosen = [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))]
                data = root / f"feedback-k{k}-s{seed}"
                for n, s in enumerate(chosen):
                    assert s.template_path is not None  # checked above
                    frame = Frame("adapt", n, 0.0, read_gray(s.image_path), read_gray(s.template_path))
                    save_feedback(data, frame, s.labels, note=f"adapt: {s.sample_id}")
                cfg = TrainConfig(
                    arch="hybrid",
                    data=data,
                    fmt="deeppcb",
                    weights=Path(model),
                    epochs=epochs,
                    batch=DEFAULT_BATCH["hybrid"],
                    out=root / "registry",
                    name=f"adapt-k{k}-s{seed}",
                    threads=threads,
                    seed=seed,
                )
                res = train(cfg, command=f"lineguard bench adapt (k={k}, seed={seed})")
                points.append(score(res.entry.path, k, seed, res.train_seconds))
    return points


def summary(points: Sequence[AdaptPoint]) -> list[dict[str, Any]]:
    """Per board count: mean, min and max of each score over seeds."""
    out = []
    for k in sorted({p.boards for p in points}):
        ps = [p for p in points if p.boards == k]
        row: dict[str, Any] = {"boards": k, "runs": len(ps)}
        for m in ("map50", "map_deeppcb", "f1"):
            v = np.array([getattr(p, m) for p in ps])
            row[m] = {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}
        row["train_seconds_mean"] = float(np.mean([p.train_seconds for p in ps]))
        out.append(row)
    return out


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """``summary`` rows as a markdown table (what ``bench adapt --markdown`` appends)."""
    lines = [
        "| boards labelled | runs | mAP50 mean (min-max) | mAP IoU>0.33 | F IoU>0.33 | fine-tune s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{r[m]['mean']:.3f} ({r[m]['min']:.3f}-{r[m]['max']:.3f})" for m, _ in CURVES]
        lines.append(f"| {r['boards']} | {r['runs']} | {' | '.join(cells)} | {r['train_seconds_mean']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_curve(path: Path, points: Sequence[AdaptPoint], title: str = "") -> None:
    """Scores against labelled boards: mean line, min-max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary(points)
    ks = [r["boards"] for r in rows]
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    for m, label in CURVES:
        mean = [r[m]["mean"] for r in rows]
        ax.plot(ks, mean, "o-", label=label)
        ax.fill_between(ks, [r[m]["min"] for r in rows], [r[m]["max"] for r in rows], alpha=0.2)
    ax.set_xlabel("boards labelled by the line's operators (fine-tuned on them alone)")
    ax.set_ylabel("score on the line's next boards")
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
