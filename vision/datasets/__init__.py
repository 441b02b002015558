"""Dataset importers (DeepPCB, YOLO, VOC, COCO) returning list[Sample], and the DeepPCB writer.

Entry point for everyone (trainer, benchmarks, feedback): ``load(path, fmt, split)``.
"""

from __future__ import annotations

from pathlib import Path

from vision.datasets._common import DatasetError, LoadReport
from vision.datasets.deeppcb import (
    append_deeppcb,
    load_deeppcb,
    read_annotations,
    split_holdout,
    write_deeppcb,
)
from vision.datasets.formats import canonical_class, load_coco, load_voc, load_yolo
from vision.datasets.split import SplitError, split_stratified
from vision.types import Sample

FORMATS: tuple[str, ...] = ("deeppcb", "yolo", "voc", "coco")

__all__ = [
    "FORMATS",
    "DatasetError",
    "LoadReport",
    "SplitError",
    "append_deeppcb",
    "canonical_class",
    "load",
    "read_annotations",
    "split_holdout",
    "split_stratified",
    "write_deeppcb",
]


def load(
    path: Path, fmt: str, split: str | None = None, *, strict: bool = False, report: LoadReport | None = None
) -> list[Sample]:
    """Read a dataset at ``path`` in format ``fmt`` (one of FORMATS).

    Missing files and wrong layouts raise DatasetError naming the file. A malformed single annotation line
    is logged and skipped (the rest of the sample is kept) unless ``strict``, which raises instead; so is an
    annotation file that cannot be read or whose image is not found (YOLO / VOC / COCO). ``report`` collects
    every fix-up (counted) and every skipped file (named, with its reason). Samples with no labels are good parts.
    """
    path = Path(path)
    key = fmt.strip().lower()
    if not path.exists():
        raise DatasetError(f"dataset path not found: {path}")
    if key == "deeppcb":
        return load_deeppcb(path, split, strict)
    if key == "yolo":
        return load_yolo(path, split, strict, report)
    if key == "voc":
        return load_voc(path, split, strict, report)
    if key == "coco":
        return load_coco(path, split, strict, report)
    raise DatasetError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
