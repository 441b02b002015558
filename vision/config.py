"""Camera configuration: source URI, detector spec, QA rules, fps limit; and the source factory.

Source URIs::

    synthetic://?defect_rate=0.3&seed=1[&count=100]     synthetic boards with truth (vision.synth)
    folder:///abs/path[?template_dir=/t&loop=1]         images in a folder (X_test/X_temp pairs)
    dataset:///abs/path?format=deeppcb[&split=trainval] replay a dataset with truth
    file:///abs/x.mp4  (or a plain path)                a video file
    rtsp://host/stream, http(s)://host/mjpeg            a network camera (reconnects forever)
    usb://0                                             a local camera by device index

The detector is a typed mapping, one kind per ``type`` (vision.detectors.factory), e.g.
``detector: {type: hybrid, model: pcb-synth-hybrid, tta: 1}``; the strings ``template``, ``hybrid:<model>`` and
``onnx:<model>`` are shorthand for the mapping without options. Several cameras run side by side, each with its
own source, detector and rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from vision.detectors.factory import DetectorConfig, TemplateDetectorConfig, expand_shorthand
from vision.qa import QARules
from vision.sources import (
    DatasetSource,
    FolderSource,
    ImageSource,
    SyntheticSource,
    VideoSource,
    _read_image,
    parse_uri,
)

SCHEMES = ("synthetic", "folder", "dataset", "file", "rtsp", "http", "https", "usb")


class CameraConfig(BaseModel):
    """One camera of a line."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    source: str
    detector: DetectorConfig = Field(default_factory=lambda: TemplateDetectorConfig())
    qa: QARules = Field(default_factory=QARules)
    fps_limit: float | None = Field(default=None, gt=0)
    #: Golden template image for video/usb/folder sources that do not carry their own.
    template: Path | None = None
    stall_timeout_s: float = Field(default=5.0, gt=0)

    @field_validator("source")
    @classmethod
    def _scheme(cls, v: str) -> str:
        scheme = v.split("://", 1)[0] if "://" in v else "file"
        if scheme not in SCHEMES:
            raise ValueError(f"source {v!r}: unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
        return v

    @field_validator("detector", mode="before")
    @classmethod
    def _detector(cls, v: Any) -> Any:
        # The one place a string is read: shorthand for a mapping without options (query strings refused).
        return expand_shorthand(v)


def load_cameras(path: Path) -> list[CameraConfig]:
    """The ``cameras:`` list of a line YAML file; errors name the file and the camera."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"line config not found: {path}")
    data: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    cams = data.get("cameras") if isinstance(data, dict) else None
    if not isinstance(cams, list):
        raise ValueError(f"{path}: expected a 'cameras:' list")
    out = []
    for i, c in enumerate(cams):
        try:
            out.append(CameraConfig.model_validate(c))
        except ValueError as exc:
            raise ValueError(f"{path}: cameras[{i}]: {exc}") from exc
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: camera names must be unique, got {names}")
    return out


def _flag(q: dict[str, str], key: str) -> bool:
    return q.get(key, "0").lower() in ("1", "true", "yes", "on")


def make_source(cfg: CameraConfig) -> ImageSource:
    """Build the ImageSource a CameraConfig describes. Bad URIs raise ValueError naming the camera."""
    uri = cfg.source
    scheme, rest, q = parse_uri(uri) if "://" in uri else ("file", uri, {})
    fps = cfg.fps_limit
    template = None
    if cfg.template is not None:
        template = _read_image(cfg.template)
        if template is None:
            raise ValueError(f"camera {cfg.name}: template image not readable: {cfg.template}")
    try:
        if scheme == "synthetic":
            count = int(q["count"]) if "count" in q else None
            return SyntheticSource(
                cfg.name,
                defect_rate=float(q.get("defect_rate", 0.3)),
                seed=int(q.get("seed", 0)),
                count=count,
                max_fps=fps,
            )
        if scheme == "folder":
            return FolderSource(
                Path(rest),
                cfg.name,
                template_dir=Path(q["template_dir"]) if "template_dir" in q else None,
                template=cfg.template,
                loop=_flag(q, "loop"),
                max_fps=fps,
            )
        if scheme == "dataset":
            from vision.datasets import load

            samples = load(Path(rest), q.get("format", "deeppcb"), q.get("split"))
            return DatasetSource(samples, cfg.name, loop=_flag(q, "loop"), max_fps=fps)
        if scheme == "file":
            return VideoSource(
                rest,
                cfg.name,
                live=_flag(q, "live"),
                template=template,
                max_fps=fps,
                stall_timeout_s=cfg.stall_timeout_s,
            )
        if scheme == "usb":
            return VideoSource(
                int(rest or "0"),
                cfg.name,
                live=True,
                template=template,
                max_fps=fps,
                stall_timeout_s=cfg.stall_timeout_s,
            )
        # rtsp / http(s): hand OpenCV the full URL, query and credentials included.
        return VideoSource(
            uri, cfg.name, live=True, template=template, max_fps=fps, stall_timeout_s=cfg.stall_timeout_s
        )
    except (KeyError, ValueError, FileNotFoundError) as exc:
        raise ValueError(f"camera {cfg.name}: bad source {uri!r}: {exc}") from exc
