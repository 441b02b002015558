"""The one way to construct a detector: a typed config per detector kind, and ``build_detector``.

Modelled on Frigate's detector plugins: each kind declares a ``type`` key and its own options; a camera's
``detector:`` is the discriminated union ``DetectorConfig``, so a typo in a type or an option fails when the
line's YAML is validated (``lineguard check-config``), naming the field, not later on the line.

======================  ====================================================================================
``type: template``      golden-template difference, no model (vision.detectors.template)
``type: hybrid``        template proposals + crop CNN (vision.detectors.hybrid); ``model`` = registry name
                        ``name[@version]`` or a model directory
``type: onnx``          whole-frame YOLO export run by onnxruntime (vision.detectors.onnx)
``type: centernet``     whole-frame, template-free: EfficientNet-Lite0 + CenterNet head exported to ONNX
                        (vision.detectors.centernet; ``lineguard train --arch centernet``)
``type: yolo``          the torch (ultralytics) model, training-side checks only; torch is imported only when
                        one is built, so the edge never pulls it in
======================  ====================================================================================

A registry name is looked up in ``registry`` first, then in the shipped models (vision/models). Defaults are
the detectors' own constructor defaults (tests/vision/test_detector_factory.py checks they stay equal).

A YAML string is accepted as shorthand only (``expand_shorthand``): ``template``, ``hybrid:<model>``,
``onnx:<model>``. Options go in the mapping form: ``{type: hybrid, model: pcb-synth-hybrid, tta: 1}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from vision.detectors.base import Detector

#: The ``type`` keys, in the order error messages list them.
DETECTOR_TYPES: tuple[str, ...] = ("template", "hybrid", "onnx", "centernet", "yolo")

#: Types a ``<type>:<model>`` YAML string may name; yolo is not among them (torch has no place on a line).
SHORTHAND_TYPES: tuple[str, ...] = ("hybrid", "onnx", "centernet")

#: Old query-string keys of ``hybrid:<model>?...`` -> the mapping key that replaced each (for the error hint).
_OLD_QUERY_KEYS = {"tta": "tta", "settled": "settled", "look": "second_look"}


class _DetectorConfigBase(BaseModel):
    # extra="forbid": a misspelt option (``second_lok``) is an error naming it, never silently ignored.
    model_config = ConfigDict(extra="forbid")

    def build(self, registry: Path | None = None) -> Detector:
        raise NotImplementedError

    def __str__(self) -> str:
        # Short form for logs and readiness messages: ``hybrid:pcb-synth-hybrid``, ``template``.
        model = getattr(self, "model", None)
        return f"{getattr(self, 'type', '?')}:{model}" if model else str(getattr(self, "type", "?"))


class TemplateDetectorConfig(_DetectorConfigBase):
    """Golden-template difference (TemplateDiffDetector); its knobs, its defaults."""

    type: Literal["template"] = "template"
    #: Copper darker than the substrate (DeepPCB scans); False for the inverse.
    copper_dark: bool = True
    threshold: int = Field(default=127, ge=0, le=255)
    min_area: int = Field(default=6, ge=0)
    max_area: int = Field(default=20_000, ge=1)
    group_px: int = Field(default=3, ge=0)
    align: bool = True
    max_shift: float = Field(default=20.0, ge=0)
    align_trigger: float = Field(default=0.01, ge=0, le=1)
    min_confidence: float = Field(default=0.0, ge=0, le=1)

    def build(self, registry: Path | None = None) -> Detector:
        from vision.detectors.template import TemplateDiffDetector

        return TemplateDiffDetector(**self.model_dump(exclude={"type"}))


class HybridDetectorConfig(_DetectorConfigBase):
    """Two-stage hybrid (HybridDetector): template-difference proposals re-scored by a crop CNN."""

    type: Literal["hybrid"] = "hybrid"
    #: Registry name ``name[@version]`` (``registry``, then vision/models) or a model directory.
    model: str = Field(min_length=1)
    #: Flipped views averaged per crop: 1 fastest, 4 most accurate.
    tta: int = Field(default=4, ge=1, le=4)
    #: Flipped views only for proposals the plain view is less sure of than this; 1 = every proposal.
    settled: float = Field(default=0.95, gt=0, le=1)
    #: A second crop around each refined box of a likely defect; off is faster, boxes less accurate.
    second_look: bool = True
    min_confidence: float = Field(default=0.0, ge=0, le=1)
    threads: int = Field(default=1, ge=1)
    #: Template differences no model detection explains reported as class ``unknown`` (off for benchmarks).
    unknown_pass: bool = True

    def build(self, registry: Path | None = None) -> Detector:
        from vision.detectors.load import is_hybrid, load_model, resolve_model_dir
        from vision.registry import MODEL_FILE

        d = resolve_model_dir(self.model, registry)
        if not is_hybrid(d) and (d / MODEL_FILE).is_file():
            raise ValueError(
                f"model {self.model!r} ({d}) is a whole-frame YOLO export, not a hybrid model (no hybrid.json): "
                "use type: onnx"
            )
        return load_model(
            d, registry, hybrid=True, conf=self.min_confidence, threads=self.threads, tta=self.tta,
            tta_settled=self.settled, second_look=self.second_look, unknown_pass=self.unknown_pass,
        )


class OnnxDetectorConfig(_DetectorConfigBase):
    """A whole-frame YOLO model exported to ONNX (OnnxDetector), the edge path without torch."""

    type: Literal["onnx"] = "onnx"
    model: str = Field(min_length=1)
    conf: float = Field(default=0.25, ge=0, le=1)
    iou: float = Field(default=0.5, gt=0, le=1)
    threads: int = Field(default=2, ge=1)
    max_det: int = Field(default=300, ge=1)
    unknown_pass: bool = True

    def build(self, registry: Path | None = None) -> Detector:
        from vision.detectors.centernet import META_FILE as CENTERNET_META
        from vision.detectors.centernet import is_centernet
        from vision.detectors.load import is_hybrid, load_model, resolve_model_dir

        d = resolve_model_dir(self.model, registry)
        if is_hybrid(d):
            # Its model.onnx scores crops, not frames: run as a YOLO export it would fail or find nonsense.
            raise ValueError(f"model {self.model!r} ({d}) is a hybrid model (hybrid.json): use type: hybrid")
        if is_centernet(d):
            raise ValueError(f"model {self.model!r} ({d}) is a centernet model ({CENTERNET_META}): use type: centernet")
        return load_model(
            d, registry, hybrid=False, conf=self.conf, threads=self.threads, iou=self.iou, max_det=self.max_det,
            unknown_pass=self.unknown_pass,
        )


class CenterNetDetectorConfig(_DetectorConfigBase):
    """A template-free whole-frame model (CenterNetDetector: EfficientNet-Lite0 + CenterNet head, ONNX)."""

    type: Literal["centernet"] = "centernet"
    #: Registry name ``name[@version]`` (``registry``, then vision/models) or a model directory.
    model: str = Field(min_length=1)
    #: Minimum centre-peak heat reported (the detection's confidence); centernet.OPERATING_CONF.
    conf: float = Field(default=0.3, ge=0, le=1)
    #: Class-wise NMS between neighbouring peaks of one object.
    iou: float = Field(default=0.5, gt=0, le=1)
    threads: int = Field(default=2, ge=1)
    max_det: int = Field(default=100, ge=1)

    def build(self, registry: Path | None = None) -> Detector:
        from vision.detectors.centernet import META_FILE, CenterNetDetector, is_centernet
        from vision.detectors.load import is_hybrid, resolve_model_dir
        from vision.registry import parse_ref

        d = resolve_model_dir(self.model, registry)
        if not is_centernet(d):
            kind = "a hybrid model: use type: hybrid" if is_hybrid(d) else "a YOLO export: use type: onnx"
            raise ValueError(f"model {self.model!r} ({d}) has no {META_FILE}; it is {kind}")
        p = Path(self.model)
        label = f"{d.parent.name}-{d.name}" if p.exists() else "-".join([parse_ref(self.model)[0], d.name])
        return CenterNetDetector(d, name=f"centernet:{label}", **self.model_dump(exclude={"type", "model"}))


class YoloDetectorConfig(_DetectorConfigBase):
    """The PyTorch (ultralytics) model (YoloDetector): training-side comparisons, never the edge."""

    type: Literal["yolo"] = "yolo"
    #: A registry version dir holding weights.pt, a ``.pt`` file, or ``name[@version]`` in ``registry``.
    model: str = Field(min_length=1)
    conf: float = Field(default=0.25, ge=0, le=1)
    iou: float = Field(default=0.5, gt=0, le=1)
    threads: int = Field(default=2, ge=1)
    max_det: int = Field(default=300, ge=1)

    def build(self, registry: Path | None = None) -> Detector:
        # Imported here, not at the top: vision.detectors.yolo pulls in torch when it builds a model.
        from vision.detectors.yolo import YoloDetector

        return YoloDetector.load(self.model, registry=registry, **self.model_dump(exclude={"type", "model"}))


DetectorConfig = Annotated[
    TemplateDetectorConfig | HybridDetectorConfig | OnnxDetectorConfig | CenterNetDetectorConfig | YoloDetectorConfig,
    Field(discriminator="type"),
]

_ADAPTER: TypeAdapter[DetectorConfig] = TypeAdapter(DetectorConfig)


def _mapping_hint(kind: str, model: str, query: str) -> str:
    parts = [f"type: {kind or 'hybrid'}", f"model: {model or '<model>'}"]
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        new = _OLD_QUERY_KEYS.get(key, key)
        if new == "second_look":
            value = "false" if value == "0" else "true"
        parts.append(f"{new}: {value}")
    return "{" + ", ".join(parts) + "}"


def expand_shorthand(value: Any) -> Any:
    """A YAML string -> the mapping it stands for; anything else is returned unchanged (validated later).

    ``template`` -> ``{type: template}``; ``hybrid:NAME`` / ``onnx:NAME`` -> ``{type, model: NAME}``. A string
    with ``?options`` is refused: options are typed fields of the mapping form now, and the message spells out
    the mapping that means the same. A mapping without ``type`` is refused here too, with the types listed."""
    if isinstance(value, Mapping) and "type" not in value:
        # pydantic's own message here ("Unable to extract tag using discriminator") names no remedy.
        raise ValueError(f"detector {dict(value)!r}: needs a 'type:', one of {', '.join(DETECTOR_TYPES)}")
    if not isinstance(value, str):
        return value
    s = value.strip()
    if "?" in s:
        base, _, query = s.partition("?")
        kind, _, model = base.partition(":")
        raise ValueError(
            f"detector {value!r}: options in a query string are not accepted; write the mapping form, "
            f"detector: {_mapping_hint(kind, model, query)}"
        )
    if s == "template":
        return {"type": "template"}
    kind, sep, model = s.partition(":")
    if sep and kind in SHORTHAND_TYPES:
        if not model:
            raise ValueError(f"detector {value!r}: names no model; expected '{kind}:<registry name or path>'")
        return {"type": kind, "model": model}
    if s in DETECTOR_TYPES and s != "template":
        raise ValueError(f"detector {value!r}: needs a model, e.g. {{type: {s}, model: <registry name or path>}}")
    raise ValueError(
        f"detector {value!r}: expected 'template', 'hybrid:<model>', 'onnx:<model>' or a mapping "
        f"{{type: <{' | '.join(DETECTOR_TYPES)}>, ...options}}"
    )


def parse_detector(value: Any) -> DetectorConfig:
    """A DetectorConfig from a shorthand string, a mapping (``{type: ..., ...}``) or a config already built."""
    return _ADAPTER.validate_python(expand_shorthand(value))


def build_detector(cfg: DetectorConfig, registry: Path | None = None) -> Detector:
    """The detector ``cfg`` describes; registry names are looked up in ``registry``, then vision/models."""
    return cfg.build(registry)


def check_detector(cfg: DetectorConfig, registry: Path | None = None) -> str:
    """Load ``cfg``'s model (as the line will) and return the detector's name.

    LookupError when the model is not found (the message names it and the registries searched), ValueError
    when it is found but cannot be run as configured (wrong kind, unreadable files, missing dependency)."""
    try:
        return build_detector(cfg, registry).name
    except LookupError as e:
        raise LookupError(f"detector {cfg}: {e}") from e
    except FileNotFoundError as e:
        raise LookupError(f"detector {cfg}: {e}") from e
    except (ValueError, OSError, RuntimeError, ImportError) as e:
        raise ValueError(f"detector {cfg}: {e}") from e


def model_detector_config(
    ref: str | Path,
    registry: Path | None = None,
    *,
    conf: float | None = None,
    threads: int | None = None,
    unknown_pass: bool = True,
    tta: int | None = None,
    settled: float | None = None,
    second_look: bool | None = None,
) -> HybridDetectorConfig | OnnxDetectorConfig | CenterNetDetectorConfig:
    """For CLIs that take ``--model`` of any kind: the config its directory calls for (hybrid.json -> hybrid,
    centernet.json -> centernet, else a YOLO export). ``conf`` is min_confidence for a hybrid; None leaves a
    default. The hybrid-only options given for another kind are a ValueError naming them."""
    from vision.detectors.centernet import is_centernet
    from vision.detectors.load import is_hybrid, resolve_model_dir

    d = resolve_model_dir(ref, registry)
    hybrid_only = [k for k, v in (("tta", tta), ("settled", settled), ("second_look", second_look)) if v is not None]
    # Options left None are not passed, so the config keeps its (the detector's) default; model_validate, not
    # the constructor, so a bad value is the same ValidationError naming the field as in a line's YAML.
    given = {"threads": threads, "unknown_pass": unknown_pass, "tta": tta, "settled": settled,
             "second_look": second_look}
    opts: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if is_hybrid(d):
        if conf is not None:
            opts["min_confidence"] = conf
        return HybridDetectorConfig.model_validate({"model": str(ref), **opts})
    if is_centernet(d):
        if hybrid_only:
            raise ValueError(f"model {str(ref)!r} is a centernet model; {', '.join(hybrid_only)} apply to hybrid "
                             "models only")
        opts.pop("unknown_pass", None)  # template-free: there is no unknown pass
        if conf is not None:
            opts["conf"] = conf
        return CenterNetDetectorConfig.model_validate({"model": str(ref), **opts})
    if hybrid_only:
        raise ValueError(f"model {str(ref)!r} is a YOLO export; {', '.join(hybrid_only)} apply to hybrid models only")
    if conf is not None:
        opts["conf"] = conf
    return OnnxDetectorConfig.model_validate({"model": str(ref), **opts})
