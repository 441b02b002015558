"""Typed facts: what the analysis tools return and the only things a summary may state.

A ``Fact`` is one number with its unit and the names (machines, fault codes, defect classes) it is
about. Verification checks every number and name in generated prose against a list of facts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

# Units a fact may carry. Durations are seconds, energy kWh, shares percent (0..100).
UNITS = ("count", "s", "kWh", "kWh/part", "%", "z", "x", "kW", "h")


@dataclass(frozen=True)
class Fact:
    id: str  # stable, e.g. "faults.count.M2.TWF"
    tool: str
    kind: str  # e.g. fault_count, downtime, energy_total, defect_rate, anomaly, waste_idle, cause
    value: float
    unit: str
    names: tuple[str, ...] = ()
    label: str = ""  # short English description for prompts and logs
    key: bool = False  # belongs in any summary of this window
    at: str | None = None  # ISO time when the fact is about one moment (an anomaly, a burst)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["names"] = list(self.names)
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> Fact:
        return Fact(
            id=str(d["id"]), tool=str(d.get("tool", "")), kind=str(d.get("kind", "")),
            value=float(d["value"]), unit=str(d.get("unit", "")), names=tuple(d.get("names") or ()),
            label=str(d.get("label", "")), key=bool(d.get("key", False)), at=d.get("at"),
            extra=dict(d.get("extra") or {}),
        )


@dataclass(frozen=True)
class Window:
    line: str
    start: datetime
    end: datetime

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600.0

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "start": self.start.isoformat(), "end": self.end.isoformat(),
                "hours": round(self.hours, 3)}


@dataclass
class ToolResult:
    """One tool's answer: its facts plus the exact window it queried."""

    tool: str
    window: Window
    facts: list[Fact] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. "no telemetry in window"

    def to_json(self) -> dict[str, Any]:
        return {"tool": self.tool, "window": self.window.to_json(),
                "facts": [f.to_json() for f in self.facts], "notes": list(self.notes)}


def fmt_value(value: float, unit: str, lang: str = "en") -> str:
    """How the template narrator and the prompts write a fact's number (verification accepts it)."""
    zh = lang == "zh"
    if unit == "count":
        return f"{round(value):d}"
    if unit == "s":
        if abs(value) >= 3600:
            return f"{value / 3600:.1f} 小时" if zh else f"{value / 3600:.1f} h"
        if abs(value) >= 60:
            return f"{value / 60:.1f} 分钟" if zh else f"{value / 60:.1f} min"
        return f"{value:.0f} 秒" if zh else f"{value:.0f} s"
    if unit == "kWh":
        return f"{value:.2f} kWh" if abs(value) < 10 else f"{value:.1f} kWh"
    if unit == "kWh/part":
        return f"{value:.3f} kWh/件" if zh else f"{value:.3f} kWh/part"
    if unit == "%":
        return f"{value:.1f}%"
    if unit == "x":
        return f"{value:.1f}倍" if zh else f"{value:.1f}x"
    if unit == "kW":
        return f"{value:.1f} kW"
    if unit == "h":
        return f"{value:.1f} 小时" if zh else f"{value:.1f} h"
    return f"{value:.1f}"
