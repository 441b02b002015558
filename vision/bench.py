"""Accuracy and speed of detectors on a dataset: ``lineguard eval`` and ``lineguard bench vision``.

Accuracy comes from vision.metrics (COCO-style mAP50 / mAP50-95; DeepPCB P/R/F at IoU > 0.33).
Speed is wall time of ``detector.detect(frame)`` per frame, pre- and post-processing included.
Each detector of a benchmark runs in its own subprocess so that its peak RSS is its own and so that
the edge (onnx) figures are measured in a process that never imported torch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vision.detectors.base import Detector
from vision.detectors.factory import DetectorConfig
from vision.stacking import read_gray
from vision.types import UNKNOWN_CLASS, Detection, Frame, Label, Sample

DETECTOR_KINDS: tuple[str, ...] = ("onnx", "template", "yolo", "centernet")


def sample_frame(sample: Sample, seq: int = 0) -> Frame:
    image = read_gray(sample.image_path)
    template = read_gray(sample.template_path) if sample.template_path is not None else None
    return Frame(camera="bench", seq=seq, ts=time.time(), image=image, template=template,
                 truth=list(sample.labels), part_id=sample.sample_id)


def _pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if xs else float("nan")


@dataclass(slots=True)
class DetectionRun:
    """What a detector returned on each sample (``unknown`` detections apart) and how long each frame took."""

    samples: Sequence[Sample]
    preds: list[list[Detection]]
    latency_ms: list[float]
    unknown: int

    @property
    def truths(self) -> list[list[Label]]:
        return [list(s.labels) for s in self.samples]


def detect_all(detector: Detector, samples: Sequence[Sample], *, warmup: int = 3) -> DetectionRun:
    """Run ``detector`` over ``samples`` (after ``warmup`` untimed frames), timing each ``detect``."""
    if not samples:
        raise ValueError("no samples to evaluate")
    if warmup:
        f0 = sample_frame(samples[0])
        for _ in range(warmup):
            detector.detect(f0)
    preds: list[list[Detection]] = []
    lat_ms: list[float] = []
    n_unknown = 0
    for i, s in enumerate(samples):
        f = sample_frame(s, i)
        t0 = time.perf_counter()
        dets = detector.detect(f)
        lat_ms.append((time.perf_counter() - t0) * 1000.0)
        n_unknown += sum(d.cls == UNKNOWN_CLASS for d in dets)
        preds.append([d for d in dets if d.cls != UNKNOWN_CLASS])
    return DetectionRun(samples=samples, preds=preds, latency_ms=lat_ms, unknown=n_unknown)


def evaluate(
    detector: Detector,
    samples: Sequence[Sample],
    *,
    prf_conf: float = 0.25,
    classes: Sequence[str] | None = None,
    warmup: int = 3,
) -> dict[str, Any]:
    """Run ``detector`` over ``samples`` and score it (``detect_all`` then ``score``)."""
    names = list(classes) if classes is not None else list(detector.classes)
    return score(detector.name, detect_all(detector, samples, warmup=warmup), names, prf_conf=prf_conf)


def score(name: str, run: DetectionRun, classes: Sequence[str], *, prf_conf: float) -> dict[str, Any]:
    """Accuracy and speed of one run.

    mAP uses every detection the detector returned (build it with a low confidence threshold for a proper
    PR curve); P/R/F use only detections with confidence >= ``prf_conf``, which is the operating point a
    line would run at. ``unknown`` detections are counted apart: they belong to no trained class.
    """
    from vision import metrics

    names = list(classes)
    truths = run.truths
    rep = metrics.evaluate(run.preds, truths, names).as_dict()
    at_conf = [[d for d in p if d.confidence >= prf_conf] for p in run.preds]
    op = metrics.evaluate(at_conf, truths, names).as_dict()
    lat_ms = run.latency_ms
    total_s = sum(lat_ms) / 1000.0
    return {
        "detector": name,
        "images": len(run.samples),
        "map50": rep["map50"],
        "map50_95": rep["map50_95"],
        "map_deeppcb": rep["map_deeppcb"],
        "ap50": rep["ap50"],
        "ap50_95": rep["ap50_95"],
        "prf_conf": prf_conf,
        # DeepPCB protocol: same class, IoU > 0.33, at the operating confidence.
        "precision": op["deeppcb"]["precision"],  # type: ignore[index]
        "recall": op["deeppcb"]["recall"],  # type: ignore[index]
        "f1": op["deeppcb"]["f1"],  # type: ignore[index]
        "deeppcb": op["deeppcb"],
        "per_class": op["per_class"],
        "agnostic": op["agnostic"],
        "unknown_detections": run.unknown,
        "latency_ms": {"p50": _pct(lat_ms, 50), "p99": _pct(lat_ms, 99), "mean": float(np.mean(lat_ms))},
        "fps": len(run.samples) / total_s if total_s > 0 else float("nan"),
    }


def peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_config(kind: str, model: str | None, *, conf: float, threads: int, registry: Path | None = None,
                 tta: int | None = None, tta_settled: float | None = None,
                 second_look: bool | None = None) -> DetectorConfig:
    """The DetectorConfig a benchmark's ``--kind``/``--model`` flags mean (no unknown pass: only trained classes
    are scored). Kind ``onnx`` takes a registry model of either kind, as its directory says (a whole-frame YOLO
    export, a two-stage hybrid or a centernet), the shipped YOLO export when ``model`` is None; ``yolo`` a .pt /
    model dir; ``centernet`` a template-free centernet model (vision.detectors.centernet)."""
    from vision.detectors.factory import TemplateDetectorConfig, YoloDetectorConfig, model_detector_config

    if kind == "onnx":
        from vision.detectors.onnx import DEFAULT_MODEL

        return model_detector_config(model or DEFAULT_MODEL, registry, conf=conf, threads=threads,
                                     unknown_pass=False, tta=tta, settled=tta_settled, second_look=second_look)
    if kind == "template":
        return TemplateDetectorConfig()
    if kind == "centernet":
        from vision.detectors.factory import CenterNetDetectorConfig

        if not model:
            raise ValueError("the centernet detector needs --model (a registry name or model dir)")
        return CenterNetDetectorConfig(model=model, conf=conf, threads=threads)
    if kind == "yolo":
        if not model:
            raise ValueError("the yolo detector needs --model (a registry version dir with weights.pt, or a .pt)")
        return YoloDetectorConfig(model=model, conf=conf, threads=threads)
    raise ValueError(f"unknown detector kind {kind!r}; expected one of {DETECTOR_KINDS}")


def run_one(detector: DetectorConfig, data: Path, fmt: str, split: str | None, holdout_last: int,
            prf_conf: float, registry: Path | None, limit: int | None,
            report: Path | None = None, val: float = 0.0, seed: int = 0) -> dict[str, Any]:
    """Load data, build the detector ``detector`` describes, evaluate it; adds peak RSS and whether torch got
    imported.

    ``report``: also write the plots and error list of ``vision.report`` to that directory. ``val`` (with
    ``seed``): score only the stratified validation part ``lineguard train --val`` held out."""
    from vision.detectors.factory import build_detector
    from vision.train import load_samples

    samples = load_samples(data, fmt, split)
    if holdout_last:
        samples = samples[-holdout_last:]
    elif val > 0:
        from vision.datasets import split_stratified

        samples = split_stratified(samples, val, seed)[1]
    if limit:
        samples = samples[:limit]
    det = build_detector(detector, registry)
    run = detect_all(det, samples)
    res = score(det.name, run, list(det.classes), prf_conf=prf_conf)
    res["kind"] = detector.type
    res["config"] = detector.model_dump(mode="json")
    # Where the kind has them (template has neither): the detector's threshold and thread count.
    res["threads"] = getattr(detector, "threads", None)
    res["conf"] = getattr(detector, "conf", getattr(detector, "min_confidence", None))
    res["peak_rss_mb"] = peak_rss_mb()
    res["torch_imported"] = "torch" in sys.modules
    if report is not None:
        from vision.report import write_report

        res["report"] = write_report(report, run, list(det.classes), prf_conf=prf_conf, metrics=res)
    return res


def bench_subprocess(kind: str, args: list[str], timeout: float = 3600) -> dict[str, Any]:
    """Run ``run_one`` for ``kind`` in a fresh interpreter; a failure comes back as {'error': ...}."""
    cmd = [sys.executable, "-m", "vision.bench", "--kind", kind, *args]
    env = dict(os.environ)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"kind": kind, "error": " | ".join(tail) or f"exit {p.returncode}"}
    out: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


def markdown_row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"| {r['kind']} | error: {r['error']} | | | | | | | | |"
    ag = r["agnostic"]
    return (
        f"| {r['detector']} | {r['images']} | {r['map50']:.3f} | {r.get('map_deeppcb', float('nan')):.3f} | "
        f"{r['f1']:.3f} | {ag['f1']:.3f} | "
        f"{r['latency_ms']['p50']:.1f} | {r['latency_ms']['p99']:.1f} | {r['fps']:.1f} | {r['peak_rss_mb']:.0f} |"
    )


MD_HEADER = (
    "| detector | images | mAP50 | mAP (IoU>0.33) | F (IoU>0.33, same class) | F (class-agnostic) | p50 ms | p99 ms "
    "| frames/s | peak RSS MB |\n|---|---|---|---|---|---|---|---|---|---|"
)


def _main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="evaluate one detector (used by lineguard bench vision)")
    ap.add_argument("--kind", required=True, choices=DETECTOR_KINDS)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--format", required=True)
    ap.add_argument("--split", default=None)
    ap.add_argument("--holdout-last", type=int, default=0)
    ap.add_argument("--model", default=None)
    ap.add_argument("--registry", type=Path, default=None)
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--prf-conf", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--val", type=float, default=0.0, help="score the stratified validation part of train --val")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tta", type=int, default=None, help="hybrid models: flipped views averaged (1-4)")
    ap.add_argument("--tta-settled", type=float, default=None,
                    help="hybrid models: flipped views only below this plain-view probability")
    ap.add_argument("--second-look", type=int, choices=(0, 1), default=None,
                    help="hybrid models: 0 skips the second look around each refined box")
    a = ap.parse_args(argv)
    look = None if a.second_look is None else bool(a.second_look)
    cfg = bench_config(a.kind, a.model, conf=a.conf, threads=a.threads, registry=a.registry, tta=a.tta,
                       tta_settled=a.tta_settled, second_look=look)
    res = run_one(cfg, a.data, a.format, a.split, a.holdout_last, a.prf_conf, a.registry, a.limit, val=a.val,
                  seed=a.seed)
    res["kind"] = a.kind  # the kind asked for: `bench vision` keys its results by it
    print(json.dumps(res))
    print(json.dumps(res))


if __name__ == "__main__":
    _main()
