"""Simulated line equipment telemetry for the demo: an energy meter and machine faults.

Power follows the conveyor: a base load (drives' standby, compressors, lighting) plus a load
proportional to speed while running. The meter reports instantaneous power (W) and a cumulative
energy counter (kWh), as real meters do; faults arrive as a Poisson process per machine, with
the AI4I 2020 failure-mode codes so the same tools read simulated and replayed lines.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

FAILURE_MODES = ("TWF", "HDF", "PWF", "OSF", "RNF")  # tool wear, heat dissipation, power, overstrain, random


@dataclass
class MeterReading:
    ts: float
    power_w: float
    energy_kwh: float  # cumulative counter since the meter was installed


@dataclass
class Fault:
    ts: float
    machine: str
    code: str
    duration_s: float
    event_id: str


@dataclass
class LineMeterSim:
    """Deterministic (seeded) meter and fault generator for one line."""

    line: str
    seed: int = 0
    base_w: float = 800.0
    running_w: float = 2500.0  # at 100 % speed
    noise_w: float = 40.0
    machines: tuple[str, ...] = ("press1", "reflow1", "pickplace1")
    fault_rate_per_h: float = 30.0  # per machine; high so a short demo shows some
    energy_kwh: float = 0.0
    _last_ts: float | None = None
    _fault_seq: int = 0
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def read(self, ts: float, running: bool, speed_pct: float = 100.0) -> MeterReading:
        """The meter's reading at ``ts``; energy integrates power since the previous reading."""
        power = self.base_w + (self.running_w * max(0.0, speed_pct) / 100.0 if running else 0.0)
        power = max(0.0, power + self._rng.gauss(0.0, self.noise_w))
        if self._last_ts is not None and ts > self._last_ts:
            self.energy_kwh += power * (ts - self._last_ts) / 3.6e6  # W·s -> kWh
        self._last_ts = ts
        return MeterReading(ts=ts, power_w=round(power, 2), energy_kwh=round(self.energy_kwh, 6))

    def faults(self, ts: float, dt_s: float) -> list[Fault]:
        """Faults that start in the ``dt_s`` seconds before ``ts`` (Poisson arrivals per machine)."""
        out: list[Fault] = []
        p = 1.0 - math.exp(-self.fault_rate_per_h * dt_s / 3600.0)
        for machine in self.machines:
            if self._rng.random() < p:
                self._fault_seq += 1
                out.append(
                    Fault(
                        ts=ts,
                        machine=machine,
                        code=self._rng.choice(FAILURE_MODES),
                        duration_s=round(self._rng.uniform(5.0, 120.0), 1),
                        event_id=f"{self.line}-sim-{self.seed}-{self._fault_seq}",
                    )
                )
        return out
