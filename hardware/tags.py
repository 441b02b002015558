"""Typed tag map for one production line: which PLC signal lives where, in what type and units.

The tag map is the single place where writes are checked (allow-list, direction, range). Every driver
calls `TagMap.plan_write` before it touches the wire, so a refused write never reaches a PLC whatever
protocol carries it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_TAGS_PATH = Path(__file__).with_name("default_tags.yaml")

DataTypeName = Literal["bool", "int16", "uint16", "int32", "float32"]
# Raw (on-the-wire) limits per data type; float32 is limited by IEEE single precision.
_RAW_LIMITS: dict[str, tuple[float, float]] = {
    "bool": (0, 1),
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "float32": (-3.4028234e38, 3.4028234e38),
}
# Number of 16-bit Modbus registers each type occupies.
REGISTER_COUNT: dict[str, int] = {"bool": 1, "int16": 1, "uint16": 1, "int32": 2, "float32": 2}


class TagMapError(ValueError):
    """The tag map file or data is invalid; the message names the offending field."""


class WriteRefused(Exception):
    """A write was refused before it reached the PLC. `reason` says why; `tag` and `value` what was asked."""

    def __init__(self, reason: str, *, tag: str, value: object) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tag = tag
        self.value = value


class Direction(StrEnum):
    READ = "read"
    WRITE = "write"
    READ_WRITE = "read_write"


class RegisterKind(StrEnum):
    HOLDING = "holding"
    COIL = "coil"
    DISCRETE = "discrete"
    INPUT = "input"


class _Strict(BaseModel):
    # Unknown keys are almost always typos in a hand-written YAML file: reject them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModbusAddress(_Strict):
    kind: RegisterKind
    offset: int = Field(ge=0, le=65535)


class OpcUaAddress(_Strict):
    node_id: str = Field(min_length=1)


class MqttAddress(_Strict):
    metric: str = Field(min_length=1)


class Tag(_Strict):
    """One signal. Engineering value = raw * scale + offset."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")
    type: DataTypeName
    direction: Direction
    modbus: ModbusAddress | None = None
    opcua: OpcUaAddress | None = None
    mqtt: MqttAddress | None = None
    scale: float = 1.0
    offset: float = 0.0
    min: float | None = None
    max: float | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> Tag:
        if self.modbus is None and self.opcua is None and self.mqtt is None:
            raise ValueError("needs at least one address (modbus, opcua or mqtt)")
        if self.scale == 0 or not math.isfinite(self.scale):
            raise ValueError("scale must be a finite non-zero number")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.modbus is not None:
            kind = self.modbus.kind
            if kind in (RegisterKind.COIL, RegisterKind.DISCRETE) and self.type != "bool":
                raise ValueError(f"modbus {kind.value} can only hold type bool, not {self.type}")
            if kind in (RegisterKind.DISCRETE, RegisterKind.INPUT) and self.direction != Direction.READ:
                raise ValueError(f"modbus {kind.value} is read-only on the wire; direction must be read")
        return self

    @property
    def writable(self) -> bool:
        return self.direction in (Direction.WRITE, Direction.READ_WRITE)

    def to_engineering(self, raw: float | int | bool) -> float | int | bool:
        """Raw wire value -> engineering units (bools pass through unscaled)."""
        if self.type == "bool":
            return bool(raw)
        if self.scale == 1.0 and self.offset == 0.0 and self.type != "float32":
            return int(raw)
        return float(raw) * self.scale + self.offset

    def to_raw(self, value: float | int | bool) -> float | int | bool:
        """Engineering value -> raw wire value, without range checks (see TagMap.plan_write)."""
        if self.type == "bool":
            return bool(value)
        raw = (float(value) - self.offset) / self.scale
        if self.type == "float32":
            return raw
        return round(raw)


class TagMapModel(_Strict):
    line: str = Field(min_length=1)
    signals: list[Tag] = Field(min_length=1)
    write_allow: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> TagMapModel:
        seen: set[str] = set()
        for tag in self.signals:
            if tag.name in seen:
                raise ValueError(f"duplicate signal name {tag.name!r}")
            seen.add(tag.name)
        for name in self.write_allow:
            if name not in seen:
                raise ValueError(f"write_allow names unknown signal {name!r}")
        used: dict[tuple[str, int], str] = {}
        for tag in self.signals:
            if tag.modbus is None:
                continue
            for i in range(REGISTER_COUNT[tag.type]):
                key = (tag.modbus.kind.value, tag.modbus.offset + i)
                if key in used:
                    raise ValueError(f"signal {tag.name!r} overlaps {used[key]!r} at modbus {key[0]} {key[1]}")
                used[key] = tag.name
        return self


