"""DeepPCB layout (Tang et al., 2019): list files in the root, image pairs and per-image annotation files.

    <root>/trainval.txt               one line per sample: ``groupG/G/NNNNNNNN.jpg groupG/G_not/NNNNNNNN.txt``
    <root>/groupG/G/NNNNNNNN_test.jpg the inspected board (the list names NNNNNNNN.jpg, which does not exist)
    <root>/groupG/G/NNNNNNNN_temp.jpg its aligned, defect-free golden template
    <root>/groupG/G_not/NNNNNNNN.txt  one defect per line: ``x1 y1 x2 y2 type``, type 1..6 -> DEFECT_CLASSES

An empty annotation file is a good part. The writer below produces exactly this layout so synthetic boards
and operator feedback go through the same importer as the real data.

Other products use the same layout with their own classes: a ``classes.txt`` in the root (one class name a
line) then maps type ``i`` to its line ``i`` (1-based) instead of DeepPCB's six. The feedback writer keeps it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from vision.datasets._common import IMAGE_EXTS, DatasetError, bad_line, log, make_box, require_file
from vision.types import DEFECT_CLASSES, Image, Label, Sample

CLASSES_FILE = "classes.txt"


def dataset_classes(root: Path) -> tuple[str, ...]:
    """The classes type ids 1..N stand for in the dataset at ``root``: its classes.txt, else DeepPCB's six."""
    f = Path(root) / CLASSES_FILE
    if f.is_file():
        names = tuple(ln.strip() for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip())
        if names:
            return names
    return DEFECT_CLASSES


def _ensure_classes(out_dir: Path, classes: Sequence[str], labels: Iterable[Label]) -> tuple[str, ...]:
    """The dataset's class list after making room for ``classes`` and the labels' classes (new ones appended,
    existing ids never renumbered). DeepPCB's six stay implicit (no classes.txt) while they suffice."""
    fresh = not (out_dir / CLASSES_FILE).is_file() and not any(out_dir.glob("*.txt"))
    current: tuple[str, ...] = () if fresh else dataset_classes(out_dir)
    want = [*classes, *(lab.cls for lab in labels)]
    new = [c for c in dict.fromkeys(want) if c not in current]
    if not new:
        return current
    names = (*current, *new)
    if names == DEFECT_CLASSES:
        return names
    tmp = out_dir / f".{CLASSES_FILE}.tmp"
    tmp.write_text("".join(f"{c}\n" for c in names), encoding="utf-8")
    os.replace(tmp, out_dir / CLASSES_FILE)
    return names


def list_files(root: Path, split: str | None) -> list[Path]:
    """The list files to read: ``<split>.txt`` (or the file named by split), else every ``*.txt`` in root."""
    if not root.is_dir():
        raise DatasetError(f"DeepPCB root is not a directory: {root}")
    if split is not None:
        name = split if split.endswith(".txt") else f"{split}.txt"
        return [require_file(root / name, f"DeepPCB list file for split {split!r}")]
    found = []
    for p in sorted(root.glob("*.txt")):
        if p.is_file() and _looks_like_list(p):
            found.append(p)
        elif p.is_file():
            log.info("%s: not a DeepPCB list file (first line is not 'image.jpg annotation.txt'), skipped", p)
    if not found:
        raise DatasetError(
            f"no DeepPCB list file in {root}; expected e.g. {root / 'trainval.txt'} with lines "
            "'groupG/G/NNNNNNNN.jpg groupG/G_not/NNNNNNNN.txt'"
        )
    return found


