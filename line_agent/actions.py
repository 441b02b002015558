"""Rules from part decisions to line actions: reject gate per part; slow or stop on a defect burst.

A burst is N rejected parts within the last M parts, or within the last T seconds, whichever trips
first. Thresholds come from the line YAML (``control:`` block). The rules only decide; the
controller (hardware.safety) carries the action out with its interlocks, and the runtime audits it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from pydantic import BaseModel, Field, model_validator

from line_agent.contracts import LineAction, Verdict


class BurstRule(BaseModel):
    """Trip when ``count`` rejects fall within ``within_parts`` parts or ``within_s`` seconds."""

    count: int = Field(ge=1, description="Rejected parts that make a burst.")
    within_parts: int | None = Field(default=None, ge=1, description="Window in parts.")
    within_s: float | None = Field(default=None, gt=0, description="Window in seconds.")

    @model_validator(mode="after")
    def _needs_a_window(self) -> BurstRule:
        if self.within_parts is None and self.within_s is None:
            raise ValueError("give within_parts, within_s or both")
        if self.within_parts is not None and self.count > self.within_parts:
            raise ValueError("count cannot exceed within_parts")
        return self


class ControlRules(BaseModel):
    """Per-line control thresholds (the ``control:`` block of the line YAML)."""

    reject_gate: bool = Field(default=True, description="Fire the reject gate for every rejected part.")
    slow: BurstRule | None = Field(default=None, description="Slow the line on this burst.")
    slow_speed_pct: float = Field(default=50.0, gt=0, le=100)
    stop: BurstRule | None = Field(
        default_factory=lambda: BurstRule(count=8, within_parts=10), description="Stop the line on this burst."
    )


@dataclass(frozen=True, slots=True)
class Trip:
    action: LineAction
    reason: str


class _Window:
    """Rejects seen in the last parts / seconds, in O(1) per part."""

    def __init__(self, rule: BurstRule) -> None:
        self.rule = rule
        self.parts: deque[bool] = deque(maxlen=rule.within_parts or None)
        self.reject_times: deque[float] = deque()

    def add(self, rejected: bool, ts: float) -> str | None:
        rule = self.rule
        if rule.within_parts is not None:
            self.parts.append(rejected)
            n = sum(self.parts)
            if n >= rule.count:
                return f"{n} rejects in the last {len(self.parts)} parts (limit {rule.count}/{rule.within_parts})"
        if rule.within_s is not None:
            if rejected:
                self.reject_times.append(ts)
            while self.reject_times and ts - self.reject_times[0] > rule.within_s:
                self.reject_times.popleft()
            if len(self.reject_times) >= rule.count:
                return (f"{len(self.reject_times)} rejects within {rule.within_s:g} s "
                        f"(limit {rule.count}/{rule.within_s:g} s)")
        return None

    def reset(self) -> None:
        self.parts.clear()
        self.reject_times.clear()


class DecisionRules:
    """Turns the stream of part decisions of one line into actions."""

    def __init__(self, rules: ControlRules) -> None:
        self.rules = rules
        self._slow = _Window(rules.slow) if rules.slow else None
        self._stop = _Window(rules.stop) if rules.stop else None

    def on_decision(self, decision: Verdict | str, ts: float) -> list[Trip]:
        """Feed one part's verdict (pass / reject / rework); return the line actions it triggers."""
        rejected = Verdict(decision) is Verdict.REJECT
        trips: list[Trip] = []
        if rejected and self.rules.reject_gate:
            trips.append(Trip(LineAction.REJECT_PART, "part rejected by QA rules"))
        stop_reason = self._stop.add(rejected, ts) if self._stop else None
        slow_reason = self._slow.add(rejected, ts) if self._slow else None
        if stop_reason:
            trips.append(Trip(LineAction.STOP, stop_reason))
            self.reset()  # a restart begins a fresh window; the same burst must not re-trip
        elif slow_reason:
            trips.append(Trip(LineAction.SLOW, slow_reason))
            if self._slow:
                self._slow.reset()
        return trips

    def reset(self) -> None:
        for w in (self._slow, self._stop):
            if w:
                w.reset()
