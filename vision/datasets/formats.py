"""Importers for the common detection layouts: YOLO txt, Pascal VOC XML and COCO JSON.

Each returns list[Sample]. A golden template is attached when an image named ``X_test.ext`` has a sibling
``X_temp.ext`` (the DeepPCB convention), so template-based detectors work on any layout.
"""

from __future__ import annotations

import json
import struct
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import cv2
import yaml

from vision.datasets._common import IMAGE_EXTS, DatasetError, bad_line, make_box, require_file
from vision.types import DEFECT_CLASSES, Label, Sample


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


def _yolo_names(root: Path) -> tuple[list[str], dict[str, Any]]:
    for yml in (root / "data.yaml", root / "dataset.yaml"):
        if yml.is_file():
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
    classes = root / "classes.txt"
    if classes.is_file():
        return [ln.strip() for ln in classes.read_text(encoding="utf-8").splitlines() if ln.strip()], {}
    raise DatasetError(
        f"YOLO dataset {root}: class names not found; expected {root / 'data.yaml'} or {root / 'classes.txt'}"
    )


def _yolo_label_path(root: Path, image: Path) -> Path:
    rel = image.relative_to(root)
    parts = list(rel.parts)
    if "images" in parts:
        parts[parts.index("images")] = "labels"
    return (root / Path(*parts)).with_suffix(".txt")


