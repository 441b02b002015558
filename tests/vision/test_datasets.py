"""Dataset importers on tiny generated fixtures, one per format, plus bad-input errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from vision.datasets import (
    DatasetError,
    LoadReport,
    append_deeppcb,
    canonical_class,
    load,
    split_holdout,
    write_deeppcb,
)
from vision.types import Box, Label


def _gray(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    assert img is not None, path
    return np.asarray(img, dtype=np.uint8)


def _img(path: Path, w: int = 64, h: int = 48, value: int = 255) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w), value, np.uint8)
    cv2.rectangle(img, (5, 5), (20, 30), 0, -1)
    assert cv2.imwrite(str(path), img)
    return path


def _deeppcb(root: Path) -> Path:
    g = root / "group12000" / "12000"
    n = root / "group12000" / "12000_not"
    for stem in ("12000000", "12000001"):
        _img(g / f"{stem}_test.jpg")
        _img(g / f"{stem}_temp.jpg")
    n.mkdir(parents=True)
    (n / "12000000.txt").write_text("1 2 11 12 1\n20 5 40 30 6\n")
    (n / "12000001.txt").write_text("")  # a good part
    (root / "trainval.txt").write_text(
        "group12000/12000/12000000.jpg group12000/12000_not/12000000.txt\n"
        "group12000/12000/12000001.jpg group12000/12000_not/12000001.txt"  # no trailing newline, as published
    )
    return root


# --------------------------------------------------------------------------------------------- DeepPCB


def test_deeppcb_pairs_and_labels(tmp_path: Path) -> None:
    root = _deeppcb(tmp_path)
    s = load(root, "deeppcb")
    assert [x.sample_id for x in s] == ["group12000/12000/12000000", "group12000/12000/12000001"]
    assert s[0].image_path.name == "12000000_test.jpg"
    assert s[0].template_path is not None and s[0].template_path.name == "12000000_temp.jpg"
    assert s[0].labels == [Label(Box(1, 2, 11, 12), "open"), Label(Box(20, 5, 40, 30), "pin_hole")]
    assert s[1].labels == []
    assert load(root, "deeppcb", "trainval") == s
    assert load(root, "DeepPCB", "trainval.txt") == s


def test_deeppcb_every_list_file_and_dedup(tmp_path: Path) -> None:
    root = _deeppcb(tmp_path)
    (root / "test.txt").write_text("group12000/12000/12000001.jpg group12000/12000_not/12000001.txt\n")
    (root / "extra.txt").write_text("group12000/12000/12000000.jpg group12000/12000_not/12000000.txt\n")
    assert len(load(root, "deeppcb")) == 2
    assert len(load(root, "deeppcb", "test")) == 1


def test_deeppcb_missing_files_are_named(tmp_path: Path) -> None:
    root = _deeppcb(tmp_path)
    with pytest.raises(DatasetError, match=r"split 'val'.*val\.txt"):
        load(root, "deeppcb", "val")
    (root / "group12000" / "12000" / "12000001_test.jpg").unlink()
    with pytest.raises(DatasetError, match=r"trainval\.txt:2: image not found: .*12000001_test\.jpg"):
        load(root, "deeppcb")
    _img(root / "group12000" / "12000" / "12000001_test.jpg")
    (root / "group12000" / "12000_not" / "12000000.txt").unlink()
    with pytest.raises(DatasetError, match=r"annotation file not found: .*12000000\.txt"):
        load(root, "deeppcb")


def test_deeppcb_bad_line_skipped_or_strict(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _deeppcb(tmp_path)
    (root / "group12000" / "12000_not" / "12000000.txt").write_text("1 2 11 12 1\n5 5 9 9 7\n3 3 3 9 2\nx y\n")
    with caplog.at_level(logging.WARNING):
        s = load(root, "deeppcb")
    assert s[0].labels == [Label(Box(1, 2, 11, 12), "open")]  # good label kept
    assert "12000000.txt:2: defect type 7" in caplog.text
    assert "12000000.txt:3" in caplog.text and "12000000.txt:4" in caplog.text
    with pytest.raises(DatasetError, match=r"12000000\.txt:2: defect type 7 is not one of 1\.\.6"):
        load(root, "deeppcb", strict=True)


def test_deeppcb_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("this is not a list file at all\n")
    with pytest.raises(DatasetError, match="no DeepPCB list file in"):
        load(tmp_path, "deeppcb")  # notes.txt is not taken for a list file
    with pytest.raises(DatasetError, match=r"notes\.txt:1: expected .*is this a DeepPCB list file"):
        load(tmp_path, "deeppcb", "notes")  # ... unless named, then it must be one
    _deeppcb(tmp_path / "ds")
    with (tmp_path / "ds" / "trainval.txt").open("a") as fh:
        fh.write("\ngroup12000/12000/12000002.jpg\n")
    with pytest.raises(DatasetError, match=r"trainval\.txt:3: expected"):
        load(tmp_path / "ds", "deeppcb")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no DeepPCB list file"):
        load(empty, "deeppcb")
    with pytest.raises(DatasetError, match="dataset path not found"):
        load(tmp_path / "nope", "deeppcb")
    with pytest.raises(DatasetError, match="unknown dataset format 'kitti'"):
        load(tmp_path, "kitti")


def test_split_holdout() -> None:
    from vision.types import Sample

    s = [Sample(Path(f"{i}.jpg"), []) for i in range(5)]
    train, held = split_holdout(s, 2)
    assert [x.image_path.name for x in held] == ["3.jpg", "4.jpg"]
    assert len(train) == 3
    assert split_holdout(s, 0) == (s, [])
    with pytest.raises(ValueError, match="cannot hold out 6 of 5"):
        split_holdout(s, 6)


def test_write_and_append_deeppcb_roundtrip(tmp_path: Path) -> None:
    src = load(_deeppcb(tmp_path / "src"), "deeppcb")
    out = tmp_path / "out"
    new = write_deeppcb(src, out, group="55000")
    img = np.zeros((32, 32), np.uint8)
    extra = append_deeppcb(out, img, img, [Label(Box(1, 1, 9, 9), "spur")], group="55000", ext=".png")
    back = load(out, "deeppcb")
    assert [b.labels for b in back] == [s.labels for s in src] + [[Label(Box(1, 1, 9, 9), "spur")]]
    assert [b.sample_id for b in back] == [n.sample_id for n in new] + [extra.sample_id]
    assert back[0].sample_id == "group55000/55000/55000000"
    assert all(b.template_path is not None for b in back)
    assert np.array_equal(_gray(str(back[2].image_path)), img)
    with pytest.raises(DatasetError, match="'unknown' has no DeepPCB type id"):
        append_deeppcb(out, img, None, [Label(Box(1, 1, 9, 9), "unknown")])
    assert len(load(out, "deeppcb")) == 3  # the refused sample left nothing behind


# ------------------------------------------------------------------------------------------------ YOLO


def _yolo(root: Path, names: str = "data.yaml") -> Path:
    _img(root / "images" / "train" / "a_test.png", 100, 50)
    _img(root / "images" / "train" / "a_temp.png", 100, 50)
    _img(root / "images" / "train" / "b.jpg", 100, 50)
    _img(root / "images" / "val" / "c.png", 100, 50)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "train" / "a_test.txt").write_text("1 0.5 0.5 0.2 0.4\n4 0.1 0.2 0.1 0.2\n")
    (root / "labels" / "val" / "c.txt").write_text("0 0.25 0.5 0.5 1.0\n")
    if names == "data.yaml":
        (root / "data.yaml").write_text(
            "path: .\ntrain: images/train\nval: images/val\nnames:\n  0: open\n  1: short\n  2: mousebite\n"
            "  3: spur\n  4: Spurious Copper\n  5: pin-hole\n"
        )
    else:
        (root / "classes.txt").write_text("open\nshort\nmousebite\nspur\nspurious_copper\npin_hole\n")
    return root


@pytest.mark.parametrize("names", ["data.yaml", "classes.txt"])
def test_yolo(tmp_path: Path, names: str) -> None:
    root = _yolo(tmp_path, names)
    train = load(root, "yolo", "train")
    assert [s.image_path.name for s in train] == ["a_test.png", "b.jpg"]  # _temp is a template, not a sample
    a = train[0]
    assert a.template_path is not None and a.template_path.name == "a_temp.png"
    assert a.labels[0] == Label(Box(40, 15, 60, 35), "short")
    assert a.labels[1].cls == "spurious_copper"
    b = a.labels[1].box
    assert (b.x1, b.y1, b.x2, b.y2) == pytest.approx((5, 5, 15, 15))
    assert train[1].labels == []  # no label file: a good part
    assert load(root, "yolo", "val")[0].labels == [Label(Box(0, 0, 50, 50), "open")]
    assert len(load(root, "yolo")) == 3


def test_yolo_errors(tmp_path: Path) -> None:
    root = _yolo(tmp_path)
    (root / "labels" / "train" / "a_test.txt").write_text("9 0.5 0.5 0.2 0.4\n1 5 5 20 20\n")
    with pytest.raises(DatasetError, match=r"a_test\.txt:1: class id 9 outside 0\.\.5"):
        load(root, "yolo", "train", strict=True)
    assert load(root, "yolo", "train")[0].labels == []
    (root / "labels" / "train" / "a_test.txt").write_text("1 5 5 20 20\n")
    with pytest.raises(DatasetError, match="not normalised"):
        load(root, "yolo", "train", strict=True)
    (root / "data.yaml").unlink()
    with pytest.raises(DatasetError, match=r"class names not found; expected .*data\.yaml"):
        load(root, "yolo")
    (root / "data.yaml").write_text("nc: 6\n")
    with pytest.raises(DatasetError, match=r"data\.yaml: missing 'names'"):
        load(root, "yolo")
    (root / "data.yaml").write_text("names: [open]\n")
    with pytest.raises(DatasetError, match=r"YOLO images folder not found: .*images/test"):
        load(root, "yolo", "test")


# ------------------------------------------------------------------------------------------------- VOC


def _voc_xml(fname: str, objects: str) -> str:
    size = "<size><width>64</width><height>48</height></size>"
    return f"<annotation><filename>{fname}</filename>{size}{objects}</annotation>"


def test_voc(tmp_path: Path) -> None:
    _img(tmp_path / "JPEGImages" / "p1.jpg")
    _img(tmp_path / "JPEGImages" / "p2.jpg")
    (tmp_path / "Annotations").mkdir()
    box = "<xmin>3</xmin><ymin>4</ymin><xmax>13</xmax><ymax>24</ymax>"
    obj = f"<object><name>mousebite</name><bndbox>{box}</bndbox></object>"
    (tmp_path / "Annotations" / "p1.xml").write_text(_voc_xml("p1.jpg", obj))
    (tmp_path / "Annotations" / "p2.xml").write_text(_voc_xml("p2.jpg", ""))
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("p2\n")
    s = load(tmp_path, "voc")
    assert [x.sample_id for x in s] == ["p1", "p2"]
    assert s[0].labels == [Label(Box(3, 4, 13, 24), "mousebite")]
    assert s[1].labels == []
    assert [x.sample_id for x in load(tmp_path, "voc", "val")] == ["p2"]
    with pytest.raises(DatasetError, match=r"VOC split list for 'test' not found: .*test\.txt"):
        load(tmp_path, "voc", "test")
    # A broken or orphan annotation is skipped and named in the report (strict: raised).
    (tmp_path / "Annotations" / "p3.xml").write_text("<annotation><filename>p3.jpg")
    rep = LoadReport()
    assert len(load(tmp_path, "voc", report=rep)) == 2
    assert rep.skipped[0][0].endswith("p3.xml") and "not valid XML" in rep.skipped[0][1]
    with pytest.raises(DatasetError, match=r"p3\.xml: not valid XML"):
        load(tmp_path, "voc", strict=True)
    (tmp_path / "Annotations" / "p3.xml").write_text(_voc_xml("p3.jpg", ""))
    with pytest.raises(DatasetError, match=r"p3\.xml: image not found: p3\.jpg \(looked under .*JPEGImages"):
        load(tmp_path, "voc", strict=True)
    (tmp_path / "Annotations" / "p3.xml").write_text("<coco/>")
    with pytest.raises(DatasetError, match=r"root element is <coco>"):
        load(tmp_path, "voc", strict=True)


# ------------------------------------------------------------------------------------------------ COCO


def test_coco(tmp_path: Path) -> None:
    _img(tmp_path / "images" / "q1.png")
    _img(tmp_path / "images" / "q2.png")
    data = {
        "images": [{"id": 1, "file_name": "q1.png"}, {"id": 2, "file_name": "q2.png"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 20]},
            {"id": 2, "image_id": 1, "category_id": 8, "bbox": [2, 3, 0, 20]},
        ],
        "categories": [{"id": 7, "name": "spur"}, {"id": 8, "name": "short"}],
    }
    (tmp_path / "annotations").mkdir()
    jf = tmp_path / "annotations" / "instances_train.json"
    jf.write_text(json.dumps(data))
    s = load(tmp_path, "coco", "train")
    assert s[0].labels == [Label(Box(2, 3, 12, 23), "spur")]  # zero-width box skipped with a warning
    assert s[1].labels == []
    assert load(jf, "coco") == s
    with pytest.raises(DatasetError, match=r"annotations\[1\]: box has no area"):
        load(jf, "coco", strict=True)
    data["images"].append({"id": 3, "file_name": "q3.png"})
    jf.write_text(json.dumps(data))
    rep = LoadReport()
    assert len(load(jf, "coco", report=rep)) == 2 and "'q3.png' not found" in rep.skipped[0][1]
    data["annotations"] = data["annotations"][:1]
    jf.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"image 'q3\.png' not found"):
        load(jf, "coco", strict=True)
    jf.write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match="not a COCO detection file"):
        load(jf, "coco")
    jf.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load(jf, "coco")
    with pytest.raises(DatasetError, match=r"split 'val' not found"):
        load(tmp_path, "coco", "val")


def test_canonical_class() -> None:
    assert canonical_class("Pin-Hole") == "pin_hole"
    assert canonical_class(" spurious copper ") == "spurious_copper"
    assert canonical_class("scratch") == "scratch"


def test_real_deeppcb_trainval(shared: Path) -> None:
    root = shared / "datasets" / "deeppcb"
    if not (root / "trainval.txt").is_file():
        pytest.skip(f"DeepPCB not found at {root}")
    s = load(root, "deeppcb", "trainval", strict=True)
    assert len(s) == 1000
    assert all(x.template_path is not None for x in s)
    assert sum(len(x.labels) for x in s) > 6800
    train, val = split_holdout(s, 200)
    assert (len(train), len(val)) == (800, 200)
    assert val[-1].sample_id == "group44000/44000/44000113"
