"""The virtual PLC's program: interlocks, watchdog, reject gate, conveyor, counters.

Protocol-free on purpose: the Modbus, OPC UA and Sparkplug simulators all run this same logic, so a test
against any of them exercises the same PLC behaviour. Values are raw (wire) values keyed by tag name, as
in hardware/default_tags.yaml.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# Tags the controller may change; everything else is driven by the PLC or by the physical inputs.
PLC_WRITABLE = frozenset({"run_cmd", "heartbeat", "speed_setpoint", "reject_seq", "reject_count", "recipe_id"})
ALL_SIGNALS = (
    "run_cmd",
    "reject_gate",
    "estop_active",
    "guard_door_open",
    "running",
    "safe_state",
    "heartbeat",
    "speed_setpoint",
    "reject_seq",
    "reject_count",
    "recipe_id",
    "actual_speed",
    "parts_count",
    "motor_current",
)

RawValue = bool | int | float


class PlcWriteError(Exception):
    """The PLC program refused a write (read-only signal or a value it will not take)."""


class PlcLogic:
    """State and scan cycle of the simulated PLC. Thread-safe: tests poke inputs from another thread."""

    # Conveyor ramp in raw units (0.1 %) per second, and parts per second at 100 % speed.
    RAMP_PER_S = 2000.0
    PARTS_PER_S_AT_FULL = 10.0

    def __init__(
        self,
        watchdog_s: float = 1.0,
        gate_pulse_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.watchdog_s = watchdog_s
        self.gate_pulse_s = gate_pulse_s
        self._clock = clock
        self._lock = threading.RLock()
        now = clock()
        self.values: dict[str, RawValue] = {name: 0 for name in ALL_SIGNALS}
        for b in ("run_cmd", "reject_gate", "estop_active", "guard_door_open", "running", "safe_state"):
            self.values[b] = False
        self.values["motor_current"] = 0.0
        # The watchdog is armed from power-up: a controller gets watchdog_s to start its heartbeat.
        self._last_hb_change = now
        self._gate_until = 0.0
        self._last_scan = now
        self._parts_frac = 0.0
        # Observability for tests and the demo (not PLC registers).
        self.gate_pulses = 0
        self.safe_state_trips = 0
        self.interlock_refusals = 0
        self.safe_state_since: float | None = None

    # ----- inputs from the "field" (tests / demo)
    def set_estop(self, active: bool) -> None:
        with self._lock:
            self.values["estop_active"] = bool(active)
            self._scan_locked(self._clock())

    def set_guard_door(self, open_: bool) -> None:
        with self._lock:
            self.values["guard_door_open"] = bool(open_)
            self._scan_locked(self._clock())

    # ----- bus access
    def read(self, name: str) -> RawValue:
        with self._lock:
            return self.values[name]

    def snapshot(self) -> dict[str, RawValue]:
        with self._lock:
            return dict(self.values)

    def write(self, name: str, raw: RawValue) -> None:
        """Apply a write from the bus; raises PlcWriteError for what a real PLC program would refuse."""
        with self._lock:
            if name not in PLC_WRITABLE:
                raise PlcWriteError(f"{name} is not writable")
            now = self._clock()
            if name == "heartbeat":
                if int(raw) != self.values["heartbeat"]:
                    self._last_hb_change = now
                self.values["heartbeat"] = int(raw)
            elif name == "run_cmd":
                want = bool(raw)
                if want and self._interlocked():
                    # The PLC enforces interlocks itself: the command does not latch, whoever sent it.
                    self.interlock_refusals += 1
                    want = False
                self.values["run_cmd"] = want
            elif name == "speed_setpoint":
                if not 0 <= int(raw) <= 1000:
                    raise PlcWriteError(f"speed_setpoint raw {raw} outside 0..1000")
                self.values["speed_setpoint"] = int(raw)
            elif name == "reject_seq":
                if int(raw) != self.values["reject_seq"] and not self.values["safe_state"]:
                    self._pulse_gate(now)
                self.values["reject_seq"] = int(raw)
            elif name == "reject_count":
                if int(raw) != 0:
                    raise PlcWriteError("reject_count can only be reset to 0")
                self.values["reject_count"] = 0
            else:
                self.values[name] = raw
            self._scan_locked(now)

    def _interlocked(self) -> bool:
        v = self.values
        return bool(v["estop_active"] or v["guard_door_open"] or v["safe_state"])

    def _pulse_gate(self, now: float) -> None:
        self.values["reject_gate"] = True
        self._gate_until = now + self.gate_pulse_s
        self.values["reject_count"] = (int(self.values["reject_count"]) + 1) & 0xFFFF
        self.gate_pulses += 1

    # ----- scan cycle
    def scan(self) -> None:
        with self._lock:
            self._scan_locked(self._clock())

    def _scan_locked(self, now: float) -> None:
        v = self.values
        dt = max(0.0, now - self._last_scan)
        self._last_scan = now
        if now - self._last_hb_change > self.watchdog_s:
            if not v["safe_state"]:
                self.safe_state_trips += 1
                self.safe_state_since = now
            v["safe_state"] = True
        elif v["safe_state"]:
            # Heartbeat is back: clear the flag, but never restart by itself (run_cmd stays cleared).
            v["safe_state"] = False
            self.safe_state_since = None
        if v["safe_state"]:
            v["run_cmd"] = False
            v["reject_gate"] = False
            self._gate_until = 0.0
        if v["estop_active"] or v["guard_door_open"]:
            v["run_cmd"] = False  # latched stop: a new start command is needed afterwards
        v["running"] = bool(v["run_cmd"]) and not self._interlocked()
        if v["reject_gate"] and now >= self._gate_until:
            v["reject_gate"] = False
        # Conveyor: ramp the actual speed towards the setpoint (or to 0 when stopped).
        target = float(v["speed_setpoint"]) if v["running"] else 0.0
        actual = float(v["actual_speed"])
        step = self.RAMP_PER_S * dt
        actual = min(target, actual + step) if actual < target else max(target, actual - step)
        v["actual_speed"] = round(actual)
        self._parts_frac += actual / 1000.0 * self.PARTS_PER_S_AT_FULL * dt
        whole = int(self._parts_frac)
        if whole:
            self._parts_frac -= whole
            v["parts_count"] = (int(v["parts_count"]) + whole) % 2**31
        v["motor_current"] = 0.4 + 4.6 * actual / 1000.0 if v["running"] else 0.0
