"""QA rules: from a part's detections to one decision (pass / rework / reject), configured per line.

A rule triggers on a detection when the class matches (``*`` = any), the confidence is at least
``min_confidence`` and the box is at least ``min_area_px`` in area and ``min_size_px`` on its longer side.
The first rule (in order) that triggers decides that detection's action; a detection no rule triggers on
gets ``default_action`` (``pass``), except class ``unknown`` which gets ``unknown_action`` (default
``rework``: a difference nobody can name is sent to a person, not shipped). The part's decision is the
most severe action over its detections: reject > rework > pass. An action is a ``line_agent.contracts.Verdict``,
the verdict the inspection event carries (one definition for QA, the runtime, ingest, the API and the console).

YAML (a line file's ``qa:`` block, or the same keys at top level)::

    qa:
      default_action: pass
      unknown_action: rework
      rules:
        - {classes: [short, open], min_confidence: 0.5, action: reject}
        - {classes: ["*"], min_confidence: 0.6, min_area_px: 400, action: rework}

Classes come from the camera's model, not a fixed list: ``from_yaml(path, classes=detector.classes)`` (or
``rules.check_classes(detector.classes)`` once the detector is built) refuses a class the model cannot emit,
naming it, so a typo (``scratch`` for ``scratches``) fails at check-config rather than never triggering.
Without ``classes`` any non-empty name is accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from line_agent.contracts import Verdict
from vision.types import UNKNOWN_CLASS, Detection


class QARule(BaseModel):
    """One rule; see the module docstring."""

    model_config = ConfigDict(extra="forbid")

    classes: list[str] = Field(default_factory=lambda: ["*"])
    min_confidence: float = Field(default=0.5, ge=0.0, le=1.0)
    min_area_px: float = Field(default=0.0, ge=0.0)
    min_size_px: float = Field(default=0.0, ge=0.0)
    action: Verdict

    @field_validator("classes")
    @classmethod
    def _known(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if not v:
            raise ValueError("classes must not be empty (use ['*'] for any class)")
        if any(not isinstance(c, str) or not c.strip() for c in v):
            raise ValueError(f"class names must be non-empty strings, got {v}")
        model_classes = (info.context or {}).get("classes") if info.context else None
        if model_classes is not None:
            _check(v, model_classes)
        return v

    def triggers(self, d: Detection) -> bool:
        return (
            ("*" in self.classes or d.cls in self.classes)
            and d.confidence >= self.min_confidence
            and d.box.area >= self.min_area_px
            and max(d.box.width, d.box.height) >= self.min_size_px
        )


def _check(names: Sequence[str], model_classes: Sequence[str]) -> None:
    known = {*model_classes, UNKNOWN_CLASS, "*"}
    bad = [c for c in names if c not in known]
    if bad:
        raise ValueError(f"unknown class(es) {bad}; the model's classes are {sorted(known)}")


@dataclass(slots=True)
class QADecision:
    """The part's verdict (``action``) and, per triggering detection, its verdict and rule index (-1: default)."""

    action: Verdict
    reasons: list[tuple[Detection, Verdict, int]] = field(default_factory=list)


class QARules(BaseModel):
    """The rule set of one line/camera."""

    model_config = ConfigDict(extra="forbid")

    rules: list[QARule] = Field(default_factory=list)
    default_action: Verdict = Verdict.PASS
    unknown_action: Verdict = Verdict.REWORK

    def decide(self, detections: Sequence[Detection]) -> QADecision:
        out = QADecision(Verdict.PASS)
        for d in detections:
            idx, act = -1, (self.unknown_action if d.cls == UNKNOWN_CLASS else self.default_action)
            for i, r in enumerate(self.rules):
                if r.triggers(d):
                    idx, act = i, r.action
                    break
            if act != Verdict.PASS:
                out.reasons.append((d, act, idx))
            if act.severity > out.action.severity:
                out.action = act
        return out

    def check_classes(self, model_classes: Sequence[str]) -> None:
        """ValueError naming every rule class the model (``model_classes``, e.g. ``detector.classes``) cannot emit."""
        for i, r in enumerate(self.rules):
            try:
                _check(r.classes, model_classes)
            except ValueError as e:
                raise ValueError(f"qa rule #{i + 1}: {e}") from e

    @classmethod
    def from_mapping(cls, data: Any, where: str = "qa", classes: Sequence[str] | None = None) -> QARules:
        """From a mapping (``qa:`` block or top-level keys); ``classes``: the model's, checked against the rules."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping with 'rules', got {type(data).__name__}")
        block = data.get("qa", data)
        return cls.model_validate(block, context={"classes": tuple(classes)} if classes is not None else None)

    @classmethod
    def from_yaml(cls, path: Path, classes: Sequence[str] | None = None) -> QARules:
        """Read the ``qa:`` block (or top-level rules) of a YAML file; errors name the file. ``classes``: the
        camera's model's classes, checked against the rules."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"QA rules file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            return cls.from_mapping(data, str(path), classes)
        except (yaml.YAMLError, ValueError) as exc:
            raise ValueError(f"{path}: invalid QA rules: {exc}") from exc
