"""Train a YOLO defect detector on stacked (test, template, |diff|) images, offline, on CPU.

Pipeline (``lineguard train``):

1. load samples with vision.datasets (deeppcb / yolo / voc / coco); validate on a stratified random part
   (``val``, every class in both parts: vision.datasets.split) or on the last N (``holdout_last``);
2. write an ultralytics dataset of stacked images into a cache dir keyed by the data hash, so a
   second run on the same data skips the conversion;
3. train from a model config (``yolo11n.yaml``: from scratch) or local weights, never downloading;
4. export ONNX (vision.export), evaluate the ONNX model on the held-out part (vision.bench /
   vision.metrics), and publish a new version in the registry (vision.registry).

torch and ultralytics are imported inside functions only: importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2

from vision.registry import ModelEntry, hash_samples, publish
from vision.stacking import InputSpec, letterbox, stack_sample
from vision.types import DEFECT_CLASSES, UNKNOWN_CLASS, Sample

log = logging.getLogger("vision.train")

FORMATS: tuple[str, ...] = ("deeppcb", "yolo", "voc", "coco")
ARCHS: tuple[str, ...] = ("yolo", "hybrid", "centernet")
#: Epochs when --epochs is not given: YOLO learns whole frames slowly; the crop CNN sees ~40 crops a pair;
#: the centernet starts from an ImageNet backbone (vision.train_centernet).
DEFAULT_EPOCHS: dict[str, int] = {"yolo": 50, "hybrid": 8, "centernet": 40}
DEFAULT_BATCH: dict[str, int] = {"yolo": 16, "hybrid": 128, "centernet": 16}
DEFAULT_IMGSZ: dict[str, int] = {"yolo": 320, "hybrid": 320, "centernet": 256}
#: Share of images kept for validation when neither --val nor --holdout-last is given (stratified, seeded).
DEFAULT_VAL = 0.2
REPO_ROOT = Path(__file__).resolve().parents[1]


class TrainError(ValueError):
    """Training cannot start: bad data, bad arguments or missing training dependencies."""


@dataclass(slots=True)
class TrainConfig:
    data: Path
    fmt: str
    split: str | None = None
    epochs: int = 50
    imgsz: int = 320
    batch: int = 16
    weights: Path | None = None
    model: str = "yolo11n.yaml"
    holdout_last: int = 0
    #: Stratified random validation share (vision.datasets.split_stratified, ``seed``); ignored with holdout_last.
    val: float = 0.0
    #: False when ``val`` is only the default (no --val given): data too small to split then trains without a
    #: validation part, with a warning saying why, instead of failing.
    val_strict: bool = True
    out: Path = Path("var/registry")
    name: str = "pcb"
    stacking: str = "diff"
    cache_dir: Path = Path("var/cache/train")
    workers: int = 2
    threads: int = 2
    time_hours: float | None = None  # ultralytics 'time': wall-clock budget, overrides epochs
    seed: int = 0
    patience: int = 100
    extra: dict[str, Any] = field(default_factory=dict)  # passed through to ultralytics train()
    #: "yolo": whole-frame ultralytics YOLO; "hybrid": template proposals + crop CNN (vision.train_hybrid),
    #: for parts with a golden template; "centernet": whole-frame, template-free, pretrained EfficientNet-Lite0
    #: (vision.train_centernet). All publish the same registry layout.
    arch: str = "yolo"


@dataclass(slots=True)
class TrainResult:
    entry: ModelEntry
    metrics: dict[str, Any]
    train_seconds: float


# ------------------------------------------------------------------------------------------ offline env


def configure_ultralytics(config_dir: Path | None = None) -> Path:
    """Make ultralytics fully offline and project-local. Call before importing ultralytics.

    Sets YOLO_OFFLINE / YOLO_AUTOINSTALL, points YOLO_CONFIG_DIR at ``var/yolo`` and puts a local
    TTF where ultralytics looks for Arial.ttf (it otherwise downloads one to draw plots).
    """
    cfg = Path(config_dir or os.environ.get("YOLO_CONFIG_DIR") or REPO_ROOT / "var" / "yolo")
    os.environ["YOLO_CONFIG_DIR"] = str(cfg)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ.setdefault("YOLO_VERBOSE", "1")
    udir = cfg / "Ultralytics"
    udir.mkdir(parents=True, exist_ok=True)
    font = udir / "Arial.ttf"
    if not font.exists():
        src = _find_ttf()
        if src is not None:
            shutil.copyfile(src, font)
    settings = udir / "settings.json"
    if not settings.exists():
        settings.write_text(json.dumps({"sync": False, "hub": False, "api_key": ""}) + "\n")
    return cfg


def _find_ttf() -> Path | None:
    try:
        import matplotlib

        p = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        if p.is_file():
            return p
    except ImportError:
        pass
    for root in (Path(sys.prefix), Path("/usr/share/fonts")):
        for p in root.rglob("*.ttf"):
            return p
    return None


def _import_ultralytics() -> Any:
    configure_ultralytics()
    try:
        import ultralytics
        from ultralytics import settings
    except ImportError as e:
        raise TrainError(
            "training needs torch and ultralytics: pip install 'lineguard[train]' "
            f"(import failed: {e})"
        ) from e
    settings.update({"sync": False})
    return ultralytics


# ---------------------------------------------------------------------------------------------- data


def load_samples(data: Path, fmt: str, split: str | None = None) -> list[Sample]:
    """Load a dataset with vision.datasets, turning every failure into a TrainError naming the cause.

    The importer's fix-ups and skipped files are logged (``lineguard data check`` lists them all)."""
    if fmt not in FORMATS:
        raise TrainError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
    data = Path(data)
    if not data.exists():
        raise TrainError(f"data directory not found: {data}")
    from vision import datasets

    report = datasets.LoadReport()
    try:
        samples = datasets.load(data, fmt, split=split, report=report)
    except (ValueError, OSError) as e:
        raise TrainError(f"cannot load {fmt} dataset at {data}: {e}") from e
    if report.fixups or report.skipped:
        log.warning("%s: %s (lineguard data check --data %s --format %s lists them)", data, report.summary(),
                    data, fmt)
    if not samples:
        raise TrainError(f"no samples in {fmt} dataset at {data}")
    return samples


