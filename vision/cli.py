"""vision's commands for the single ``lineguard`` CLI: ``train``, ``eval`` and ``bench vision``.

Cheap to import: numpy/OpenCV/torch/ultralytics/onnxruntime are imported inside the commands.
Also runnable standalone: ``python -m vision.cli train ...``.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer

DEFAULT_REGISTRY = Path("var/registry")


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code=2)


def train_cmd(
    data: Path = typer.Option(..., "--data", help="dataset directory"),
    fmt: str = typer.Option(..., "--format", help="deeppcb | yolo | voc | coco"),
    split: str | None = typer.Option(None, "--split", help="split / list name, e.g. trainval"),
    epochs: int = typer.Option(50, "--epochs"),
    imgsz: int = typer.Option(320, "--imgsz", help="square network input, multiple of 32"),
    batch: int = typer.Option(16, "--batch"),
    weights: Path | None = typer.Option(None, "--weights", help="local .pt to start from (never downloads)"),
    model: str = typer.Option("yolo11n.yaml", "--model", help="model config when training from scratch"),
    holdout_last: int = typer.Option(0, "--holdout-last", help="hold out the last N samples for evaluation"),
    out: Path = typer.Option(DEFAULT_REGISTRY, "--out", help="registry directory"),
    name: str = typer.Option("pcb", "--name", help="model name in the registry"),
    stacking: str = typer.Option("diff", "--stacking", help="diff (test, template, |diff|) | gray"),
    cache_dir: Path = typer.Option(Path("var/cache/train"), "--cache-dir"),
    time_hours: float | None = typer.Option(None, "--time", help="wall-clock budget in hours (overrides epochs)"),
    threads: int = typer.Option(2, "--threads", help="torch CPU threads"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train a defect detector offline, export ONNX, evaluate on the hold-out, publish to the registry."""
    from vision.train import TrainConfig, TrainError, train

    cfg = TrainConfig(
        data=data,
        fmt=fmt,
        split=split,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        weights=weights,
        model=model,
        holdout_last=holdout_last,
        out=out,
        name=name,
        stacking=stacking,
        cache_dir=cache_dir,
        time_hours=time_hours,
        threads=threads,
        seed=seed,
    )
    command = " ".join(shlex.quote(a) for a in ["lineguard", "train", *_argv_after("train")])
    try:
        res = train(cfg, command=command)
    except (TrainError, ValueError) as e:
        _fail(str(e))
        return
    typer.echo(json.dumps({"model": str(res.entry.path), "version": res.entry.version, **res.metrics}, indent=2))


def eval_cmd(
    data: Path = typer.Option(..., "--data", help="dataset directory"),
    fmt: str = typer.Option(..., "--format", help="deeppcb | yolo | voc | coco"),
    model: str = typer.Option(..., "--model", help="model dir / .onnx, or registry name[@version]"),
    split: str | None = typer.Option(None, "--split"),
    holdout_last: int = typer.Option(0, "--holdout-last", help="evaluate only the last N samples"),
    registry: Path = typer.Option(DEFAULT_REGISTRY, "--registry", help="registry for name references"),
    conf: float = typer.Option(0.001, "--conf", help="detector threshold (low: full PR curve for mAP)"),
    prf_conf: float = typer.Option(0.25, "--prf-conf", help="operating threshold for P/R/F"),
    threads: int = typer.Option(2, "--threads", help="onnxruntime intra-op threads"),
    limit: int | None = typer.Option(None, "--limit", help="evaluate at most N samples"),
) -> None:
    """Evaluate an ONNX model: JSON with per-class and overall mAP50, mAP50-95, P/R/F (IoU>0.33), latency."""
    from vision.bench import run_one
    from vision.train import TrainError

    try:
        res = run_one("onnx", data, fmt, split, holdout_last, model, conf, prf_conf, threads, registry, limit)
    except (TrainError, LookupError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
        return
    typer.echo(json.dumps(res, indent=2))


def bench_vision_cmd(
    data: Path = typer.Option(..., "--data", help="dataset directory"),
    fmt: str = typer.Option(..., "--format"),
    split: str | None = typer.Option(None, "--split"),
    holdout_last: int = typer.Option(0, "--holdout-last"),
    model: str | None = typer.Option(None, "--model", help="ONNX model (default: the shipped one)"),
    yolo_model: str | None = typer.Option(None, "--yolo-model", help="registry dir / .pt for the torch detector"),
    registry: Path = typer.Option(DEFAULT_REGISTRY, "--registry"),
    detectors: str = typer.Option("onnx,template,yolo", "--detectors", help="comma-separated kinds"),
    conf: float = typer.Option(0.25, "--conf"),
    threads: int = typer.Option(2, "--threads"),
    limit: int | None = typer.Option(None, "--limit"),
    markdown: Path | None = typer.Option(None, "--markdown", help="append a results table to this file"),
) -> None:
    """Accuracy, p50/p99 latency, frames/s and peak RSS per detector, each in its own process."""
    import importlib.util

    from vision.bench import DETECTOR_KINDS, MD_HEADER, bench_subprocess, markdown_row

    kinds = [k.strip() for k in detectors.split(",") if k.strip()]
    for k in kinds:
        if k not in DETECTOR_KINDS:
            _fail(f"unknown detector {k!r}; expected some of {', '.join(DETECTOR_KINDS)}")
    if not Path(data).exists():
        _fail(f"data directory not found: {data}")
    common = ["--data", str(data), "--format", fmt, "--holdout-last", str(holdout_last), "--conf", str(conf),
              "--prf-conf", str(conf), "--threads", str(threads), "--registry", str(registry)]
    if split:
        common += ["--split", split]
    if limit:
        common += ["--limit", str(limit)]
    results = []
    for k in kinds:
        args = list(common)
        if k == "yolo":
            if importlib.util.find_spec("torch") is None or importlib.util.find_spec("ultralytics") is None:
                results.append({"kind": k, "skipped": "torch/ultralytics not installed"})
                continue
            if not yolo_model:
                results.append({"kind": k, "skipped": "no --yolo-model given"})
                continue
            args += ["--model", yolo_model]
        elif k == "onnx" and model:
            args += ["--model", model]
        results.append(bench_subprocess(k, args))
    typer.echo(json.dumps(results, indent=2))
    if markdown is not None:
        import time

        cmd = " ".join(shlex.quote(a) for a in ["lineguard", "bench", "vision", *_argv_after("vision")])
        rows = [markdown_row(r) for r in results if "skipped" not in r]
        with open(markdown, "a") as fh:
            fh.write(f"\n`{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n{MD_HEADER}\n")
            fh.write("\n".join(rows) + "\n")


def _argv_after(word: str) -> list[str]:
    argv = sys.argv[1:]
    return argv[argv.index(word) + 1 :] if word in argv else argv


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add vision's commands: ``train`` and ``eval`` to ``app``, ``vision`` to ``bench``."""
    app.command("train")(train_cmd)
    app.command("eval")(eval_cmd)
    bench.command("vision")(bench_vision_cmd)


def main() -> None:
    app = typer.Typer(add_completion=False, no_args_is_help=True)
    bench = typer.Typer(no_args_is_help=True)
    register(app, bench)
    app.add_typer(bench, name="bench")
    app()


if __name__ == "__main__":
    main()