def load_yolo(root: Path, split: str | None = None, strict: bool = False) -> list[Sample]:
    """YOLO txt: ``images/[split/]*.jpg`` + ``labels/[split/]*.txt`` (``cls cx cy w h``, normalised).

    An image without a label file is a good part (the YOLO convention for background images).
    """
    if not root.is_dir():
        raise DatasetError(f"YOLO root is not a directory: {root}")
    names, data = _yolo_names(root)
    img_root = root / "images"
    if split is not None:
        entry = data.get(split) if data else None
        base = Path(str(data.get("path", root))) if data else root
        base = base if base.is_absolute() else root / base
        img_root = (base / entry) if isinstance(entry, str) else root / "images" / split
        if not img_root.is_dir() and isinstance(entry, str):
            img_root = root / entry
    if not img_root.is_dir():
        raise DatasetError(f"YOLO images folder not found: {img_root}")
    samples: list[Sample] = []
    for image in sorted(p for p in img_root.rglob("*") if _is_image(p)):
        lbl = _yolo_label_path(root, image)
        labels: list[Label] = []
        if lbl.is_file():
            w, h = image_size(image)
            for n, line in enumerate(lbl.read_text(encoding="utf-8").splitlines(), start=1):
                parts = line.split()
                if not parts:
                    continue
                where = f"{lbl}:{n}"
                if len(parts) != 5:  # segmentation polygons (more fields) are not boxes
                    bad_line(where, f"expected 'cls cx cy w h', got {line.strip()!r}", strict)
                    continue
                try:
                    c = int(parts[0])
                    cx, cy, bw, bh = (float(v) for v in parts[1:])
                except ValueError:
                    bad_line(where, f"non-numeric field in {line.strip()!r}", strict)
                    continue
                if not 0 <= c < len(names):
                    bad_line(where, f"class id {c} outside 0..{len(names) - 1}", strict)
                    continue
                if max(cx, cy, bw, bh) > 1.0 + 1e-6 or min(cx, cy, bw, bh) < 0:
                    bad_line(where, "coordinates are not normalised to [0, 1]", strict)
                    continue
                try:
                    box = make_box((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h, where)
                except DatasetError as exc:
                    bad_line(where, str(exc).split(": ", 1)[-1], strict)
                    continue
                labels.append(Label(box=box, cls=canonical_class(names[c])))
        samples.append(Sample(image, labels, template_for(image), str(image.relative_to(root).with_suffix(""))))
    return samples


# ------------------------------------------------------------------------------------------------- VOC


def _voc_float(node: ET.Element, tag: str, where: str) -> float:
    text = node.findtext(tag)
    if text is None:
        raise DatasetError(f"{where}: <bndbox> lacks <{tag}>")
    try:
        return float(text)
    except ValueError as exc:
        raise DatasetError(f"{where}: <{tag}> is not a number: {text!r}") from exc


def load_voc(root: Path, split: str | None = None, strict: bool = False) -> list[Sample]:
    """Pascal VOC: ``Annotations/*.xml`` (or XML files in root) with images in ``JPEGImages/`` or beside them.

    ``split`` selects ``ImageSets/Main/<split>.txt``. Boxes are VOC 1-based pixel corners, kept as written.
    """
    if not root.is_dir():
        raise DatasetError(f"VOC root is not a directory: {root}")
    ann_dir = root / "Annotations" if (root / "Annotations").is_dir() else root
    if split is not None:
        ids_file = require_file(root / "ImageSets" / "Main" / f"{split}.txt", f"VOC split list for {split!r}")
        ids = [ln.split()[0] for ln in ids_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        xmls = [require_file(ann_dir / f"{i}.xml", "VOC annotation") for i in ids]
    else:
        xmls = sorted(ann_dir.glob("*.xml"))
        if not xmls:
            raise DatasetError(f"no VOC annotation (*.xml) in {ann_dir}")
    samples: list[Sample] = []
    for xml in xmls:
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            raise DatasetError(f"{xml}: not valid XML ({exc})") from exc
        if tree.tag != "annotation":
            raise DatasetError(f"{xml}: root element is <{tree.tag}>, expected VOC <annotation>")
        fname = tree.findtext("filename") or f"{xml.stem}.jpg"
        candidates = [root / "JPEGImages" / fname, xml.parent / fname, root / fname]
        image = next((c for c in candidates if c.is_file()), None)
        if image is None:
            raise DatasetError(f"{xml}: image not found: {candidates[0]}")
        labels: list[Label] = []
        for k, obj in enumerate(tree.findall("object"), start=1):
            where = f"{xml} object #{k}"
            name = obj.findtext("name")
            bb = obj.find("bndbox")
            if not name or bb is None:
                bad_line(where, "needs <name> and <bndbox>", strict)
                continue
            try:
                x1, y1, x2, y2 = (_voc_float(bb, t, where) for t in ("xmin", "ymin", "xmax", "ymax"))
                box = make_box(x1, y1, x2, y2, where)
            except DatasetError as exc:
                bad_line(where, str(exc).split(": ", 1)[-1], strict)
                continue
            labels.append(Label(box=box, cls=canonical_class(name)))
        samples.append(Sample(image, labels, template_for(image), xml.stem))
    return samples


# ------------------------------------------------------------------------------------------------ COCO


def _coco_json(path: Path, split: str | None) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise DatasetError(f"COCO path not found: {path}")
    if split is not None:
        for cand in (
            path / "annotations" / f"instances_{split}.json",
            path / f"{split}.json",
            path / "annotations" / f"{split}.json",
        ):
            if cand.is_file():
                return cand
        raise DatasetError(
            f"COCO annotation for split {split!r} not found: {path / 'annotations' / f'instances_{split}.json'}"
        )
    found = sorted(path.glob("*.json")) or sorted((path / "annotations").glob("*.json"))
    if len(found) != 1:
        raise DatasetError(f"COCO: expected one *.json in {path} (or pass split), found {len(found)}")
    return found[0]


def load_coco(path: Path, split: str | None = None, strict: bool = False) -> list[Sample]:
    """COCO detection JSON: ``images``, ``annotations`` (``bbox`` = [x, y, w, h]) and ``categories``.

    Images are looked up relative to the JSON's folder, its parent, ``images/`` and ``<split>/`` there.
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
            continue
        if ann.get("category_id") not in cats:
            bad_line(where, f"category_id {ann.get('category_id')!r} not in 'categories'", strict)
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            bad_line(where, f"bbox must be [x, y, w, h], got {bbox!r}", strict)
            continue
        try:
            x, y, w, h = (float(v) for v in bbox)
            box = make_box(x, y, x + w, y + h, where)
        except (DatasetError, TypeError, ValueError) as exc:
            bad_line(where, str(exc).split(": ", 1)[-1], strict)
            continue
        by_image[ann["image_id"]].append(Label(box=box, cls=cats[ann["category_id"]]))
    bases = [jf.parent, jf.parent.parent, jf.parent / "images", jf.parent.parent / "images"]
    if split is not None:
        bases += [jf.parent / split, jf.parent.parent / split, jf.parent.parent / "images" / split]
    samples: list[Sample] = []
    for im in data["images"]:
        fname = str(im.get("file_name", ""))
        image = next((b / fname for b in bases if fname and (b / fname).is_file()), None)
        if image is None:
            raise DatasetError(f"{jf}: image {fname!r} not found under {bases[0]}")
        samples.append(Sample(image, by_image[im["id"]], template_for(image), Path(fname).with_suffix("").as_posix()))
    return samples