@dataclass(frozen=True, slots=True)
class WritePlan:
    """A checked write: the tag, the engineering value asked for and the raw value to put on the wire."""

    tag: Tag
    value: float | int | bool
    raw: float | int | bool


@dataclass(slots=True)
class AuditRecord:
    """One control action as the caller can store it (the lead keeps these in PostgreSQL)."""

    action: str  # e.g. "write", "reject_part", "start"
    outcome: Literal["ok", "refused", "error"]
    line: str
    tag: str | None = None
    value: object = None
    raw: object = None
    reason: str = ""
    part_id: str | None = None
    ts: float = field(default_factory=time.time)
    latency_ms: float | None = None
    #: Who asked: a person (``user:<name>``) through the API, or the runtime with the rule that fired.
    actor: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor,
            "ts": self.ts,
            "line": self.line,
            "action": self.action,
            "outcome": self.outcome,
            "tag": self.tag,
            "value": self.value,
            "raw": self.raw,
            "reason": self.reason,
            "part_id": self.part_id,
            "latency_ms": self.latency_ms,
        }


def _format_validation_error(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc or '<root>'}: {err['msg']}")
    return f"invalid tag map {source}: " + "; ".join(parts)


class TagMap:
    """A validated tag map with lookups and the shared write check."""

    def __init__(self, model: TagMapModel) -> None:
        self.model = model
        self.line = model.line
        self._tags = {t.name: t for t in model.signals}
        self._allow = frozenset(model.write_allow)

    @classmethod
    def from_dict(cls, data: object, source: str = "<dict>") -> TagMap:
        if not isinstance(data, dict):
            raise TagMapError(f"invalid tag map {source}: top level must be a mapping, got {type(data).__name__}")
        try:
            return cls(TagMapModel.model_validate(data))
        except ValidationError as exc:
            raise TagMapError(_format_validation_error(exc, source)) from None

    @classmethod
    def from_yaml(cls, text: str, source: str = "<yaml>") -> TagMap:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TagMapError(f"invalid tag map {source}: not valid YAML: {exc}") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path | None = None) -> TagMap:
        """Load a tag map file; None loads the default map for the simulated PLC."""
        p = Path(path) if path is not None else DEFAULT_TAGS_PATH
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise TagMapError(f"cannot read tag map {p}: {exc}") from None
        return cls.from_yaml(text, str(p))

    def __contains__(self, name: object) -> bool:
        return name in self._tags

    def __iter__(self) -> Iterator[Tag]:
        return iter(self._tags.values())

    def __len__(self) -> int:
        return len(self._tags)

    @property
    def names(self) -> list[str]:
        return list(self._tags)

    @property
    def write_allow(self) -> frozenset[str]:
        return self._allow

    def get(self, name: str) -> Tag:
        try:
            return self._tags[name]
        except KeyError:
            raise KeyError(f"unknown tag {name!r} (line {self.line})") from None

    def plan_write(self, name: str, value: object) -> WritePlan:
        """Check a write against the allow-list, direction, type and range; return the raw value to send.

        Raises WriteRefused with a reason a person can act on. This is the only write check: drivers call it.
        """
        tag = self._tags.get(name)
        if tag is None:
            raise WriteRefused(f"unknown tag {name!r}", tag=name, value=value)
        if name not in self._allow:
            raise WriteRefused(f"tag {name!r} is not in the write allow-list", tag=name, value=value)
        if not tag.writable:
            raise WriteRefused(f"tag {name!r} is read-only", tag=name, value=value)
        if tag.type == "bool":
            if not isinstance(value, bool | int) or (isinstance(value, int) and value not in (0, 1)):
                raise WriteRefused(f"tag {name!r} is bool; got {value!r}", tag=name, value=value)
            v: float | int | bool = bool(value)
        else:
            # bool is an int subclass; a True written to a speed register is a caller bug.
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise WriteRefused(f"tag {name!r} needs a number; got {value!r}", tag=name, value=value)
            if not math.isfinite(float(value)):
                raise WriteRefused(f"tag {name!r}: value {value!r} is not finite", tag=name, value=value)
            v = value
            if tag.min is not None and v < tag.min:
                raise WriteRefused(f"tag {name!r}: value {v} is below the minimum {tag.min}", tag=name, value=value)
            if tag.max is not None and v > tag.max:
                raise WriteRefused(f"tag {name!r}: value {v} is above the maximum {tag.max}", tag=name, value=value)
        raw = tag.to_raw(v)
        lo, hi = _RAW_LIMITS[tag.type]
        if not lo <= float(raw) <= hi:
            raise WriteRefused(
                f"tag {name!r}: value {v} gives raw {raw}, outside {tag.type} [{lo}, {hi}]",
                tag=name,
                value=value,
            )
        return WritePlan(tag=tag, value=v, raw=raw)