def auto_arch(data: Path, fmt: str, split: str | None = None) -> str:
    """``--arch auto``: ``yolo`` (stacked with the template) when every sample has a golden template, else the
    template-free ``centernet``."""
    samples = load_samples(data, fmt, split)
    return "yolo" if all(s.template_path is not None for s in samples) else "centernet"


def load_split(cfg: TrainConfig) -> tuple[list[Sample], list[Sample]]:
    """(samples to train on, samples to validate on): the last ``cfg.holdout_last`` (a fixed protocol), else a
    stratified random ``cfg.val`` share (every class in both parts), else none. TrainError on bad data, an
    impossible split or an empty fit; never a traceback for a data set problem."""
    from vision import datasets

    samples = load_samples(cfg.data, cfg.fmt, cfg.split)
    if cfg.holdout_last:
        try:
            fit, held = datasets.split_holdout(samples, cfg.holdout_last)
        except ValueError as e:
            raise TrainError(str(e)) from e
    elif cfg.val > 0:
        try:
            fit, held = datasets.split_stratified(samples, cfg.val, cfg.seed)
        except ValueError as e:
            if cfg.val_strict:
                raise TrainError(f"--val {cfg.val}: {e}") from e
            log.warning("no validation part: the default --val %s cannot be made (%s)", cfg.val, e)
            fit, held = list(samples), []
    else:
        fit, held = list(samples), []
    if not fit:
        raise TrainError("no samples left to train on after the hold-out")
    only_held = sorted({lab.cls for s in held for lab in s.labels} - {lab.cls for s in fit for lab in s.labels})
    if only_held:
        how = f"the last {cfg.holdout_last} samples" if cfg.holdout_last else "the validation part"
        raise TrainError(
            f"class(es) {only_held} appear only in {how}: the model could never learn them. Use a stratified "
            "random split (--val 0.2 --seed 0, without --holdout-last) or hold out other samples."
        )
    return fit, held


def class_names_for(samples: Sequence[Sample]) -> tuple[str, ...]:
    """Output classes: DeepPCB's six in their fixed order when the data uses only those, else sorted."""
    seen = {lab.cls for s in samples for lab in s.labels}
    if UNKNOWN_CLASS in seen:
        raise TrainError(f"class {UNKNOWN_CLASS!r} is reserved for template differences; relabel it")
    if seen <= set(DEFECT_CLASSES):
        return DEFECT_CLASSES
    return tuple(sorted(seen))


