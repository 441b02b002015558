"""Importers for the common detection layouts: YOLO txt, Pascal VOC XML and COCO JSON.

Each returns list[Sample]. A golden template is attached when an image named ``X_test.ext`` has a sibling
``X_temp.ext`` (the DeepPCB convention), so template-based detectors work on any layout.

They take data sets as they are published: folders are found ignoring case and in their common variants
(``JPEGImages``/``Annotations``, ``IMAGES``/``ANNOTATIONS``, ``images``/``labels``; the annotation folder itself
may be given), and an image is found by the annotation's stem with any image extension when the annotation
names it without one or with the wrong one. Every such repair is counted in a ``LoadReport``; every file left
out (unreadable annotation, image not found) is named there with its reason. ``strict`` raises instead.
"""

from __future__ import annotations

import json
import struct
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import cv2
import yaml

from vision.datasets._common import (
    IMAGE_EXTS,
    DatasetError,
    ImageIndex,
    LoadReport,
    bad_line,
    child_dir,
    child_file,
    make_box,
    require_file,
)
from vision.types import DEFECT_CLASSES, Box, Label, Sample


def canonical_class(name: str) -> str:
    """Map spellings like ``Spurious Copper`` / ``pin-hole`` onto DEFECT_CLASSES; other names pass through."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    return key if key in DEFECT_CLASSES else name.strip()


def template_for(image: Path) -> Path | None:
    stem = image.stem
    if not stem.endswith("_test"):
        return None
    temp = image.with_name(stem[: -len("_test")] + "_temp" + image.suffix)
    return temp if temp.is_file() else None


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.stem.endswith("_temp")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG/JPEG header without decoding; falls back to OpenCV for other formats."""
    with path.open("rb") as fh:
        head = fh.read(26)
        if head[:8] == b"\x89PNG\r\n\x1a\n":
            w, h = struct.unpack(">II", head[16:24])
            return int(w), int(h)
        if head[:2] == b"\xff\xd8":
            fh.seek(2)
            while True:
                marker = fh.read(2)
                if len(marker) < 2 or marker[0] != 0xFF:
                    break
                seglen = struct.unpack(">H", fh.read(2))[0]
                # SOF0..SOF15 except DHT(C4), JPG(C8), DAC(CC) carry the frame size.
                if 0xC0 <= marker[1] <= 0xCF and marker[1] not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">xHH", fh.read(5))
                    return int(w), int(h)
                fh.seek(seglen - 2, 1)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"cannot decode image {path}")
    return int(img.shape[1]), int(img.shape[0])


# ------------------------------------------------------------------------------------------------ YOLO

IMAGE_DIRS: tuple[str, ...] = ("images", "JPEGImages", "imgs", "img", "image")
YOLO_LABEL_DIRS: tuple[str, ...] = ("labels", "label", "annotations", "txt")
VOC_ANN_DIRS: tuple[str, ...] = ("Annotations", "annotation", "anns", "xml", "xmls", "labels")


def _skip_or_raise(report: LoadReport | None, strict: bool, path: Path, reason: str) -> None:
    if strict:
        raise DatasetError(f"{path}: {reason}")
    (report or LoadReport()).skip(path, reason)


def _yolo_names(root: Path) -> tuple[list[str], dict[str, Any]]:
    for yml in (child_file(root, "data.yaml"), child_file(root, "dataset.yaml"), child_file(root, "data.yml")):
        if yml is not None:
            try:
                data = yaml.safe_load(yml.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as exc:
                raise DatasetError(f"{yml}: not valid YAML ({exc})") from exc
            names = data.get("names") if isinstance(data, dict) else None
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names, key=int)], data
            if isinstance(names, list):
                return [str(n) for n in names], data
            raise DatasetError(f"{yml}: missing 'names' (a list or an {{id: name}} map)")
    classes = child_file(root, "classes.txt", "obj.names", "classes.names", "names.txt")
    if classes is not None:
        return [ln.strip() for ln in classes.read_text(encoding="utf-8").splitlines() if ln.strip()], {}
    raise DatasetError(
        f"YOLO dataset {root}: class names not found; expected {root / 'data.yaml'} or {root / 'classes.txt'}"
    )


def _yolo_label_path(root: Path, image: Path, label_root: Path | None, by_stem: dict[str, list[Path]],
                     report: LoadReport | None) -> Path | None:
    rel = image.relative_to(root)
    parts = list(rel.parts)
    low = [p.lower() for p in parts]
    for img_name in (n.lower() for n in IMAGE_DIRS):
        if img_name in low:
            i = low.index(img_name)
            for lab_name in ("labels", parts[i].replace("images", "labels").replace("IMAGES", "LABELS")):
                cand = (root / Path(*parts[:i], lab_name, *parts[i + 1 :])).with_suffix(".txt")
                if cand.is_file():
                    return cand
            break
    beside = image.with_suffix(".txt")
    if beside.is_file():
        return beside
    hits = by_stem.get(image.stem.lower(), [])
    if len(hits) == 1:
        if report is not None:
            report.fix("label file found by stem in another folder", hits[0])
        return hits[0]
    return None


