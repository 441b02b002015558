"""The per-line YAML: cameras, PLC and its tag map, MQTT topics, control rules.

Loaded once at start; an invalid file fails there with a message naming the field
(``cameras.0.detector: ...``), never later on the line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from line_agent.actions import ControlRules
from line_agent.meters import DEFAULT_SHIFTS, MetersConfig, ShiftConfig, TimeZone
from vision.config import CameraConfig

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # safe in MQTT topics and SQL values


class ConfigError(ValueError):
    """The line YAML is missing, unreadable or invalid; the message names the file and field."""


class PlcConfig(BaseModel):
    """How the line's PLC is reached: the driver (hardware.drivers' table) and its URL.

    ``lineguard run`` needs ``url``; the demo leaves it out and points it at the simulator it starts."""

    model_config = ConfigDict(extra="forbid")

    driver: Literal["modbus", "opcua", "sparkplug"] = "modbus"
    url: str | None = Field(
        default=None,
        description="modbus://host:port, opc.tcp://host:port[/path], or for sparkplug the broker and the "
                    "edge node's address (see docs/PLANT.md).",
    )
    tags: Path | None = Field(default=None, description="Tag map YAML; default: the simulator's map.")
    heartbeat_period_s: float = Field(default=0.2, gt=0, le=10)
    watchdog_s: float = Field(default=1.0, gt=0, le=60,
                              description="The PLC's heartbeat watchdog (the simulator's, in the demo).")

    @model_validator(mode="after")
    def _url_matches_driver(self) -> PlcConfig:
        if self.url is not None:
            from hardware.drivers import validate_plc_url

            self.url = validate_plc_url(self.driver, self.url)
        return self


class MqttTopics(BaseModel):
    """Where this line publishes. JSON convention: ``<prefix>/<site>/<line>/<cell>/<kind>``."""

    model_config = ConfigDict(extra="forbid")

    prefix: str = "lineguard"
    cell: str = "inspection"


class LineConfig(BaseModel):
    """One production line."""

    model_config = ConfigDict(extra="forbid")

    site: str = "plant1"
    line: str = "line1"
    cameras: list[CameraConfig] = Field(min_length=1)
    plc: PlcConfig = Field(default_factory=PlcConfig)
    mqtt: MqttTopics = Field(default_factory=MqttTopics)
    control: ControlRules = Field(default_factory=ControlRules)
    #: Keep one JPEG of every rejected frame (and every Nth passed one) for review and relabelling.
    save_frames: Literal["none", "rejects", "all"] = "rejects"
    #: With ``rejects``: also keep every Nth passed part (0 = none), so a missed defect can be found later.
    save_pass_every: int = Field(default=20, ge=0)
    #: Energy meters (line_agent/meters.py); None = the plant-wide default (LINEGUARD_METERS_FILE) or the contract.
    meters: MetersConfig | None = None
    #: The plant's time zone (IANA name): days and shifts of summaries and charts are local to it.
    timezone: TimeZone = "UTC"
    #: Shift calendar in local time (a shift belongs to the day it starts).
    shifts: tuple[ShiftConfig, ...] = DEFAULT_SHIFTS

    @field_validator("site", "line")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("use letters, digits, '_', '-' or '.' only")
        return v

    @model_validator(mode="after")
    def _unique_cameras(self) -> LineConfig:
        names = [c.name for c in self.cameras]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"camera names must be unique; repeated: {', '.join(dupes)}")
        return self


def _describe(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg']}")
    return f"{source}: " + "; ".join(parts)


def parse_line_config(data: Any, source: str = "<config>") -> LineConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    try:
        return LineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def load_line_config(path: Path) -> LineConfig:
    """Read and validate a line YAML file. Relative paths inside it are taken from its folder."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read line config {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    cfg = parse_line_config(data, str(path))
    base = Path(path).resolve().parent
    if cfg.plc.tags is not None and not cfg.plc.tags.is_absolute():
        cfg.plc.tags = base / cfg.plc.tags
    return cfg


def demo_line_config(index: int = 1, fps: float = 5.0, seed: int = 0) -> LineConfig:
    """The simulated line ``lineN`` that ``lineguard demo`` runs: synthetic boards, known truth."""
    return parse_line_config(
        {
            "site": "demo",
            "line": f"line{index}",
            "cameras": [
                {
                    "name": "cam1",
                    "source": f"synthetic://?defect_rate=0.3&seed={seed + index}",
                    "detector": "template",
                    "fps_limit": fps,
                    "qa": {"rules": [{"classes": ["*"], "min_confidence": 0.3, "action": "reject"}],
                           "unknown_action": "reject"},
                }
            ],
        },
        f"<demo line{index}>",
    )