def _write_split(
    samples: Sequence[Sample], root: Path, split: str, spec: InputSpec, index: dict[str, int]
) -> int:
    """Write stacked, pre-letterboxed PNGs and YOLO label files; returns the number of labels."""
    from tqdm import tqdm

    img_dir, lab_dir = root / "images" / split, root / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    n_labels = 0
    for i, s in enumerate(tqdm(samples, desc=f"stacking {split}", unit="img", leave=False)):
        stacked, _ = stack_sample(s, spec.stacking)
        h, w = stacked.shape[:2]
        # Pre-letterbox with the exact function the edge runtime uses, so training and inference see
        # identical pixels (ultralytics does not resize an image already at imgsz).
        boxed, lb = letterbox(stacked, spec.size, spec.pad_value)
        # ultralytics flips BGR->RGB on images it reads; store reversed so the network sees
        # (test, template, diff) in that order, as vision.stacking.to_tensor feeds it.
        if not cv2.imwrite(str(img_dir / f"{i:06d}.png"), boxed[:, :, ::-1]):
            raise TrainError(f"cannot write cache image into {img_dir}")
        rows = []
        for lab in s.labels:
            b = lab.box
            x1 = min(max(b.x1, 0.0), w) * lb.scale + lb.pad_x
            x2 = min(max(b.x2, 0.0), w) * lb.scale + lb.pad_x
            y1 = min(max(b.y1, 0.0), h) * lb.scale + lb.pad_y
            y2 = min(max(b.y2, 0.0), h) * lb.scale + lb.pad_y
            if x2 - x1 < 1 or y2 - y1 < 1:
                log.warning("%s: box %s lies outside the image; skipped", s.image_path, b)
                continue
            S = spec.size
            rows.append(
                f"{index[lab.cls]} {(x1 + x2) / 2 / S:.6f} {(y1 + y2) / 2 / S:.6f} "
                f"{(x2 - x1) / S:.6f} {(y2 - y1) / S:.6f}\n"
            )
        (lab_dir / f"{i:06d}.txt").write_text("".join(rows))
        n_labels += len(rows)
    return n_labels


def build_yolo_dataset(
    train: Sequence[Sample], val: Sequence[Sample], cache_root: Path, spec: InputSpec, key: str
) -> Path:
    """Write (or reuse) the ultralytics dataset for these samples; returns its data.yaml."""
    root = Path(cache_root) / key
    data_yaml = root / "data.yaml"
    if data_yaml.is_file() and (root / "complete").is_file():
        log.info("reusing stacked dataset cache %s", root)
        return data_yaml
    if root.exists():
        shutil.rmtree(root)
    index = {c: i for i, c in enumerate(spec.class_names)}
    n_train = _write_split(train, root, "train", spec, index)
    if n_train == 0:
        raise TrainError("the training samples carry no labels: nothing to learn (are the label files empty?)")
    _write_split(val, root, "val", spec, index)
    names = "\n".join(f"  {i}: {c}" for i, c in enumerate(spec.class_names))
    data_yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    (root / "complete").write_text("ok\n")
    return data_yaml


# --------------------------------------------------------------------------------------------- train


