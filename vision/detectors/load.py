"""Model references -> model directories, and the loader the detector configs call (vision.detectors.factory).

Construct detectors through ``vision.detectors.factory.build_detector``; ``load_model`` is its private helper.

A reference is a model directory (a registry version dir), an ``.onnx`` file inside one, or a registry
name ``name[@version]`` looked up in ``registry`` first and then in the shipped models. The directory says
what it holds: ``hybrid.json`` beside ``model.onnx`` is a two-stage hybrid (template proposals + crop CNN),
otherwise it is a whole-frame YOLO export. No torch here: this is the edge path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vision.detectors.base import Detector
from vision.registry import parse_ref, resolve

#: Shipped default models live here, in registry layout (<name>/<version>/).
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


def resolve_model_dir(ref: str | Path, registry: Path | None = None) -> Path:
    """The version directory ``ref`` names; LookupError listing where it was looked for."""
    p = Path(ref)
    if p.exists():  # a path is taken as given; a wrong one fails where its files are read, naming them
        return p.parent if p.is_file() and p.suffix == ".onnx" else p
    name, version = parse_ref(str(ref))
    errors = []
    for reg in [r for r in (registry, MODELS_DIR) if r is not None]:
        try:
            return resolve(reg, name, version).path
        except LookupError as e:
            errors.append(str(e))
    raise LookupError(f"model {str(ref)!r} is neither a path nor a registry entry: " + "; ".join(errors))


def is_hybrid(model_dir: Path) -> bool:
    from vision.detectors.hybrid import META_FILE

    return (Path(model_dir) / META_FILE).is_file()


def load_model(ref: str | Path, registry: Path | None = None, *, hybrid: bool | None = None,
               conf: float | None = None, threads: int | None = None, **kwargs: Any) -> Detector:
    """A HybridDetector or an OnnxDetector for ``ref``, as its directory says (``hybrid`` True/False insists on a
    kind, so a directory missing its files fails with the right message). ``conf`` and ``threads``: None keeps
    the detector's own default."""
    d = resolve_model_dir(ref, registry)
    if threads is not None:
        kwargs["threads"] = threads
    if is_hybrid(d) if hybrid is None else hybrid:
        from vision.detectors.hybrid import HybridDetector

        if conf is not None:
            kwargs["min_confidence"] = conf
        return HybridDetector(d, **kwargs)
    from vision.detectors.onnx import OnnxDetector

    if conf is not None:
        kwargs["conf"] = conf
    return OnnxDetector.from_dir(d, **kwargs)


def operating_conf(model_dir: Path) -> float:
    """The confidence a model is meant to run at when nobody says otherwise: 0.5 for a hybrid (its class
    probability beats background and all other classes together), a centernet model's OPERATING_CONF (the
    point its training metrics report), 0.25 for a YOLO export (ultralytics' own)."""
    from vision.detectors.centernet import OPERATING_CONF, is_centernet

    if is_hybrid(model_dir):
        return 0.5
    return OPERATING_CONF if is_centernet(model_dir) else 0.25
