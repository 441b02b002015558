"""Dataset importers (DeepPCB, YOLO, VOC, COCO) returning list[Sample], and the DeepPCB writer.

Entry point for everyone (trainer, benchmarks, feedback): ``load(path, fmt, split)``.
"""

from __future__ import annotations

from pathlib import Path

from vision.datasets._common import DatasetError
from vision.datasets.deeppcb import (
    append_deeppcb,
    load_deeppcb,
    read_annotations,
    split_holdout,
    write_deeppcb,
)
from vision.datasets.formats import canonical_class, load_coco, load_voc, load_yolo
from vision.types import Sample

FORMATS: tuple[str, ...] = ("deeppcb", "yolo", "voc", "coco")

__all__ = [
    "FORMATS",
    "DatasetError",
    "append_deeppcb",
    "canonical_class",
    "load",
    "read_annotations",
    "split_holdout",
    "write_deeppcb",
]


def load(path: Path, fmt: str, split: str | None = None, *, strict: bool = False) -> list[Sample]:
    """Read a dataset at ``path`` in format ``fmt`` (one of FORMATS).

    Missing files and wrong layouts raise DatasetError naming the file. A malformed single annotation line
    is logged and skipped (the rest of the sample is kept) unless ``strict``, which raises instead.
    Samples with no labels are good parts.
    """
    path = Path(path)
    key = fmt.strip().lower()
    if not path.exists():
        raise DatasetError(f"dataset path not found: {path}")
    if key == "deeppcb":
        return load_deeppcb(path, split, strict)
    if key == "yolo":
        return load_yolo(path, split, strict)
    if key == "voc":
        return load_voc(path, split, strict)
    if key == "coco":
        return load_coco(path, split, strict)
    raise DatasetError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
