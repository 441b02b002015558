"""Rows as the writer stores them: plain tuples-with-names, cheap to build by the hundred thousand."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple


class TelemetryRow(NamedTuple):
    """One numeric point. ``ts`` is epoch seconds (UTC); the database converts, Python need not."""

    ts: float
    site: str
    line: str
    cell: str
    device: str
    metric: str
    value: float


class EventRow(NamedTuple):
    event_id: str
    ts: float
    site: str
    line: str
    cell: str
    device: str
    kind: str
    code: str
    severity: int
    duration_s: float | None
    payload: dict[str, Any]


class DefectRow(NamedTuple):
    idx: int
    cls: str
    confidence: float
    x1: float
    y1: float
    x2: float
    y2: float


class InspectionRow(NamedTuple):
    inspection_id: str
    ts: float
    site: str
    line: str
    camera: str
    part_id: str
    decision: str
    latency_ms: float | None
    model: str
    frame_path: str | None
    truth: Any
    defects: tuple[DefectRow, ...]


class DeadLetter(NamedTuple):
    """A message we could not decode: kept whole with the reason, never dropped."""

    source: str
    topic: str
    reason: str
    payload: bytes


@dataclass
class Batch:
    """Everything decoded from a run of messages, written in one transaction."""

    telemetry: list[TelemetryRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    inspections: list[InspectionRow] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)

    def extend(self, other: Batch) -> None:
        self.telemetry.extend(other.telemetry)
        self.events.extend(other.events)
        self.inspections.extend(other.inspections)
        self.dead.extend(other.dead)

    def __len__(self) -> int:
        return len(self.telemetry) + len(self.events) + len(self.inspections) + len(self.dead)

    def to_jsonable(self) -> dict[str, Any]:
        """For the disk spool: JSON-safe (bytes as latin-1 text, which round-trips every byte)."""
        return {
            "telemetry": [list(r) for r in self.telemetry],
            "events": [list(r) for r in self.events],
            "inspections": [[*r[:-1], [list(d) for d in r.defects]] for r in self.inspections],
            "dead": [[d.source, d.topic, d.reason, d.payload.decode("latin-1")] for d in self.dead],
        }

    @classmethod
    def from_jsonable(cls, data: dict[str, Any]) -> Batch:
        return cls(
            telemetry=[TelemetryRow(*r) for r in data["telemetry"]],
            events=[EventRow(*r) for r in data["events"]],
            inspections=[InspectionRow._make([*r[:-1], tuple(DefectRow(*d) for d in r[-1])])
                         for r in data["inspections"]],
            dead=[DeadLetter(d[0], d[1], d[2], d[3].encode("latin-1")) for d in data["dead"]],
        )
