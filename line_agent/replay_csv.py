"""``lineguard replay csv``: a plant's own history (a meter export, a historian dump) published per the contract.

Each row of the CSV is one reading time. A column mapping says which column holds the time (its format,
its time zone when the stamps carry none, and whether a stamp is its interval's start or end) and which
columns are metrics, in which unit. Readings are turned into the documented contract (docs/MQTT.md) before
they leave, so the store and the energy computation see what a live meter would have sent:

* power in W or kW -> ``power_w``, stamped at the start of the interval it averages;
* a cumulative energy register in Wh, kWh or MWh -> ``energy_kwh``, stamped when it was read;
* energy per interval (``kWh/interval`` ...) -> a running ``energy_kwh`` register, stamped at the interval's
  end (the reading that closes the interval);
* any other column -> a metric of that name, as it is.

Published as ``TelemetryPoint`` lists on ``<prefix>/<site>/<line>/<cell>/telemetry``, QoS 1, with a progress bar.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from line_agent.contracts import ContractError, EnergyMetric, TelemetryPoint, epoch_seconds, topic

#: unit -> (contract metric, factor to its unit, kind)
_UNITS: dict[str, tuple[str, float, str]] = {
    "W": (EnergyMetric.POWER_W.value, 1.0, "power"),
    "kW": (EnergyMetric.POWER_W.value, 1000.0, "power"),
    "MW": (EnergyMetric.POWER_W.value, 1e6, "power"),
    "Wh": (EnergyMetric.ENERGY_KWH.value, 0.001, "counter"),
    "kWh": (EnergyMetric.ENERGY_KWH.value, 1.0, "counter"),
    "MWh": (EnergyMetric.ENERGY_KWH.value, 1000.0, "counter"),
    "Wh/interval": (EnergyMetric.ENERGY_KWH.value, 0.001, "interval"),
    "kWh/interval": (EnergyMetric.ENERGY_KWH.value, 1.0, "interval"),
    "MWh/interval": (EnergyMetric.ENERGY_KWH.value, 1000.0, "interval"),
}
UNITS = tuple(_UNITS)


class CsvReplayError(ValueError):
    """The file or the mapping is wrong: the message names the row, the column and what was expected."""


@dataclass(frozen=True)
class ColumnMap:
    """One metric column: ``COLUMN[=NAME][:UNIT]`` on the command line."""

    column: str
    unit: str | None = None
    name: str | None = None

    @classmethod
    def parse(cls, spec: str) -> ColumnMap:
        m = re.fullmatch(r"(?P<col>[^=:]+?)(?:=(?P<name>[^:]+))?(?::(?P<unit>.+))?", spec.strip())
        if not m:
            raise CsvReplayError(f"column mapping {spec!r}: expected COLUMN[=NAME][:UNIT]")
        unit = m["unit"]
        if unit is not None and unit not in _UNITS:
            raise CsvReplayError(f"column mapping {spec!r}: unit {unit!r} unknown; expected one of {', '.join(UNITS)}")
        return cls(m["col"].strip(), unit, m["name"])


@dataclass
class CsvMapping:
    ts_column: str
    metrics: list[ColumnMap]
    #: ``iso``, ``epoch`` (seconds), ``epoch_ms``, or a strptime format such as ``%d/%m/%Y %H:%M``.
    ts_format: str = "iso"
    timezone: str = "UTC"
    stamp: Literal["start", "end"] = "end"
    interval_s: float = 900.0
    device: str = "meter1"
    delimiter: str | None = None  # None: sniffed from the header (comma, semicolon or tab)
    tz: ZoneInfo = field(init=False)

    def __post_init__(self) -> None:
        if not self.metrics:
            raise CsvReplayError("no metric column mapped (give --metric COLUMN[=NAME][:UNIT])")
        try:
            self.tz = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise CsvReplayError(f"time zone {self.timezone!r} unknown (use an IANA name such as Europe/Berlin)") \
                from None
        if self.interval_s <= 0:
            raise CsvReplayError("--interval-s must be positive")


def _parse_ts(raw: str, m: CsvMapping, where: str) -> float:
    raw = raw.strip()
    try:
        if m.ts_format == "epoch":
            return epoch_seconds(float(raw), where)
        if m.ts_format == "epoch_ms":
            return epoch_seconds(float(raw) / 1000.0, where)
        dt = datetime.fromisoformat(raw) if m.ts_format == "iso" else datetime.strptime(raw, m.ts_format)
    except ValueError as exc:
        raise CsvReplayError(f"{where}: {raw[:40]!r} is not a time in format {m.ts_format!r} ({exc})") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=m.tz)  # local wall time of the plant (DST gaps/folds as zoneinfo resolves them)
    return epoch_seconds(dt, where)


@dataclass
class CsvReplayResult:
    rows: int = 0
    points: int = 0
    messages: int = 0
    skipped: list[str] = field(default_factory=list)
    first_ts: float | None = None
    last_ts: float | None = None


def read_points(path: Path, m: CsvMapping) -> Iterator[tuple[float, dict[str, float]]]:
    """Rows as contract readings ``(ts, {metric: value})``, in file order; raises CsvReplayError on bad input.

    An empty cell is no reading for that metric; a row with no reading at all is skipped."""
    try:
        f = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed below; a BOM is common in exports
    except OSError as exc:
        raise CsvReplayError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        head = f.readline()
        f.seek(0)
        delim = m.delimiter or max((",", ";", "\t"), key=head.count)
        reader = csv.DictReader(f, delimiter=delim)
        cols = reader.fieldnames or []
        missing = [c for c in (m.ts_column, *(c.column for c in m.metrics)) if c not in cols]
        if missing:
            raise CsvReplayError(f"{path}: column(s) {', '.join(map(repr, missing))} not in the header "
                                 f"({', '.join(cols)})")
        running: dict[str, float] = {}  # the register built from each column's energy per interval
        shift = m.interval_s
        for n, row in enumerate(reader, start=2):
            ts = _parse_ts(row[m.ts_column] or "", m, f"row {n} {m.ts_column}")
            out: dict[str, tuple[float, float]] = {}  # metric -> (value, its time)
            for c in m.metrics:
                cell = (row.get(c.column) or "").strip()
                if not cell:
                    continue
                try:
                    v = float(cell.replace(",", ".") if delim == ";" else cell)
                except ValueError:
                    raise CsvReplayError(f"row {n} {c.column}: {cell[:40]!r} is not a number") from None
                if c.unit is None:
                    out[c.name or c.column] = (v, ts)
                    continue
                metric, factor, kind = _UNITS[c.unit]
                if kind == "power":  # an average over its interval: stamped at the interval's start
                    out[c.name or metric] = (v * factor, ts - shift if m.stamp == "end" else ts)
                elif kind == "counter":
                    out[c.name or metric] = (v * factor, ts)
                else:  # energy of the interval: the register it adds to, read at the interval's end
                    name = c.name or metric
                    end = ts + shift if m.stamp == "start" else ts
                    if name not in running:  # the register reads 0 when the first interval begins
                        running[name] = 0.0
                        yield end - shift, {name: 0.0}
                    running[name] += v * factor
                    out[name] = (running[name], end)
            by_ts: dict[float, dict[str, float]] = {}
            for name, (v, t) in out.items():
                by_ts.setdefault(t, {})[name] = v
            for t in sorted(by_ts):
                yield t, by_ts[t]


def replay_csv(path: Path, mapping: CsvMapping, publish: Callable[[str, bytes], object], *, site: str, line: str,
               cell: str = "meter", prefix: str = "lineguard", per_message: int = 500,
               progress: bool = True) -> CsvReplayResult:
    """Publish the file's readings through ``publish(topic, payload)``; returns what was sent."""
    from tqdm import tqdm

    t = topic(site, line, cell, "telemetry", prefix)
    res = CsvReplayResult()
    batch: list[dict[str, object]] = []

    def flush() -> None:
        if batch:
            publish(t, json.dumps(batch, separators=(",", ":")).encode())
            res.messages += 1
            batch.clear()

    with tqdm(desc=f"replay {path.name}", unit=" readings", disable=not progress) as bar:
        for ts, metrics in read_points(path, mapping):
            try:
                point = TelemetryPoint(ts=ts, device=mapping.device, metrics=metrics)
            except (ContractError, ValueError) as exc:
                res.skipped.append(f"{ts}: {exc}"[:200])
                continue
            batch.append(point.model_dump(mode="json"))
            res.rows += 1
            res.points += len(metrics)
            res.first_ts = ts if res.first_ts is None else min(res.first_ts, ts)
            res.last_ts = ts if res.last_ts is None else max(res.last_ts, ts)
            bar.update(1)
            if len(batch) >= per_message:
                flush()
        flush()
    return res