def train(cfg: TrainConfig, command: str | None = None) -> TrainResult:
    """Run the whole pipeline and publish a registry version. Raises TrainError on bad input."""

    if cfg.arch not in ARCHS:
        raise TrainError(f"--arch must be one of {', '.join(ARCHS)}, got {cfg.arch!r}")
    if cfg.arch == "hybrid":
        from vision.train_hybrid import train_registry

        # Before any split: a missing template is the data's first problem, whatever the validation part.
        no_template = [s.sample_id or str(s.image_path) for s in load_samples(cfg.data, cfg.fmt, cfg.split)
                       if s.template_path is None]
        if no_template:
            raise TrainError(
                f"--arch hybrid needs a golden template for every sample; {len(no_template)} have none "
                f"(first: {no_template[0]}). Use --arch centernet (or --arch yolo) for data without templates."
            )

        cmd = command or " ".join(shlex.quote(a) for a in ["lineguard", *sys.argv[1:]])
        return train_registry(cfg, cmd)
    if cfg.arch == "centernet":
        from vision.train_centernet import train_registry as train_centernet

        cmd = command or " ".join(shlex.quote(a) for a in ["lineguard", *sys.argv[1:]])
        return train_centernet(cfg, cmd)

    if cfg.imgsz % 32:
        raise TrainError(f"--imgsz must be a multiple of 32, got {cfg.imgsz}")
    if cfg.weights is not None and not Path(cfg.weights).is_file():
        raise TrainError(f"weights file not found: {cfg.weights} (only local weights are used, never downloads)")
    fit, held = load_split(cfg)
    classes = class_names_for([*fit, *held])
    spec = InputSpec(
        size=cfg.imgsz,
        stacking=cfg.stacking,
        class_names=classes,
        extra={"trained_on": cfg.fmt, "holdout_last": cfg.holdout_last},
    )
    data_hash = hash_samples(fit)
    # ultralytics needs a val split; without a hold-out, monitor on a slice of the training data
    # (and say so in metrics.json: those numbers are not a generalisation estimate).
    val = held or list(fit[-max(1, len(fit) // 10) :])
    key = f"{data_hash[:16]}-{hash_samples(val)[:8]}-{cfg.stacking}-{cfg.imgsz}"
    data_yaml = build_yolo_dataset(fit, val, cfg.cache_dir, spec, key)

    ultralytics = _import_ultralytics()
    import torch

    torch.set_num_threads(max(1, cfg.threads))
    if cfg.weights is not None:
        model = ultralytics.YOLO(str(cfg.weights))
    else:
        if not cfg.model.endswith((".yaml", ".yml")):
            raise TrainError(f"--model must be a model config (e.g. yolo11n.yaml), got {cfg.model!r}")
        model = ultralytics.YOLO(cfg.model)
    run_dir = Path(cfg.cache_dir) / "runs"
    run_name = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    args: dict[str, Any] = {
        "data": str(data_yaml),
        "epochs": cfg.epochs,
        "imgsz": cfg.imgsz,
        "batch": cfg.batch,
        "workers": cfg.workers,
        "device": "cpu",
        "project": str(run_dir.resolve()),
        "name": run_name,
        "exist_ok": True,
        "pretrained": cfg.weights is not None,
        "amp": False,
        "plots": False,
        "seed": cfg.seed,
        "patience": cfg.patience,
        "cache": "ram",
        # Colour jitter would break the channel semantics (channel 3 is a difference image).
        "hsv_h": 0.0,
        "hsv_s": 0.0,
        "hsv_v": 0.0,
        "flipud": 0.5,
        "fliplr": 0.5,
        "verbose": True,
    }
    if cfg.time_hours:
        args["time"] = cfg.time_hours
    args.update(cfg.extra)
    t0 = time.monotonic()
    model.train(**args)
    train_seconds = time.monotonic() - t0
    save_dir = Path(model.trainer.save_dir)
    best = save_dir / "weights" / "best.pt"
    if not best.is_file():
        best = save_dir / "weights" / "last.pt"

    from vision.export import export_onnx

    onnx_path = export_onnx(best, cfg.imgsz, save_dir / "model.onnx")
    cmd = command or " ".join(shlex.quote(a) for a in ["lineguard", *sys.argv[1:]])
    metrics: dict[str, Any] = {
        "train_seconds": round(train_seconds, 1),
        "train_samples": len(fit),
        "heldout_samples": len(held),
        "imgsz": cfg.imgsz,
        "epochs_requested": cfg.epochs,
        "epochs_run": int(getattr(model.trainer, "epoch", -1)) + 1,
    }
    entry = publish(
        cfg.out,
        cfg.name,
        onnx_path=onnx_path,
        spec=spec,
        data_hash=data_hash,
        train_command=cmd,
        metrics=metrics,
        weights_path=best,
    )
    if held:
        # Evaluate the exported edge model, not the PyTorch one: that is what ships.
        from vision.bench import evaluate
        from vision.detectors.onnx import OnnxDetector

        # Low detector threshold for a full PR curve (mAP); P/R/F at the 0.25 operating point.
        det = OnnxDetector.from_dir(entry.path, unknown_pass=False, conf=0.001, threads=cfg.threads)
        metrics["heldout"] = evaluate(det, held, prf_conf=0.25)
    else:
        metrics["heldout"] = None
        metrics["note"] = "no --holdout-last: no held-out evaluation"
    (entry.path / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return TrainResult(entry=entry, metrics=metrics, train_seconds=train_seconds)
