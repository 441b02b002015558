"""Rows as the writer stores them: plain tuples-with-names, cheap to build by the hundred thousand."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

#: Bytes of a bad message's payload a dead letter keeps (its size and SHA-256 are kept whole).
DEAD_LETTER_HEAD = 4096


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
    frame_saved: bool  # a frame is found by line, camera and inspection_id (line_agent/frames.py), never a path
    truth: Any
    defects: tuple[DefectRow, ...]


class DeadLetter(NamedTuple):
    """A message we could not decode or store: its reason, the head of its payload, its size and digests.

    Build it with ``dead_letter()``, which hashes the whole payload and keeps only its first
    ``DEAD_LETTER_HEAD`` bytes: a 16 MiB attack costs the dead_letter table 4 KiB, not 16 MiB."""

    source: str
    topic: str
    reason: str
    payload: bytes  # the first DEAD_LETTER_HEAD bytes
    size: int = -1  # bytes of the whole payload (-1: ``payload`` is the whole payload)
    sha256: bytes = b""  # SHA-256 of the whole payload
    digest: bytes = b""  # de-duplication key: SHA-256 of (source, topic, whole payload)

    @property
    def truncated(self) -> bool:
        return self.size > len(self.payload)

    def complete(self) -> DeadLetter:
        """Size and digests filled in (a DeadLetter built by hand with a whole payload), head cut."""
        if self.digest and self.sha256 and self.size >= 0:
            return self
        return dead_letter(self.source, self.topic, self.reason, self.payload)

    def with_reason(self, reason: str) -> DeadLetter:
        return self._replace(reason=reason)


def dead_letter(source: str, topic: str, reason: str, raw: bytes) -> DeadLetter:
    """The dead letter of a whole payload ``raw``: head, size, SHA-256 and the de-duplication digest."""
    key = hashlib.sha256()
    for part in (source.encode(), topic.encode("utf-8", "replace"), raw):
        key.update(len(part).to_bytes(8, "big"))
        key.update(part)
    return DeadLetter(source, topic, reason, bytes(raw[:DEAD_LETTER_HEAD]), len(raw), hashlib.sha256(raw).digest(),
                      key.digest())


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
            "dead": [dead_jsonable(d) for d in self.dead],
        }

    @classmethod
    def from_jsonable(cls, data: dict[str, Any]) -> Batch:
        return cls(
            telemetry=[TelemetryRow(*r) for r in data["telemetry"]],
            events=[EventRow(*r) for r in data["events"]],
            inspections=[_inspection_row(r) for r in data["inspections"]],
            dead=[dead_from_jsonable(d) for d in data["dead"]],
        )


def _inspection_row(r: list[Any]) -> InspectionRow:
    row = InspectionRow._make([*r[:-1], tuple(DefectRow(*d) for d in r[-1])])
    if not isinstance(row.frame_saved, bool):  # a spool file from before frame_saved: there was a frame_path
        row = row._replace(frame_saved=row.frame_saved is not None)
    return row


def dead_jsonable(d: DeadLetter) -> list[Any]:
    d = d.complete()
    return [d.source, d.topic, d.reason, d.payload.decode("latin-1"), d.size, d.sha256.hex(), d.digest.hex()]


def dead_from_jsonable(d: list[Any]) -> DeadLetter:
    """Bytes as latin-1 text (every byte round-trips); a 4-item list is a spool file from before the digests."""
    payload = str(d[3]).encode("latin-1")
    if len(d) < 7:
        return dead_letter(str(d[0]), str(d[1]), str(d[2]), payload)
    return DeadLetter(str(d[0]), str(d[1]), str(d[2]), payload, int(d[4]), bytes.fromhex(d[5]), bytes.fromhex(d[6]))
