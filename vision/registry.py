"""A directory-based model registry: ``<registry>/<name>/<version>/``.

Each version directory holds everything needed to run, audit and reproduce a model:

    model.onnx        the edge model (onnxruntime)
    weights.pt        the PyTorch weights it was exported from (optional: omitted for shipped models)
    classes.txt       one class name per line, in output order
    input_spec.json   vision.stacking.InputSpec: size, channel stacking, class names
    metrics.json      held-out evaluation (vision.metrics) at training time
    data_hash         sha256 over the training samples (paths' contents and labels)
    train_command     the exact command line that produced it
    created           ISO-8601 UTC creation time
    hybrid.json       only for two-stage hybrid models (vision.detectors.hybrid): model.onnx is then the crop CNN

Versions are ``v1``, ``v2``, ... and ``latest`` resolves to the highest. No torch here: the edge
runtime reads the registry.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vision.stacking import SPEC_FILE, InputSpec
from vision.types import Sample

MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "weights.pt"
CLASSES_FILE = "classes.txt"
METRICS_FILE = "metrics.json"
HASH_FILE = "data_hash"
COMMAND_FILE = "train_command"
CREATED_FILE = "created"
REQUIRED_FILES: tuple[str, ...] = (MODEL_FILE, CLASSES_FILE, SPEC_FILE, HASH_FILE, COMMAND_FILE, CREATED_FILE)

_VERSION_RE = re.compile(r"^v(\d+)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RegistryError(LookupError):
    """A model or version is missing or incomplete; the message names the path."""


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One registered model version."""

    name: str
    version: str
    path: Path

    @property
    def onnx_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def weights_path(self) -> Path | None:
        p = self.path / WEIGHTS_FILE
        return p if p.is_file() else None

    def spec(self) -> InputSpec:
        return InputSpec.load(self.path / SPEC_FILE)

    def classes(self) -> tuple[str, ...]:
        return tuple(x for x in (self.path / CLASSES_FILE).read_text().splitlines() if x.strip())

    def metrics(self) -> dict[str, Any]:
        p = self.path / METRICS_FILE
        return json.loads(p.read_text()) if p.is_file() else {}

    def info(self) -> dict[str, Any]:
        def read(f: str) -> str:
            p = self.path / f
            return p.read_text().strip() if p.is_file() else ""

        return {
            "name": self.name,
            "version": self.version,
            "path": str(self.path),
            "created": read(CREATED_FILE),
            "data_hash": read(HASH_FILE),
            "train_command": read(COMMAND_FILE),
            "classes": list(self.classes()),
            "metrics": self.metrics(),
        }


def _version_number(v: str) -> int:
    m = _VERSION_RE.match(v)
    if not m:
        raise RegistryError(f"bad version {v!r}: expected v<N> or 'latest'")
    return int(m.group(1))


def list_models(registry: Path) -> list[str]:
    registry = Path(registry)
    if not registry.is_dir():
        return []
    return sorted(p.name for p in registry.iterdir() if p.is_dir() and list_versions(registry, p.name))


def list_versions(registry: Path, name: str) -> list[str]:
    """Versions of ``name`` that are complete (have every required file), oldest first."""
    d = Path(registry) / name
    if not d.is_dir():
        return []
    out = [
        p.name
        for p in d.iterdir()
        if p.is_dir() and _VERSION_RE.match(p.name) and all((p / f).is_file() for f in REQUIRED_FILES)
    ]
    return sorted(out, key=_version_number)


def resolve(registry: Path, name: str, version: str = "latest") -> ModelEntry:
    """Find ``name``/``version`` (``latest`` = highest complete version)."""
    registry = Path(registry)
    versions = list_versions(registry, name)
    if not versions:
        known = ", ".join(list_models(registry)) or "none"
        raise RegistryError(f"no model {name!r} in registry {registry} (models there: {known})")
    if version == "latest":
        version = versions[-1]
    elif version not in versions:
        raise RegistryError(f"model {name!r} has no complete version {version!r} (have: {', '.join(versions)})")
    return ModelEntry(name=name, version=version, path=registry / name / version)


def parse_ref(ref: str) -> tuple[str, str]:
    """``name``, ``name@v3`` or ``name:latest`` -> (name, version)."""
    for sep in ("@", ":"):
        if sep in ref:
            name, version = ref.split(sep, 1)
            return name, version or "latest"
    return ref, "latest"


def hash_samples(samples: Iterable[Sample]) -> str:
    """sha256 over every sample's image bytes, template bytes and labels, in order.

    Identifies the training data independently of where it lives on disk.
    """
    h = hashlib.sha256()
    for s in samples:
        for p in (s.image_path, s.template_path):
            if p is None:
                h.update(b"<none>")
                continue
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        for lab in s.labels:
            b = lab.box
            h.update(f"{lab.cls}:{b.x1:.2f},{b.y1:.2f},{b.x2:.2f},{b.y2:.2f};".encode())
        h.update(b"|")
    return h.hexdigest()


def publish(
    registry: Path,
    name: str,
    *,
    onnx_path: Path,
    spec: InputSpec,
    data_hash: str,
    train_command: str,
    metrics: dict[str, Any] | None = None,
    weights_path: Path | None = None,
    extra_files: Iterable[Path] = (),
) -> ModelEntry:
    """Write a new version ``v<N+1>`` of ``name`` and return it.

    Files are written into a temporary directory that is renamed into place at the end, so a crash
    half-way never leaves a version that ``latest`` would pick up.
    """
    if not _NAME_RE.match(name):
        raise RegistryError(f"bad model name {name!r}: letters, digits, '.', '_' and '-' only")
    if not Path(onnx_path).is_file():
        raise RegistryError(f"ONNX model not found: {onnx_path}")
    base = Path(registry) / name
    base.mkdir(parents=True, exist_ok=True)
    existing = [_version_number(p.name) for p in base.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)]
    version = f"v{max(existing, default=0) + 1}"
    tmp = base / f".{version}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    shutil.copy2(onnx_path, tmp / MODEL_FILE)
    if weights_path is not None:
        shutil.copy2(weights_path, tmp / WEIGHTS_FILE)
    for f in extra_files:  # kind-specific metadata, e.g. hybrid.json for a two-stage model
        shutil.copy2(f, tmp / Path(f).name)
    (tmp / CLASSES_FILE).write_text("".join(f"{c}\n" for c in spec.class_names))
    spec.save(tmp)
    (tmp / METRICS_FILE).write_text(json.dumps(metrics or {}, indent=2, sort_keys=True) + "\n")
    (tmp / HASH_FILE).write_text(data_hash + "\n")
    (tmp / COMMAND_FILE).write_text(train_command + "\n")
    (tmp / CREATED_FILE).write_text(datetime.now(UTC).isoformat(timespec="seconds") + "\n")
    tmp.rename(base / version)
    return ModelEntry(name=name, version=version, path=base / version)
