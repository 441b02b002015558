"""A validation split that works on real folders: stratified and random, every class in both parts.

Published data sets are often sorted by class (NEU surface defects: all ``crazing_*``, then all ``inclusion_*``,
...), so "the last N files" is nearly one class. ``split_stratified`` shuffles with a seed and takes about
``fraction`` of each class into validation, so both parts see every class; when that cannot be done (a class on
one image only) it raises SplitError saying which class and what to do, never a traceback further down.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from vision.types import Sample

GOOD = "<no labels>"


class SplitError(ValueError):
    """The data cannot be split as asked; the message names the class and the remedy."""


def _classes(s: Sample) -> set[str]:
    return {lab.cls for lab in s.labels}


def split_stratified(
    samples: Sequence[Sample], fraction: float = 0.2, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """(train, val): about ``fraction`` of the images of every class in val, chosen at random with ``seed``.

    Each image is assigned by its rarest class (images with several classes count toward that one), images
    without labels form a stratum of their own. Every class ends up in both parts, or SplitError. Order within
    each part follows the input order, so the split is the same for the same data and seed.
    """
    if not 0.0 < fraction < 1.0:
        raise SplitError(f"validation fraction must be between 0 and 1 (exclusive), got {fraction}")
    n_images = Counter(c for s in samples for c in _classes(s))
    few = sorted(c for c, n in n_images.items() if n < 2)
    if few:
        raise SplitError(
            f"class(es) {few} appear on only one image: a validation split needs at least 2 images of every class "
            "(one to train on, one to validate on). Label more images of them, or train without a validation "
            "part (--val 0)."
        )
    strata: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        cls = _classes(s)
        key = min(cls, key=lambda c: (n_images[c], c)) if cls else GOOD
        strata.setdefault(key, []).append(i)
    rng = random.Random(seed)
    val_idx: set[int] = set()
    for key in sorted(strata):
        idx = list(strata[key])
        rng.shuffle(idx)
        k = round(len(idx) * fraction)
        k = min(max(k, 1), len(idx) - 1) if len(idx) >= 2 else 0
        val_idx.update(idx[:k])
    # Repair: a class that an image of another stratum carries may still be missing from one part.
    for c in sorted(n_images):
        has = [i for i, s in enumerate(samples) if c in _classes(s)]
        in_val = [i for i in has if i in val_idx]
        in_fit = [i for i in has if i not in val_idx]
        if not in_val:
            val_idx.add(min(has, key=lambda i: (len(samples[i].labels), i)))
        elif not in_fit:
            val_idx.discard(min(has, key=lambda i: (len(samples[i].labels), i)))
    fit = [s for i, s in enumerate(samples) if i not in val_idx]
    val = [s for i, s in enumerate(samples) if i in val_idx]
    missing = {
        "train": sorted(c for c in n_images if not any(c in _classes(s) for s in fit)),
        "validation": sorted(c for c in n_images if not any(c in _classes(s) for s in val)),
    }
    bad = {k: v for k, v in missing.items() if v}
    if bad:
        raise SplitError(
            "cannot put every class in both parts: "
            + "; ".join(f"{part} lacks {v}" for part, v in bad.items())
            + " (these classes only share images with each other; label more images of them)"
        )
    if not fit:
        raise SplitError("no samples left to train on after the validation split")
    return fit, val


def classes_missing(fit: Sequence[Sample], held: Sequence[Sample]) -> dict[str, list[str]]:
    """Classes present in one part but not in the other: {'train': [...], 'validation': [...]}."""
    a = {c for s in fit for c in _classes(s)}
    b = {c for s in held for c in _classes(s)}
    return {"train": sorted(b - a), "validation": sorted(a - b)}
