"""Meters as configuration: which device measures a line's energy, how, and how often.

A line YAML (``line_agent.config.LineConfig.meters``) or the plant-wide default (``LINEGUARD_METERS_FILE``, a
YAML file holding the same ``meters:`` mapping) names, per device, the stored metric, its kind and unit, its
nominal reporting period and, where a device speaks other names (a JSON field, a Sparkplug metric), the names
it arrives under::

    meters:
      devices:
        - device: meter                 # the topic's cell or the message's "device"
          metric: energy_kwh            # the stored metric name
          kind: counter                 # counter | power | interval
          unit: kWh                     # W, kW (power); Wh, kWh, MWh (counter, interval)
          period_s: 900                 # nominal reporting period (else observed from the data)
          rollover: 999999.9            # a counter that wraps at this value (in its unit)
          aliases: ["Energy/Total"]     # other stored names of the same reading (Sparkplug metric, JSON field)
      auto: true                        # devices not named above are read by the documented contract

With no configuration the documented contract applies (``auto``): a device sending ``energy_kwh`` / ``energy_wh``
(cumulative counters) and/or ``power_w`` / ``power_kw`` (instantaneous power) is read, the counter preferred
when a device sends both, never both added. ``line_agent/energy.py`` computes with these models.
"""

from __future__ import annotations

import os
import re
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from line_agent.contracts import ENERGY_UNITS, EnergyMetric


class MeterKind(StrEnum):
    POWER = "power"  # instantaneous (or interval-average) power
    COUNTER = "counter"  # cumulative energy register (resets and rollovers happen)
    INTERVAL = "interval"  # energy of the reporting interval (one value per interval)


PowerUnit = Literal["W", "kW", "MW"]
EnergyUnit = Literal["Wh", "kWh", "MWh"]
#: Factor to the unit the energy computation works in: W for power, kWh for energy.
UNIT_FACTOR: Final[dict[str, float]] = {"W": 1.0, "kW": 1000.0, "MW": 1e6, "Wh": 0.001, "kWh": 1.0, "MWh": 1000.0}
POWER_UNITS: Final = frozenset({"W", "kW", "MW"})


class MeterConfig(BaseModel):
    """One device's energy reading."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field(min_length=1, max_length=200,
                        description="Device name as stored (the message's device, default its cell); '*' = every "
                                    "device that sends this metric and has no meter of its own.")
    cell: str | None = Field(default=None, description="Only this cell's device of that name.")
    metric: str = Field(min_length=1, max_length=200)
    kind: MeterKind
    unit: str
    period_s: float | None = Field(default=None, gt=0, le=86400.0,
                                   description="Nominal reporting period; default: observed (median spacing).")
    stamp: Literal["start", "end"] | None = Field(
        default=None,
        description="power/interval: whether a reading's time is the start of the span it stands for (power "
                    "default: held until the next reading) or its end (interval default: the energy of the "
                    "period that closes at the reading).")
    rollover: float | None = Field(default=None, gt=0, description="Counter: the value at which it wraps to 0.")
    aliases: tuple[str, ...] = Field(default=(), description="Other stored names of the same reading.")

    @model_validator(mode="after")
    def _unit_fits_kind(self) -> MeterConfig:
        if self.unit not in UNIT_FACTOR:
            raise ValueError(f"unit {self.unit!r}: use one of {', '.join(UNIT_FACTOR)}")
        if (self.kind is MeterKind.POWER) != (self.unit in POWER_UNITS):
            raise ValueError(f"unit {self.unit!r} does not fit kind {self.kind.value} "
                             f"({'W, kW, MW' if self.kind is MeterKind.POWER else 'Wh, kWh, MWh'})")
        if self.rollover is not None and self.kind is not MeterKind.COUNTER:
            raise ValueError("rollover applies to counters only")
        return self

    @property
    def factor(self) -> float:
        return UNIT_FACTOR[self.unit]

    @property
    def names(self) -> tuple[str, ...]:
        return (self.metric, *self.aliases)

    @property
    def start_stamped(self) -> bool:
        if self.stamp is not None:
            return self.stamp == "start"
        return self.kind is MeterKind.POWER


class MetersConfig(BaseModel):
    """The ``meters:`` section of a line YAML (and of the plant-wide default file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    devices: tuple[MeterConfig, ...] = ()
    auto: bool = Field(default=True, description="Read devices not named in devices by the documented contract.")
    gap_factor: float = Field(default=2.5, ge=1.0, le=100.0,
                              description="A power reading stands for at most gap_factor x the period: a longer "
                                          "silence counts one period, then nothing (a silent meter is not a load).")

    @model_validator(mode="after")
    def _unique(self) -> MetersConfig:
        keys = [(m.cell, m.device) for m in self.devices]
        dupes = sorted({f"{c + '/' if c else ''}{d}" for c, d in keys if keys.count((c, d)) > 1})
        if dupes:
            raise ValueError(f"one meter per device; repeated: {', '.join(dupes)}")
        return self


#: The documented contract (docs/MQTT.md): counters first (preferred), then power.
CONTRACT_COUNTERS: Final = (EnergyMetric.ENERGY_KWH.value, EnergyMetric.ENERGY_WH.value)
CONTRACT_POWER: Final = (EnergyMetric.POWER_W.value, EnergyMetric.POWER_KW.value)


def contract_meter(device: str, metric: str, cell: str | None = None) -> MeterConfig:
    """The meter a contract metric name means (``energy_kwh`` -> a kWh counter, ``power_w`` -> power in W)."""
    unit = ENERGY_UNITS[EnergyMetric(metric)][0]
    kind = MeterKind.COUNTER if metric in CONTRACT_COUNTERS else MeterKind.POWER
    return MeterConfig(device=device or "-", cell=cell, metric=metric, kind=kind, unit=unit)


DEFAULT_METERS: Final = MetersConfig()


class MetersError(ValueError):
    """The plant-wide meters file is unreadable or invalid (the message names the file and field)."""


def load_meters_file(path: Path) -> MetersConfig:
    """A YAML file with a top-level ``meters:`` mapping (or the mapping itself)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise MetersError(f"cannot read meters file {path}: {exc}") from None
    if isinstance(data, dict) and "meters" in data:
        data = data["meters"]
    try:
        return MetersConfig.model_validate(data)
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise MetersError(f"{path}: {where}") from None


def plant_default() -> MetersConfig:
    """The plant-wide default: ``LINEGUARD_METERS_FILE`` when set, else the documented contract."""
    path = os.environ.get("LINEGUARD_METERS_FILE")
    return load_meters_file(Path(path)) if path else DEFAULT_METERS


def for_line(line_meters: MetersConfig | None) -> MetersConfig:
    """A line's meters: its own section, else the plant-wide default."""
    return line_meters if line_meters is not None else plant_default()


# ---- the plant's time zone and shift calendar ------------------------------------------------------------
def _zone(v: str) -> str:
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Europe/Berlin or UTC)") from None
    return v