def _looks_like_list(path: Path) -> bool:
    """A list file's first non-empty line is ``<image> <annotation>.txt`` (README.txt and the like are not)."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.split()
            if parts:
                return len(parts) == 2 and parts[1].lower().endswith(".txt") and Path(parts[0]).suffix != ""
    return False


def _pair_for(root: Path, entry: str, where: str) -> tuple[Path, Path | None]:
    """Resolve a list entry ``.../NNNNNNNN.jpg`` to its ``_test`` image and ``_temp`` template."""
    named = root / entry
    stem = named.with_suffix("")
    exts = (named.suffix.lower(), *IMAGE_EXTS) if named.suffix else IMAGE_EXTS
    for ext in exts:
        test = stem.parent / f"{stem.name}_test{ext}"
        if test.is_file():
            temp = stem.parent / f"{stem.name}_temp{ext}"
            return test, (temp if temp.is_file() else None)
    if named.is_file():  # a plain image with no pair: accept it, without a template
        return named, None
    raise DatasetError(f"{where}: image not found: {stem.parent / (stem.name + '_test' + named.suffix)}")


def read_annotations(path: Path, strict: bool = False, classes: Sequence[str] = DEFECT_CLASSES) -> list[Label]:
    """Parse one DeepPCB annotation file (``x1 y1 x2 y2 type`` per line, space or comma separated); type ``i``
    is ``classes[i - 1]``."""
    type_to_class = {i + 1: name for i, name in enumerate(classes)}
    labels: list[Label] = []
    text = require_file(path, "DeepPCB annotation file").read_text(encoding="utf-8", errors="replace")
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        where = f"{path}:{n}"
        if len(parts) != 5:
            bad_line(where, f"expected 'x1 y1 x2 y2 type', got {line.strip()!r}", strict)
            continue
        try:
            x1, y1, x2, y2 = (float(v) for v in parts[:4])
            t = int(parts[4])
        except ValueError:
            bad_line(where, f"non-numeric field in {line.strip()!r}", strict)
            continue
        if t not in type_to_class:
            bad_line(where, f"defect type {t} is not one of 1..{len(type_to_class)}", strict)
            continue
        try:
            box = make_box(x1, y1, x2, y2, where)
        except DatasetError as exc:
            bad_line(where, str(exc).split(": ", 1)[-1], strict)
            continue
        labels.append(Label(box=box, cls=type_to_class[t]))
    return labels


def load_deeppcb(root: Path, split: str | None = None, strict: bool = False) -> list[Sample]:
    """Read every sample named by the list file(s), in list order; duplicates across lists appear once."""
    samples: list[Sample] = []
    seen: set[str] = set()
    classes = dataset_classes(root)
    for lst in list_files(root, split):
        for n, line in enumerate(lst.read_text(encoding="utf-8").splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            where = f"{lst}:{n}"
            if len(parts) != 2:
                raise DatasetError(
                    f"{where}: expected 'groupG/G/NNNNNNNN.jpg groupG/G_not/NNNNNNNN.txt', "
                    f"got {line.strip()!r}"
                    " (is this a DeepPCB list file?)"
                )
            sample_id = str(Path(parts[0]).with_suffix(""))
            if sample_id in seen:
                continue
            seen.add(sample_id)
            image, template = _pair_for(root, parts[0], where)
            labels = read_annotations(root / parts[1], strict=strict, classes=classes)
            samples.append(Sample(image_path=image, labels=labels, template_path=template, sample_id=sample_id))
    return samples


def split_holdout(samples: Sequence[Sample], last_n: int) -> tuple[list[Sample], list[Sample]]:
    """Fixed split used across the project: the last ``last_n`` samples (list order) are held out.

    For DeepPCB trainval that is ``split_holdout(load(root, "deeppcb", "trainval"), 200)``.
    """
    if last_n < 0:
        raise ValueError(f"last_n must be >= 0, got {last_n}")
    if last_n > len(samples):
        raise ValueError(f"cannot hold out {last_n} of {len(samples)} samples")
    cut = len(samples) - last_n
    return list(samples[:cut]), list(samples[cut:])


# --------------------------------------------------------------------------------------------- writers

_STEM_RE = re.compile(r"^(\d+)_test\.")


def _next_index(img_dir: Path, group: str) -> int:
    """Next free 8-digit index in a group dir; DeepPCB numbers are ``<group><NNN>``, we keep them unique."""
    base = int(group) * 1000 if group.isdigit() and len(group) <= 5 else 0
    used = [int(m.group(1)) for p in img_dir.glob("*_test.*") if (m := _STEM_RE.match(p.name))]
    return max([base - 1, *used]) + 1


def _write_image(path: Path, image: Image) -> None:
    # Write to a temp name then rename, so a crash never leaves a half-written image a loader would trip on.
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    if not cv2.imwrite(str(tmp), image):
        raise OSError(f"cannot write image {path}")
    os.replace(tmp, path)


def _format_labels(labels: Iterable[Label], classes: Sequence[str] = DEFECT_CLASSES) -> str:
    class_to_type = {name: i + 1 for i, name in enumerate(classes)}
    rows = []
    for lab in labels:
        if lab.cls not in class_to_type:
            raise DatasetError(f"class {lab.cls!r} has no DeepPCB type id; this dataset knows {tuple(classes)}")
        b = lab.box
        rows.append(f"{round(b.x1)} {round(b.y1)} {round(b.x2)} {round(b.y2)} {class_to_type[lab.cls]}\n")
    return "".join(rows)


def append_deeppcb(
    out_dir: Path,
    image: Image,
    template: Image | None,
    labels: Sequence[Label],
    *,
    list_name: str = "trainval.txt",
    group: str = "90000",
    index: int | None = None,
    ext: str = ".jpg",
    classes: Sequence[str] | None = None,
) -> Sample:
    """Write one image pair + annotation into ``out_dir`` in DeepPCB layout and append it to the list file.

    The list line is appended last, so a reader never sees an entry whose files are not yet on disk.
    Labels whose class has no DeepPCB id (e.g. ``unknown``) are refused with a clear error, unless ``classes``
    (a model's classes) are given: then the dataset's ``classes.txt`` is extended to hold them and the labels'.
    """
    out_dir = Path(out_dir)
    img_dir = out_dir / f"group{group}" / group
    ann_dir = out_dir / f"group{group}" / f"{group}_not"
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    if classes is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        names = _ensure_classes(out_dir, classes, labels)
    else:
        names = dataset_classes(out_dir)
    text = _format_labels(labels, names)  # validate before writing anything
    idx = _next_index(img_dir, group) if index is None else index
    stem = f"{idx:08d}"
    test_path = img_dir / f"{stem}_test{ext}"
    temp_path = img_dir / f"{stem}_temp{ext}"
    _write_image(test_path, image)
    if template is not None:
        _write_image(temp_path, template)
    (ann_dir / f"{stem}.txt").write_text(text, encoding="utf-8")
    entry = f"group{group}/{group}/{stem}{ext} group{group}/{group}_not/{stem}.txt\n"
    lst = out_dir / list_name
    # Keep the list well formed if a previous writer left no trailing newline.
    prefix = "\n" if lst.is_file() and lst.stat().st_size and not lst.read_bytes().endswith(b"\n") else ""
    with lst.open("a", encoding="utf-8") as fh:
        fh.write(prefix + entry)
    return Sample(
        image_path=test_path,
        labels=list(labels),
        template_path=temp_path if template is not None else None,
        sample_id=f"group{group}/{group}/{stem}",
    )


def _decode(path: Path, what: str) -> Image:
    raw = cv2.imread(str(require_file(path, what)), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DatasetError(f"cannot decode {what} {path}")
    return np.asarray(raw, dtype=np.uint8)


def write_deeppcb(
    samples: Iterable[Sample],
    out_dir: Path,
    *,
    list_name: str = "trainval.txt",
    group: str = "90000",
    classes: Sequence[str] | None = None,
) -> list[Sample]:
    """Copy existing samples (any importer's output) into a DeepPCB-layout dataset; returns the new Samples.

    Images are decoded and re-encoded in their own format (DeepPCB itself ships JPEGs).
    """
    written: list[Sample] = []
    for s in samples:
        img = _decode(s.image_path, "image")
        tmpl = _decode(s.template_path, "template") if s.template_path is not None else None
        ext = s.image_path.suffix.lower() if s.image_path.suffix.lower() in IMAGE_EXTS else ".png"
        written.append(
            append_deeppcb(out_dir, img, tmpl, s.labels, list_name=list_name, group=group, ext=ext, classes=classes)
        )
    return written