def load_yolo(root: Path, split: str | None = None, strict: bool = False,
              report: LoadReport | None = None) -> list[Sample]:
    """YOLO txt: ``images/[split/]*.jpg`` + ``labels/[split/]*.txt`` (``cls cx cy w h``, normalised).

    Folder names ignore case; a label file is also found beside its image or by stem under the labels folder.
    An image without a label file is a good part (the YOLO convention for background images).
    """
    if not root.is_dir():
        raise DatasetError(f"YOLO root is not a directory: {root}")
    names, data = _yolo_names(root)
    img_root = child_dir(root, *IMAGE_DIRS) or root
    if split is not None:
        entry = data.get(split) if data else None
        base = Path(str(data.get("path", root))) if data else root
        base = base if base.is_absolute() else root / base
        img_root = (base / entry) if isinstance(entry, str) else (child_dir(img_root, split) or img_root / split)
        if not img_root.is_dir() and isinstance(entry, str):
            img_root = root / entry
    if not img_root.is_dir():
        raise DatasetError(f"YOLO images folder not found: {img_root}")
    if report is not None:
        report.note(f"images: {img_root}")
    label_root = child_dir(root, *YOLO_LABEL_DIRS)
    by_stem: dict[str, list[Path]] = {}
    if label_root is not None:
        for t in label_root.rglob("*.txt"):
            by_stem.setdefault(t.stem.lower(), []).append(t)
    samples: list[Sample] = []
    for image in sorted(p for p in img_root.rglob("*") if _is_image(p)):
        lbl = _yolo_label_path(root, image, label_root, by_stem, report)
        labels: list[Label] = []
        if lbl is not None:
            w, h = image_size(image)
            for n, line in enumerate(lbl.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
                parts = line.split()
                if not parts:
                    continue
                where = f"{lbl}:{n}"
                if len(parts) != 5:  # segmentation polygons (more fields) are not boxes
                    bad_line(where, f"expected 'cls cx cy w h', got {line.strip()!r}", strict)
                    _count_bad(report, "annotation line skipped (malformed)", where)
                    continue
                try:
                    c = int(float(parts[0]))
                    cx, cy, bw, bh = (float(v) for v in parts[1:])
                except ValueError:
                    bad_line(where, f"non-numeric field in {line.strip()!r}", strict)
                    _count_bad(report, "annotation line skipped (malformed)", where)
                    continue
                if not 0 <= c < len(names):
                    bad_line(where, f"class id {c} outside 0..{len(names) - 1}", strict)
                    _count_bad(report, "annotation line skipped (class id outside the names)", where)
                    continue
                if max(cx, cy, bw, bh) > 1.0 + 1e-6 or min(cx, cy, bw, bh) < 0:
                    bad_line(where, "coordinates are not normalised to [0, 1]", strict)
                    _count_bad(report, "annotation line skipped (not normalised)", where)
                    continue
                try:
                    box = make_box((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h, where)
                except DatasetError as exc:
                    bad_line(where, str(exc).split(": ", 1)[-1], strict)
                    _count_bad(report, "annotation line skipped (box has no area)", where)
                    continue
                labels.append(Label(box=_clip(box, w, h, report, where), cls=canonical_class(names[c])))
        samples.append(Sample(image, labels, template_for(image), str(image.relative_to(root).with_suffix(""))))
    return samples


def _count_bad(report: LoadReport | None, kind: str, where: str) -> None:
    if report is not None:
        report.fix(kind, where)


def _clip(box: Box, w: int, h: int, report: LoadReport | None, where: str) -> Box:
    """A box reaching (more than half a pixel) past the image, clipped to it and counted."""
    if box.x1 >= -0.5 and box.y1 >= -0.5 and box.x2 <= w + 0.5 and box.y2 <= h + 0.5:
        return box
    clipped = Box(max(0.0, box.x1), max(0.0, box.y1), min(float(w), box.x2), min(float(h), box.y2))
    if clipped.width < 1 or clipped.height < 1:
        return box  # wholly outside: leave it, the data check names it
    if report is not None:
        report.fix("box reaching past the image clipped to it", where)
    return clipped


# ------------------------------------------------------------------------------------------------- VOC


def _voc_float(node: ET.Element, tag: str, where: str) -> float:
    text = node.findtext(tag)
    if text is None:
        raise DatasetError(f"{where}: <bndbox> lacks <{tag}>")
    try:
        return float(text)
    except ValueError as exc:
        raise DatasetError(f"{where}: <{tag}> is not a number: {text!r}") from exc


def _voc_dirs(root: Path, report: LoadReport | None) -> tuple[Path, Path, list[Path]]:
    """(data set root, annotation folder, image folders to search) for a VOC data set at ``root``.

    ``root`` may be the data set folder or its annotation folder; folder names ignore case."""
    ann = child_dir(root, *VOC_ANN_DIRS)
    if ann is None or not any(ann.rglob("*.xml")):
        if any(root.glob("*.xml")) or any(root.glob("*.XML")):
            ann = root
            if root.name.lower() in {n.lower() for n in VOC_ANN_DIRS}:
                root = root.parent  # pointed at ANNOTATIONS/: images live beside it
                if report is not None:
                    report.note(f"given the annotation folder; data set root taken as {root}")
        else:
            found = sorted({p.parent for p in root.rglob("*.xml")} | {p.parent for p in root.rglob("*.XML")})
            if len(found) == 1:
                ann = found[0]
            else:
                where = f"{len(found)} folders hold XML files" if found else "no *.xml anywhere under it"
                raise DatasetError(
                    f"no VOC annotation folder in {root} ({where}); expected one of "
                    f"{', '.join(VOC_ANN_DIRS)} (any case) holding *.xml"
                )
    img = child_dir(root, *IMAGE_DIRS)
    dirs = [d for d in (img, root) if d is not None]
    if report is not None:
        report.note(f"annotations: {ann}")
        report.note(f"images: {img if img is not None else root}")
    return root, ann, dirs


def load_voc(root: Path, split: str | None = None, strict: bool = False,
             report: LoadReport | None = None) -> list[Sample]:
    """Pascal VOC: ``Annotations/*.xml`` with images in ``JPEGImages/``, ``IMAGES/`` (any case) or beside them.

    ``split`` selects ``ImageSets/Main/<split>.txt``. Boxes are VOC 1-based pixel corners, kept as written
    (clipped to the image where they reach past it). An annotation whose ``<filename>`` lacks an extension,
    has the wrong one or is missing finds its image by stem; see the module docstring.
    """
    if not root.is_dir():
        raise DatasetError(f"VOC root is not a directory: {root}")
    root, ann_dir, img_dirs = _voc_dirs(root, report)
    if split is not None:
        sets = child_dir(root, "ImageSets")
        main = child_dir(sets, "Main") if sets is not None else None
        lst = child_file(main, f"{split}.txt") if main is not None else None
        ids_file = require_file(lst or root / "ImageSets" / "Main" / f"{split}.txt", f"VOC split list for {split!r}")
        ids = [ln.split()[0] for ln in ids_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        by_stem = {p.stem.lower(): p for p in ann_dir.rglob("*") if p.suffix.lower() == ".xml"}
        xmls = []
        for i in ids:
            x = by_stem.get(i.lower())
            if x is None:
                _skip_or_raise(report, strict, ann_dir / f"{i}.xml", f"VOC annotation named by {ids_file} not found")
                continue
            xmls.append(x)
    else:
        xmls = sorted(p for p in ann_dir.rglob("*") if p.is_file() and p.suffix.lower() == ".xml")
        if not xmls:
            raise DatasetError(f"no VOC annotation (*.xml) in {ann_dir}")
    index = ImageIndex(*img_dirs)
    samples: list[Sample] = []
    for xml in xmls:
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            _skip_or_raise(report, strict, xml, f"not valid XML ({exc})")
            continue
        if tree.tag != "annotation":
            _skip_or_raise(report, strict, xml, f"root element is <{tree.tag}>, expected VOC <annotation>")
            continue
        fname = (tree.findtext("filename") or "").strip()
        image, why = index.find(fname, xml.stem, xml, None if strict else report)
        if image is None:
            _skip_or_raise(report, strict, xml, why)
            continue
        try:
            w, h = image_size(image)
        except (DatasetError, OSError, struct.error) as exc:
            _skip_or_raise(report, strict, image, f"unreadable image ({exc})")
            continue
        labels: list[Label] = []
        for k, obj in enumerate(tree.findall("object"), start=1):
            where = f"{xml} object #{k}"
            name = (obj.findtext("name") or "").strip()
            bb = obj.find("bndbox")
            if not name or bb is None:
                bad_line(where, "needs <name> and <bndbox>", strict)
                _count_bad(report, "object skipped (no <name> or <bndbox>)", where)
                continue
            try:
                x1, y1, x2, y2 = (_voc_float(bb, t, where) for t in ("xmin", "ymin", "xmax", "ymax"))
                box = make_box(x1, y1, x2, y2, where)
            except DatasetError as exc:
                bad_line(where, str(exc).split(": ", 1)[-1], strict)
                _count_bad(report, "object skipped (bad or empty box)", where)
                continue
            labels.append(Label(box=_clip(box, w, h, report, where), cls=canonical_class(name)))
        samples.append(Sample(image, labels, template_for(image), xml.stem))
    return samples


# ------------------------------------------------------------------------------------------------ COCO


def _coco_json(path: Path, split: str | None) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise DatasetError(f"COCO path not found: {path}")
    ann = child_dir(path, "annotations", "annotation") or path / "annotations"
    if split is not None:
        for d, name in ((ann, f"instances_{split}.json"), (path, f"{split}.json"), (ann, f"{split}.json"),
                        (child_dir(path, split), "_annotations.coco.json")):
            cand = child_file(d, name) if d is not None else None
            if cand is not None:
                return cand
        raise DatasetError(
            f"COCO annotation for split {split!r} not found: {path / 'annotations' / f'instances_{split}.json'}"
        )
    def jsons(d: Path) -> list[Path]:
        return sorted(p for p in d.glob("*") if p.is_file() and p.suffix.lower() == ".json") if d.is_dir() else []

    found = jsons(path) or jsons(ann)
    if len(found) != 1:
        raise DatasetError(f"COCO: expected one *.json in {path} (or pass split), found {len(found)}")
    return found[0]


def load_coco(path: Path, split: str | None = None, strict: bool = False,
              report: LoadReport | None = None) -> list[Sample]:
    """COCO detection JSON: ``images``, ``annotations`` (``bbox`` = [x, y, w, h]) and ``categories``.

    Images are looked up relative to the JSON's folder, its parent, ``images/`` (any case) and ``<split>/``
    there, then by file name and by stem anywhere under those folders. An image not found is skipped and named.
    """
    jf = _coco_json(path, split)
    try:
        data = json.loads(jf.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{jf}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= data.keys():
        raise DatasetError(f"{jf}: not a COCO detection file (needs 'images', 'annotations', 'categories')")
    cats = {c["id"]: canonical_class(str(c["name"])) for c in data["categories"]}
    by_image: dict[Any, list[Label]] = {im["id"]: [] for im in data["images"]}
    for k, ann in enumerate(data["annotations"]):
        where = f"{jf} annotations[{k}]"
        if ann.get("image_id") not in by_image:
            bad_line(where, f"image_id {ann.get('image_id')!r} not in 'images'", strict)
            _count_bad(report, "annotation skipped (image_id not in 'images')", where)
            continue
        if ann.get("category_id") not in cats:
            bad_line(where, f"category_id {ann.get('category_id')!r} not in 'categories'", strict)
            _count_bad(report, "annotation skipped (category_id not in 'categories')", where)
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            bad_line(where, f"bbox must be [x, y, w, h], got {bbox!r}", strict)
            _count_bad(report, "annotation skipped (no bbox)", where)
            continue
        try:
            x, y, w, h = (float(v) for v in bbox)
            box = make_box(x, y, x + w, y + h, where)
        except (DatasetError, TypeError, ValueError) as exc:
            bad_line(where, str(exc).split(": ", 1)[-1], strict)
            _count_bad(report, "annotation skipped (box has no area)", where)
            continue
        by_image[ann["image_id"]].append(Label(box=box, cls=cats[ann["category_id"]]))
    up = jf.parent.parent
    bases = [jf.parent, up, child_dir(jf.parent, *IMAGE_DIRS), child_dir(up, *IMAGE_DIRS)]
    if split is not None:
        img_up = child_dir(up, *IMAGE_DIRS)
        bases += [child_dir(jf.parent, split), child_dir(up, split), child_dir(img_up, split) if img_up else None]
    roots = [b for b in dict.fromkeys(bases) if b is not None]
    index: ImageIndex | None = None
    samples: list[Sample] = []
    for im in data["images"]:
        fname = str(im.get("file_name", ""))
        image = next((b / fname for b in roots if fname and (b / fname).is_file()), None)
        if image is None:
            index = index or ImageIndex(*roots)
            image, why = index.find(fname, Path(fname).stem, jf, None if strict else report)
            if image is None:
                _skip_or_raise(report, strict, jf, f"image {fname!r} not found under {roots[0]} ({why})")
                continue
        try:
            iw, ih = (int(im["width"]), int(im["height"])) if "width" in im and "height" in im else image_size(image)
        except (DatasetError, OSError, ValueError, struct.error) as exc:
            _skip_or_raise(report, strict, image, f"unreadable image ({exc})")
            continue
        labels = [Label(_clip(lab.box, iw, ih, report, f"{jf} image {fname}"), lab.cls) for lab in by_image[im["id"]]]
        samples.append(Sample(image, labels, template_for(image), Path(fname).with_suffix("").as_posix()))
    return samples
