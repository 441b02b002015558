"""``lineguard data check``: what a data set holds and what is wrong with it, before any training.

Class counts (boxes and images), box sizes, images without labels, duplicate images (same bytes), boxes outside
their image, classes too rare to validate on, and every fix-up and skipped file the importer reported.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from vision.datasets._common import DatasetError, LoadReport
from vision.datasets.formats import image_size
from vision.types import UNKNOWN_CLASS, Sample


def _pct(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    a = np.asarray(xs, dtype=np.float64)
    return {k: round(float(np.percentile(a, q)), 1) for k, q in (("min", 0), ("p10", 10), ("median", 50),
                                                                  ("p90", 90), ("max", 100))}


def check_samples(samples: list[Sample], report: LoadReport | None = None) -> dict[str, Any]:
    """The check's findings for loaded ``samples`` (see the module docstring) as a JSON-ready dict."""
    rep = report or LoadReport()
    boxes = Counter(lab.cls for s in samples for lab in s.labels)
    images = Counter(c for s in samples for c in {lab.cls for lab in s.labels})
    problems: list[str] = []
    sizes: dict[str, dict[str, list[float]]] = {}
    outside: list[str] = []
    image_dims: Counter[str] = Counter()
    digests: dict[str, list[str]] = {}
    for s in samples:
        try:
            w, h = image_size(s.image_path)
        except (DatasetError, OSError) as e:
            problems.append(f"{s.image_path}: cannot read its size ({e})")
            continue
        image_dims[f"{w}x{h}"] += 1
        with open(s.image_path, "rb") as fh:
            digests.setdefault(hashlib.sha1(fh.read()).hexdigest(), []).append(str(s.image_path))
        for lab in s.labels:
            b = lab.box
            d = sizes.setdefault(lab.cls, {"w": [], "h": [], "rel_area": []})
            d["w"].append(b.width)
            d["h"].append(b.height)
            d["rel_area"].append(100.0 * b.area / max(1, w * h))
            if b.x2 <= 0 or b.y2 <= 0 or b.x1 >= w or b.y1 >= h:
                outside.append(f"{s.image_path}: {lab.cls} box ({b.x1:g},{b.y1:g},{b.x2:g},{b.y2:g}) "
                               f"lies outside the {w}x{h} image")
            elif min(b.width, b.height) < 2:
                problems.append(f"{s.image_path}: {lab.cls} box {b.width:g}x{b.height:g} px is thinner than 2 px")
    unlabelled = [str(s.image_path) for s in samples if not s.labels]
    dups = [v for v in digests.values() if len(v) > 1]
    problems += outside
    if UNKNOWN_CLASS in boxes:
        problems.append(f"class {UNKNOWN_CLASS!r} is reserved for template differences; relabel its boxes")
    for c, n in sorted(images.items()):
        if n < 2:
            problems.append(f"class {c!r} is on {n} image only: it cannot be in both training and validation")
    for group in dups:
        problems.append(f"{len(group)} identical images: {', '.join(group[:4])}{' ...' if len(group) > 4 else ''}")
    for path, reason in rep.skipped:
        problems.append(f"skipped {path}: {reason}")
    if not boxes:
        problems.append("no labelled boxes at all: nothing to learn")
    ids = Counter(s.sample_id for s in samples if s.sample_id)
    for sid, n in ids.items():
        if n > 1:
            problems.append(f"sample id {sid!r} appears {n} times")
    return {
        "images": len(samples),
        "labelled_images": len(samples) - len(unlabelled),
        "boxes": sum(boxes.values()),
        "classes": {c: {"boxes": boxes[c], "images": images[c]} for c in sorted(boxes)},
        "box_size_px": {
            c: {"width": _pct(d["w"]), "height": _pct(d["h"]), "area_percent_of_image": _pct(d["rel_area"])}
            for c, d in sorted(sizes.items())
        },
        "image_sizes": dict(image_dims.most_common(10)),
        "images_without_labels": {"count": len(unlabelled), "first": unlabelled[:10]},
        "duplicates": {"groups": len(dups), "first": dups[:5]},
        "templates": sum(s.template_path is not None for s in samples),
        "importer": rep.as_dict(),
        "problems": problems,
    }


def check_dataset(path: Path, fmt: str, split: str | None = None) -> dict[str, Any]:
    """Load ``path`` as ``fmt`` (collecting the importer's report) and check it. DatasetError if unreadable."""
    from vision.datasets import load

    report = LoadReport()
    samples = load(Path(path), fmt, split, report=report)
    out = check_samples(samples, report)
    out = {"data": str(path), "format": fmt, **out}
    return out


def format_text(res: dict[str, Any]) -> str:
    """The check as a few readable lines (the CLI prints this; ``--json`` prints the dict)."""
    lines = [f"{res['data']} ({res['format']}): {res['images']} images, {res['labelled_images']} labelled, "
             f"{res['boxes']} boxes, {res['templates']} with a golden template"]
    for note in res["importer"]["layout"]:
        lines.append(f"  {note}")
    lines.append("classes (boxes / images; box width x height px, median [min-max]):")
    for c, n in res["classes"].items():
        sz = res["box_size_px"].get(c, {})
        wd, ht = sz.get("width", {}), sz.get("height", {})
        lines.append(f"  {c:<20} {n['boxes']:>6} / {n['images']:<6} {wd.get('median', 0):g} x {ht.get('median', 0):g}"
                     f" [{wd.get('min', 0):g}x{ht.get('min', 0):g} - {wd.get('max', 0):g}x{ht.get('max', 0):g}]")
    lines.append(f"image sizes: {', '.join(f'{k} ({v})' for k, v in res['image_sizes'].items())}")
    lines.append(f"images without labels: {res['images_without_labels']['count']}")
    lines.append(f"duplicate groups: {res['duplicates']['groups']}")
    fix = res["importer"]["fixups"]
    lines.append("fix-ups: " + ("none" if not fix else ""))
    for f in fix:
        lines.append(f"  {f['count']:>6} x {f['kind']} (e.g. {f['example']})")
    probs = res["problems"]
    lines.append(f"problems: {len(probs) or 'none'}")
    for p in probs[:50]:
        lines.append(f"  - {p}")
    if len(probs) > 50:
        lines.append(f"  ... and {len(probs) - 50} more (--json lists all)")
    return "\n".join(lines)