TimeZone = Annotated[str, AfterValidator(_zone)]
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def _hhmm(v: str) -> str:
    if not _HHMM.match(v):
        raise ValueError(f"{v!r}: use HH:MM (00:00 .. 23:59)")
    return v


HHMM = Annotated[str, AfterValidator(_hhmm)]


class ShiftConfig(BaseModel):
    """One shift of the calendar, in the plant's local time; ``end`` at or before ``start`` ends the next day.

    A shift belongs to the day it starts (night shift C of 2018-01-01 runs 22:00 .. 06:00 on the 2nd)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")
    start: HHMM
    end: HHMM
    days: tuple[int, ...] = Field(default=(0, 1, 2, 3, 4, 5, 6),
                                  description="Weekdays it runs (0 = Monday); a day off has no such shift.")

    def window(self, day: date, tz: str) -> tuple[datetime, datetime]:
        zone = ZoneInfo(tz)
        h0, m0 = (int(x) for x in self.start.split(":"))
        h1, m1 = (int(x) for x in self.end.split(":"))
        s = datetime.combine(day, time(h0, m0), zone)
        end_day = day + timedelta(days=1) if (h1, m1) <= (h0, m0) else day
        return s, datetime.combine(end_day, time(h1, m1), zone)


DEFAULT_SHIFTS: Final = (ShiftConfig(name="A", start="06:00", end="14:00"),
                         ShiftConfig(name="B", start="14:00", end="22:00"),
                         ShiftConfig(name="C", start="22:00", end="06:00"))


class ShiftError(ValueError):
    """An unknown shift name or a day it does not run; the message names the known shifts."""


def shift_window(shifts: tuple[ShiftConfig, ...], name: str, day: date, tz: str) -> tuple[datetime, datetime]:
    """[start, end) of shift ``name`` on ``day`` (the day it starts), in the plant's zone."""
    for sh in shifts:
        if sh.name == name:
            if day.weekday() not in sh.days:
                raise ShiftError(f"shift {name} does not run on {day.isoformat()} ({day:%A})")
            return sh.window(day, tz)
    raise ShiftError(f"unknown shift {name!r}; the calendar has {', '.join(s.name for s in shifts) or 'none'}")


def shifts_between(shifts: tuple[ShiftConfig, ...], start: datetime, end: datetime,
                   tz: str) -> list[tuple[date, str, datetime, datetime]]:
    """Every shift overlapping [start, end): (day, name, shift start, shift end), cut at the window, in order."""
    zone = ZoneInfo(tz)
    d = start.astimezone(zone).date() - timedelta(days=1)
    last = end.astimezone(zone).date()
    out = []
    while d <= last:
        for sh in shifts:
            if d.weekday() not in sh.days:
                continue
            s, e = sh.window(d, tz)
            s, e = max(s, start), min(e, end)
            if s < e:
                out.append((d, sh.name, s, e))
        d += timedelta(days=1)
    return sorted(out, key=lambda x: x[2])
