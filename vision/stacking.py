"""The model input spec: how a Frame or Sample becomes the 3-channel tensor a detector sees.

On DeepPCB-style data the defect is whatever differs from the golden template, so the network is fed
(test, template, |test - template|) as its three channels: the difference channel points straight at
the defect and the two others say which way it goes (copper missing -> open / mousebite / pin-hole,
copper added -> short / spur / spurious copper). Without a template the input degrades to
(test, test, 0), which a model trained on stacked input handles poorly; the spec records which mode a
model was trained in so the runtime can refuse or warn instead of silently mixing them.

Only numpy + OpenCV here: this module is imported by the edge runtime.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from vision.types import Frame, Image, Sample

#: Channel stacking modes.
#: "diff":  (test, template, |test - template|); frames without a template fall back to (test, test, 0).
#: "gray":  (test, test, test): a plain single-image model.
STACK_MODES: tuple[str, ...] = ("diff", "gray")
#: Letterbox padding value (ultralytics uses 114 too, so training and inference agree).
PAD_VALUE = 114

SPEC_FILE = "input_spec.json"


@dataclass(frozen=True, slots=True)
class InputSpec:
    """Everything the runtime must reproduce exactly to feed a trained model.

    Saved next to every model as ``input_spec.json``.
    """

    size: int  # square network input side, pixels (letterboxed)
    channels: tuple[str, str, str] = ("test", "template", "absdiff")
    stacking: str = "diff"
    class_names: tuple[str, ...] = ()
    # What happens when a frame has no golden template: stated so nobody has to read the code.
    no_template_fallback: str = "channels become (test, test, 0); accuracy of a diff-trained model drops"
    pad_value: int = PAD_VALUE
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stacking not in STACK_MODES:
            raise ValueError(f"unknown stacking mode {self.stacking!r}; expected one of {STACK_MODES}")
        if self.size <= 0 or self.size % 32:
            raise ValueError(f"input size must be a positive multiple of 32, got {self.size}")

    def to_json(self) -> str:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["class_names"] = list(self.class_names)
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        try:
            return cls(
                size=int(d["size"]),
                channels=tuple(d.get("channels", ("test", "template", "absdiff"))),
                stacking=str(d.get("stacking", "diff")),
                class_names=tuple(d.get("class_names", ())),
                no_template_fallback=str(d.get("no_template_fallback", "")),
                pad_value=int(d.get("pad_value", PAD_VALUE)),
                extra=dict(d.get("extra", {})),
            )
        except KeyError as e:
            raise ValueError(f"input spec is missing field {e}") from e

    def save(self, directory: Path) -> Path:
        path = Path(directory) / SPEC_FILE
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> InputSpec:
        path = Path(path)
        if path.is_dir():
            path = path / SPEC_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no input spec at {path}")
        return cls.from_dict(json.loads(path.read_text()))


def to_gray(image: Image) -> Image:
    """Grayscale uint8 (H, W) from grayscale or BGR input."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        code = cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        return np.asarray(cv2.cvtColor(image, code), dtype=np.uint8)
    raise ValueError(f"unsupported image shape {image.shape}")


def read_gray(path: Path) -> Image:
    """Read an image file as grayscale uint8, with a clear error when it cannot be read."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return np.asarray(img, dtype=np.uint8)


def stack(test: Image, template: Image | None, mode: str = "diff") -> tuple[Image, bool]:
    """Build the (H, W, 3) uint8 stacked image; returns it and whether the template was used.

    The template must already be aligned with the test image (DeepPCB and vision.synth guarantee
    it); a template of another size is resized to the test image's, which is only correct when both
    cover the same field of view.
    """
    if mode not in STACK_MODES:
        raise ValueError(f"unknown stacking mode {mode!r}; expected one of {STACK_MODES}")
    t = to_gray(test)
    if mode == "gray":
        return np.dstack([t, t, t]), False
    if template is None:
        return np.dstack([t, t, np.zeros_like(t)]), False
    g = to_gray(template)
    if g.shape != t.shape:
        g = np.asarray(cv2.resize(g, (t.shape[1], t.shape[0]), interpolation=cv2.INTER_AREA), dtype=np.uint8)
    return np.dstack([t, g, cv2.absdiff(t, g)]), True


def stack_frame(frame: Frame, mode: str = "diff") -> tuple[Image, bool]:
    return stack(frame.image, frame.template, mode)


def stack_sample(sample: Sample, mode: str = "diff") -> tuple[Image, bool]:
    test = read_gray(sample.image_path)
    template = read_gray(sample.template_path) if sample.template_path is not None else None
    return stack(test, template, mode)


@dataclass(frozen=True, slots=True)
class Letterbox:
    """How an image was fitted into the square network input, to map boxes back."""

    scale: float
    pad_x: float
    pad_y: float

    def to_original(self, xyxy: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Map (N, 4) network-space corner boxes back to original pixel coordinates."""
        out = xyxy.astype(np.float32).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale
        return out


def letterbox(image: Image, size: int, pad_value: int = PAD_VALUE) -> tuple[Image, Letterbox]:
    """Resize keeping aspect ratio and pad to (size, size), centred like ultralytics' LetterBox."""
    h, w = image.shape[:2]
    scale = min(size / h, size / w)
    nw, nh = round(w * scale), round(h * scale)
    # INTER_AREA keeps thin copper tracks when shrinking; INTER_LINEAR when enlarging.
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp) if (nw, nh) != (w, h) else image
    dw, dh = (size - nw) / 2, (size - nh) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    out = cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    return np.asarray(out, dtype=np.uint8), Letterbox(scale=scale, pad_x=float(left), pad_y=float(top))


def to_tensor(image: Image) -> npt.NDArray[np.float32]:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1], the layout ultralytics exports expect.

    Channel order is kept as stacked (ultralytics would flip BGR->RGB on a file it reads itself;
    the training cache is written so that its flip lands on exactly this order, see vision.train).
    """
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


def prepare(frame: Frame, spec: InputSpec) -> tuple[npt.NDArray[np.float32], Letterbox, bool]:
    """Frame -> network tensor per ``spec``; also returns the letterbox and whether a template was used."""
    stacked, used = stack_frame(frame, spec.stacking)
    boxed, lb = letterbox(stacked, spec.size, spec.pad_value)
    return to_tensor(boxed), lb, used
