"""vision's commands for the single ``lineguard`` CLI: ``train``, ``eval`` and ``bench vision``.

Cheap to import: numpy/OpenCV/torch/ultralytics/onnxruntime are imported inside the commands.
Also runnable standalone: ``python -m vision.cli train ...``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer


def _default_registry() -> Path:
    """The one model registry (``<LINEGUARD_DATA_DIR>/models`` unless LINEGUARD_MODEL_REGISTRY says otherwise):
    what ``train`` publishes to, ``eval`` and ``bench`` look in, and ``lineguard run`` loads from."""
    from line_agent.settings import Settings

    return Settings().registry_dir


DEFAULT_REGISTRY = _default_registry()


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code=2)


def train_cmd(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", help="dataset directory"),
    fmt: str = typer.Option(..., "--format", help="deeppcb | yolo | voc | coco"),
    split: str | None = typer.Option(None, "--split", help="split / list name, e.g. trainval"),
    arch: str = typer.Option(
        "auto", "--arch",
        help="auto (yolo when every image has a golden template, else centernet) | yolo (whole frame, stacked "
        "with the template) | hybrid (template proposals + crop CNN) | centernet (whole frame, template-free, "
        "pretrained EfficientNet-Lite0)",
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="default: 50 for yolo, 8 for hybrid, 40 for centernet"),
    imgsz: int | None = typer.Option(
        None, "--imgsz", help="square network input, multiple of 32 (default: 320; centernet 256)"
    ),
    batch: int | None = typer.Option(
        None, "--batch", help="default: 16 images for yolo and centernet, 128 crops for hybrid"
    ),
    weights: Path | None = typer.Option(
        None,
        "--weights",
        help="start from local weights, never downloads: yolo a .pt; hybrid a model dir or name (pcb-synth-hybrid)",
    ),
    model: str = typer.Option("yolo11n.yaml", "--model", help="model config when training from scratch"),
    holdout_last: int = typer.Option(
        0, "--holdout-last", help="validate on the last N samples (a fixed protocol); replaces --val"
    ),
    val: float | None = typer.Option(
        None, "--val",
        help="stratified random validation share, every class in both parts or an error (default 0.2, or none "
        "with a warning when the data is too small to split; 0 with --weights, where a few feedback images are "
        "all there is; 0 = none)",
    ),
    out: Path = typer.Option(DEFAULT_REGISTRY, "--out", help="registry directory"),
    name: str = typer.Option("pcb", "--name", help="model name in the registry"),
    stacking: str = typer.Option("diff", "--stacking", help="diff (test, template, |diff|) | gray"),
    cache_dir: Path = typer.Option(Path("var/cache/train"), "--cache-dir"),
    time_hours: float | None = typer.Option(None, "--time", help="wall-clock budget in hours (overrides epochs)"),
    threads: int = typer.Option(2, "--threads", help="torch CPU threads"),
    seed: int = typer.Option(0, "--seed", help="seed of the validation split and of training"),
) -> None:
    """Train a defect detector offline, export ONNX, evaluate on the validation part, publish to the registry.

    ``--arch yolo`` learns whole frames stacked with the golden template; ``--arch hybrid`` classifies and
    re-boxes the differences against the template with a small crop CNN (needs templates; far better on DeepPCB,
    see docs/benchmarks/vision.md); ``--arch centernet`` learns template-free products (steel, textiles, any
    surface) from a pretrained backbone on a CPU. ``--time`` caps the training wall clock in hours.
    Validation: a stratified random 20 % by default (``--val``, ``--seed``), or ``--holdout-last N``.
    """
    from vision.train import (
        DEFAULT_BATCH,
        DEFAULT_EPOCHS,
        DEFAULT_IMGSZ,
        DEFAULT_VAL,
        TrainConfig,
        TrainError,
        auto_arch,
        train,
    )

    if arch != "auto" and arch not in DEFAULT_EPOCHS:
        _fail(f"--arch must be one of {', '.join(DEFAULT_EPOCHS)} (or auto), got {arch!r}")
        return
    if val is not None and not 0.0 <= val < 1.0:
        _fail(f"--val must be in [0, 1), got {val}")
        return
    if arch == "auto":
        try:
            arch = auto_arch(data, fmt, split)
        except TrainError as e:
            _fail(str(e))
            return
        typer.echo(f"--arch auto: {arch}", err=True)
    val_share = val if val is not None else (0.0 if holdout_last or weights is not None else DEFAULT_VAL)
    cfg = TrainConfig(
        arch=arch,
        data=data,
        fmt=fmt,
        split=split,
        epochs=epochs if epochs is not None else DEFAULT_EPOCHS[arch],
        imgsz=imgsz if imgsz is not None else DEFAULT_IMGSZ[arch],
        batch=batch if batch is not None else DEFAULT_BATCH[arch],
        weights=weights,
        model=model,
        holdout_last=holdout_last,
        val=val_share,
        val_strict=val is not None,
        out=out,
        name=name,
        stacking=stacking,
        cache_dir=cache_dir,
        time_hours=time_hours,
        threads=threads,
        seed=seed,
    )
    command = _command_line(ctx, "lineguard train")
    try:
        res = train(cfg, command=command)
    except (TrainError, ValueError) as e:
        _fail(str(e))
        return
    typer.echo(json.dumps({"model": str(res.entry.path), "version": res.entry.version, **res.metrics}, indent=2))


def eval_cmd(
    data: Path = typer.Option(..., "--data", help="dataset directory"),
    fmt: str = typer.Option(..., "--format", help="deeppcb | yolo | voc | coco"),
    model: str = typer.Option(
        ..., "--model", help="model dir / .onnx, or registry name[@version]: a YOLO export or a hybrid"
    ),
    split: str | None = typer.Option(None, "--split"),
    holdout_last: int = typer.Option(0, "--holdout-last", help="evaluate only the last N samples"),
    registry: Path = typer.Option(DEFAULT_REGISTRY, "--registry", help="registry for name references"),
    conf: float = typer.Option(0.001, "--conf", help="detector threshold (low: full PR curve for mAP)"),
    prf_conf: float | None = typer.Option(
        None, "--prf-conf",
        help="operating threshold for P/R/F (default: the model's, 0.5 hybrid / 0.3 centernet / 0.25 yolo)",
    ),
    threads: int = typer.Option(2, "--threads", help="onnxruntime intra-op threads"),
    limit: int | None = typer.Option(None, "--limit", help="evaluate at most N samples"),
    report: Path | None = typer.Option(
        None, "--report", help="also write PR curves, an error list and an error gallery to this directory"
    ),
    tta: int | None = typer.Option(None, "--tta", help="hybrid models: flipped views averaged, 1-4 (default 4)"),
    tta_settled: float | None = typer.Option(
        None, "--tta-settled", help="hybrid models: flipped views only for proposals the plain view is less sure of"
    ),
    second_look: bool | None = typer.Option(
        None, "--second-look/--no-second-look", help="hybrid models: second look around each refined box (default on)"
    ),
) -> None:
    """Evaluate a registry model (YOLO export or hybrid): JSON with per-class and overall mAP50, mAP50-95,
    P/R/F (IoU>0.33), latency. With --report: pr.png, errors.csv, errors.png, metrics.json."""
    from vision.bench import bench_config, run_one
    from vision.detectors.load import operating_conf, resolve_model_dir
    from vision.train import TrainError

    try:
        cfg = bench_config("onnx", model, conf=conf, threads=threads, registry=registry, tta=tta,
                           tta_settled=tta_settled, second_look=second_look)
        if prf_conf is None:
            prf_conf = operating_conf(resolve_model_dir(model, registry))
        res = run_one(cfg, data, fmt, split, holdout_last, prf_conf, registry, limit, report=report)
    except (TrainError, LookupError, FileNotFoundError, ValueError, OSError) as e:
        _fail(str(e))
        return
    typer.echo(json.dumps(res, indent=2))


def bench_vision_cmd(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", help="dataset directory"),
    fmt: str = typer.Option(..., "--format"),
    split: str | None = typer.Option(None, "--split"),
    holdout_last: int = typer.Option(0, "--holdout-last"),
    model: str | None = typer.Option(None, "--model", help="ONNX model (default: the shipped one)"),
    yolo_model: str | None = typer.Option(None, "--yolo-model", help="registry dir / .pt for the torch detector"),
    centernet_model: str | None = typer.Option(
        None, "--centernet-model", help="template-free centernet model (registry name or dir) for kind centernet"
    ),
    registry: Path = typer.Option(DEFAULT_REGISTRY, "--registry"),
    detectors: str = typer.Option("onnx,template,yolo", "--detectors", help="comma-separated kinds"),
    conf: float = typer.Option(0.25, "--conf"),
    threads: int = typer.Option(2, "--threads"),
    limit: int | None = typer.Option(None, "--limit"),
    val: float = typer.Option(
        0.0, "--val", help="score only the stratified validation part `train --val` held out (same --seed)"
    ),
    seed: int = typer.Option(0, "--seed"),
    markdown: Path | None = typer.Option(None, "--markdown", help="append a results table to this file"),
    tta: int | None = typer.Option(None, "--tta", help="hybrid models: flipped views averaged, 1-4 (default 4)"),
    tta_settled: float | None = typer.Option(
        None, "--tta-settled", help="hybrid models: flipped views only for proposals the plain view is less sure of"
    ),
    second_look: bool | None = typer.Option(
        None, "--second-look/--no-second-look", help="hybrid models: second look around each refined box (default on)"
    ),
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
    if val:
        common += ["--val", str(val), "--seed", str(seed)]
    if tta is not None:
        common += ["--tta", str(tta)]
    if tta_settled is not None:
        common += ["--tta-settled", str(tta_settled)]
    if second_look is not None:
        common += ["--second-look", str(int(second_look))]
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
        elif k == "centernet":
            if not centernet_model:
                results.append({"kind": k, "skipped": "no --centernet-model given"})
                continue
            args += ["--model", centernet_model]
        results.append(bench_subprocess(k, args))
    typer.echo(json.dumps(results, indent=2))
    if markdown is not None:
        import time

        cmd = _command_line(ctx, "lineguard bench vision")
        rows = [markdown_row(r) for r in results if "skipped" not in r]
        with open(markdown, "a") as fh:
            fh.write(f"\n`{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n{MD_HEADER}\n")
            fh.write("\n".join(rows) + "\n")


def bench_adapt_cmd(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", help="dataset directory"),
    fmt: str = typer.Option(..., "--format", help="deeppcb | yolo | voc | coco"),
    split: str | None = typer.Option(None, "--split"),
    design: str = typer.Option(
        ..., "--design", help="the line's board design: samples whose id contains this (DeepPCB: the group, 44000)"
    ),
    model: str = typer.Option(..., "--model", help="hybrid model to adapt: dir or registry name[@version]"),
    registry: Path = typer.Option(DEFAULT_REGISTRY, "--registry", help="registry for name references"),
    counts: str = typer.Option("0,5,10,20", "--counts", help="labelled boards to fine-tune on, comma-separated"),
    eval_last: int = typer.Option(..., "--eval-last", help="the design's last N boards: evaluated, never trained on"),
    seeds: str = typer.Option("0,1,2", "--seeds", help="one fine-tune per seed (which boards, training order)"),
    epochs: int = typer.Option(8, "--epochs"),
    threads: int = typer.Option(2, "--threads"),
    work: Path | None = typer.Option(None, "--work", help="keep feedback datasets and models here (default: temp)"),
    plot: Path | None = typer.Option(None, "--plot", help="write the learning curve as a PNG"),
    markdown: Path | None = typer.Option(None, "--markdown", help="append a results table to this file"),
) -> None:
    """How many boards must the line's operators label before a hybrid model fits a new design? Fine-tunes
    on k boards of the design (through the feedback dataset and `train --weights`), scores its next boards."""
    import time

    from vision.adapt import learning_curve, markdown_table, plot_curve, summary
    from vision.detectors.load import resolve_model_dir
    from vision.train import TrainError, load_samples

    try:
        ks = [int(x) for x in counts.split(",") if x.strip()]
        sd = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        _fail(f"--counts and --seeds take comma-separated integers, got {counts!r} / {seeds!r}")
        return
    try:
        model_dir = resolve_model_dir(model, registry)
        samples = [s for s in load_samples(data, fmt, split) if design in (s.sample_id or str(s.image_path))]
        if not samples:
            raise ValueError(f"no samples of design {design!r} in {data}")
        points = learning_curve(
            samples,
            model_dir,
            ks,
            eval_last=eval_last,
            seeds=sd or [0],
            epochs=epochs,
            threads=threads,
            work=work,
            on_point=lambda p: typer.echo(json.dumps(p.as_dict()), err=True),
        )
    except (TrainError, LookupError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
        return
    rows = summary(points)
    result = {"model": str(model_dir), "design": design, "boards": len(samples), "eval_boards": eval_last,
              "curve": rows, "runs": [p.as_dict() for p in points]}
    if plot is not None:
        plot_curve(plot, points, title=f"{model_dir.parent.name}/{model_dir.name} adapted to design {design}")
        result["plot"] = str(plot)
    typer.echo(json.dumps(result, indent=2))
    if markdown is not None:
        cmd = _command_line(ctx, "lineguard bench adapt")
        with open(markdown, "a") as fh:
            fh.write(f"\n`{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n{markdown_table(rows)}")


def _command_line(ctx: typer.Context, prefix: str) -> str:
    """The running command as a reproducible shell line: ``prefix`` plus every option the caller set.

    Rebuilt from click's parsed parameters rather than sys.argv, so it is right however the command was
    invoked (console script, ``python -m``, a test runner) and lists options in one canonical form.
    """
    parts = [prefix]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name) if param.name else None
        if source is None or source.name == "DEFAULT":
            continue
        value = ctx.params.get(param.name)
        flag = max(param.opts, key=len)
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{flag.lstrip('-')}")
        elif value is not None:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


def synth_cmd(
    out: Path = typer.Option(..., "--out", help="dataset directory to create or extend (DeepPCB layout)"),
    n: int = typer.Option(400, "--n", help="number of board pairs"),
    seed: int = typer.Option(0, "--seed", help="board i uses seed + i: same seed, same boards"),
    good_fraction: float = typer.Option(0.05, "--good-fraction", help="share of defect-free parts"),
    scan_noise: float = typer.Option(0.15, "--scan-noise", help="edge roughness between image and template"),
    ext: str = typer.Option(".jpg", "--ext", help=".jpg (DeepPCB-like artefacts) or .png (lossless)"),
) -> None:
    """Generate synthetic PCB board pairs with the six DeepPCB defect classes, in DeepPCB layout."""
    from vision.synth import write_dataset

    if n <= 0 or not 0.0 <= good_fraction <= 1.0 or ext not in (".jpg", ".png"):
        _fail("--n must be > 0, --good-fraction in [0, 1], --ext .jpg or .png")
        return
    samples = write_dataset(out, n, seed=seed, good_fraction=good_fraction, scan_noise=scan_noise, ext=ext)
    typer.echo(json.dumps({"out": str(out), "pairs": len(samples), "defects": sum(len(s.labels) for s in samples)}))


def data_check_cmd(
    data: Path = typer.Option(..., "--data", help="dataset directory (or its annotation folder / COCO json)"),
    fmt: str = typer.Option(..., "--format", help="deeppcb | yolo | voc | coco"),
    split: str | None = typer.Option(None, "--split", help="split / list name"),
    as_json: bool = typer.Option(False, "--json", help="print the whole check as JSON"),
    val: float = typer.Option(0.2, "--val", help="also try the stratified validation split train would make"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Before any training: class counts, box sizes, images without labels, duplicates, the importer's fix-ups and
    skipped files, and whether a validation split with every class in both parts can be made. Exit 1 when the
    data cannot be trained on as it is."""
    from vision.datasets import DatasetError, split_stratified
    from vision.datasets.check import check_dataset, format_text

    try:
        res = check_dataset(data, fmt, split)
    except (DatasetError, OSError) as e:
        _fail(str(e))
        return
    samples_ok = res["boxes"] > 0
    res["validation_split"] = None
    if val > 0 and samples_ok:
        from vision.datasets import load

        try:
            fit, held = split_stratified(load(data, fmt, split), val, seed)
            res["validation_split"] = {"val": val, "seed": seed, "train_images": len(fit), "val_images": len(held)}
        except ValueError as e:
            res["validation_split"] = {"error": str(e)}
            res["problems"].append(f"validation split --val {val}: {e}")
    if as_json:
        typer.echo(json.dumps(res, indent=2))
    else:
        typer.echo(format_text(res))
        vs = res["validation_split"]
        if vs and "error" not in vs:
            typer.echo(f"validation split (--val {val} --seed {seed}): {vs['train_images']} train / "
                       f"{vs['val_images']} val images, every class in both")
    fatal = not samples_ok or (res["validation_split"] or {}).get("error")
    if fatal:
        raise typer.Exit(code=1)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add vision's commands: ``train``, ``eval``, ``synth`` and ``data check`` to ``app``, ``vision`` and
    ``adapt`` to ``bench``."""
    data_app = typer.Typer(no_args_is_help=True, help="Inspect data sets before training.")
    data_app.command("check")(data_check_cmd)
    app.add_typer(data_app, name="data")
    app.command("synth")(synth_cmd)
    app.command("train")(train_cmd)
    app.command("eval")(eval_cmd)
    bench.command("vision")(bench_vision_cmd)
    bench.command("adapt")(bench_adapt_cmd)


def build_app() -> typer.Typer:
    """vision's commands on an app of their own (``python -m vision.cli``; tests drive it with CliRunner)."""
    app = typer.Typer(add_completion=False, no_args_is_help=True)
    bench = typer.Typer(no_args_is_help=True)
    register(app, bench)
    app.add_typer(bench, name="bench")
    return app


def main() -> None:
    build_app()()


if __name__ == "__main__":
    main()
