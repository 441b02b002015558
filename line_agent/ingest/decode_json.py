"""The plain JSON convention: ``<prefix>/<site>/<line>/<cell>/<kind>``, kind = telemetry | event | inspection.

Every message is validated with the contract models of ``line_agent.contracts`` (``TelemetryPoint``,
``MachineEvent``, ``Inspection``): the line runtime builds the same models to publish, so both sides share
one definition of every field and rule. What pydantic does not check is checked here: payload size, JSON
itself (UTF-8, no NaN/Infinity), the topic, the number of points, and that the free-form fields of an
event can go into a jsonb column. A message that breaks a rule becomes one dead letter naming the field
and the rule; nothing raises out of here. See docs/MQTT.md for the payloads.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError

from line_agent.contracts import (
    INBOUND_KINDS,
    MAX_NAME,
    MAX_POINTS,
    Inspection,
    MachineEvent,
    TelemetryPoint,
    TopicKind,
    describe,
)
from line_agent.ingest.rows import Batch, DefectRow, EventRow, InspectionRow, TelemetryRow, dead_letter

MAX_PAYLOAD: Final = 16 * 1024 * 1024  # bytes: bigger is a mistake or an attack, not telemetry
MAX_TEXT: Final = 4096  # characters for free text in an event's extra fields
KINDS: Final = tuple(k.value for k in INBOUND_KINDS)
# Published by lineguard itself (the agent's summaries and alerts, already stored where they are
# made): ingest subscribes to the same tree, recognises them and leaves them alone.
OUTBOUND_KINDS: Final = (TopicKind.SUMMARY.value, TopicKind.ALERT.value)
# An event's own fields that come from the topic: neither validated nor kept in its payload.
_TOPIC_FIELDS: Final = frozenset({"site", "line", "cell"})
# The whole list at once: one call into pydantic-core per message, not one per point.
_POINTS: Final = TypeAdapter(list[TelemetryPoint])


class BadMessage(ValueError):
    """The reason a message goes to dead_letter."""


def _reject_constant(name: str) -> float:
    raise BadMessage(f"non-finite number {name} is not allowed")


def _text(obj: Any, field: str, *, limit: int = MAX_NAME) -> str:
    """Text that PostgreSQL can store (topic levels, the keys and strings of an event's extra fields)."""
    if not isinstance(obj, str):
        raise BadMessage(f"{field}: expected a string, got {type(obj).__name__}")
    if len(obj) > limit:
        raise BadMessage(f"{field}: longer than {limit} characters ({len(obj)})")
    if "\x00" in obj:
        raise BadMessage(f"{field}: contains a NUL character")
    try:
        obj.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates from \ud800-style escapes
        raise BadMessage(f"{field}: not valid Unicode ({exc.reason})") from None
    return obj


def _check_json(obj: Any, field: str, depth: int = 0) -> None:
    """Free-form JSON that goes into a jsonb column: PostgreSQL refuses NUL and lone surrogates."""
    if depth > 32:
        raise BadMessage(f"{field}: nested deeper than 32 levels")
    if isinstance(obj, str):
        _text(obj, field, limit=MAX_TEXT)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _text(k, f"{field} key", limit=MAX_NAME)
            _check_json(v, f"{field}.{k}", depth + 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_json(v, f"{field}[{i}]", depth + 1)
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise BadMessage(f"{field}: non-finite number")
    elif isinstance(obj, int) and not isinstance(obj, bool) and abs(obj) > 2**63:
        raise BadMessage(f"{field}: integer out of range")


def parse_topic(topic: str) -> tuple[str, str, str, str]:
    """-> (site, line, cell, kind). The first level is the deployment's prefix, any value."""
    parts = topic.split("/")
    if len(parts) != 5:
        raise BadMessage(f"topic {topic[:200]!r}: expected <prefix>/<site>/<line>/<cell>/<kind>")
    _, site, line, cell, kind = parts
    if kind not in KINDS and kind not in OUTBOUND_KINDS:
        raise BadMessage(f"topic kind {kind[:50]!r}: expected one of {', '.join(KINDS)}")
    if not line:
        raise BadMessage("topic: empty line")
    for name, v in (("site", site), ("line", line), ("cell", cell)):
        _text(v, f"topic {name}")
    return site, line, cell, kind


def _telemetry(obj: Any, site: str, line: str, cell: str) -> list[TelemetryRow]:
    points = obj if isinstance(obj, list) else [obj]
    if not points:
        raise BadMessage("telemetry: no points")
    if len(points) > MAX_POINTS:
        raise BadMessage(f"more than {MAX_POINTS} points in one message")
    try:
        validated = _POINTS.validate_python(points)
    except ValidationError as exc:
        raise BadMessage(describe(exc, root="point")) from None
    rows: list[TelemetryRow] = []
    append = rows.append
    for p in validated:
        ts = p.ts
        device = cell if p.device is None else p.device
        for name, value in p.metrics.items():
            append(TelemetryRow(ts, site, line, cell, device, name, float(value)))  # booleans as 0/1
        if len(rows) > MAX_POINTS:
            raise BadMessage(f"more than {MAX_POINTS} points in one message")
    return rows


def stable_id(*parts: str | bytes) -> str:
    """A deterministic id for a message that carries none: re-delivery gives the same id."""
    h = hashlib.sha1(usedforsecurity=False)
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return h.hexdigest()


def _event(obj: Any, topic: str, raw: bytes, site: str, line: str, cell: str) -> EventRow:
    if not isinstance(obj, dict):
        raise BadMessage(f"event: expected an object, got {type(obj).__name__}")
    try:
        ev = MachineEvent.model_validate(obj)
    except ValidationError as exc:
        raise BadMessage(describe(exc)) from None
    extra = {k: v for k, v in (ev.model_extra or {}).items() if k not in _TOPIC_FIELDS}
    _check_json(extra, "event payload")  # fields beyond the contract's: kept in events.payload (jsonb)
    return EventRow(
        ev.event_id if ev.event_id is not None else stable_id(topic, raw), ev.ts, site, line, cell,
        cell if ev.device is None else ev.device, ev.kind, ev.code, ev.severity, ev.duration_s, extra,
    )


def _inspection(obj: Any, site: str, line: str, cell: str) -> InspectionRow:
    if not isinstance(obj, dict):
        raise BadMessage(f"inspection: expected an object, got {type(obj).__name__}")
    try:
        # site, line and camera default to the topic's site, line and cell
        ins = Inspection.model_validate({"site": site, "line": line, "camera": cell, **obj})
    except ValidationError as exc:
        raise BadMessage(describe(exc)) from None
    defects = tuple(DefectRow(i, d.cls, d.confidence, *d.box) for i, d in enumerate(ins.defects))
    truth = None if ins.truth is None else [t.model_dump(mode="json") for t in ins.truth]
    return InspectionRow(ins.inspection_id, ins.ts, ins.site, ins.line, ins.camera, ins.part_id, ins.decision.value,
                         ins.latency_ms, ins.model, ins.frame_saved, truth, defects)


def decode_json(topic: str, raw: bytes, out: Batch) -> None:
    """Decode one message into ``out``: rows when it is good, one dead letter when it is not."""
    try:
        if len(raw) > MAX_PAYLOAD:
            raise BadMessage(f"payload of {len(raw)} bytes exceeds {MAX_PAYLOAD}")
        site, line, cell, kind = parse_topic(topic)
        if kind in OUTBOUND_KINDS:
            return
        try:
            obj = json.loads(raw, parse_constant=_reject_constant)
        except UnicodeDecodeError as exc:
            raise BadMessage(f"payload is not UTF-8: {exc.reason} at byte {exc.start}") from None
        except json.JSONDecodeError as exc:
            raise BadMessage(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        except RecursionError:
            raise BadMessage("invalid JSON: nested too deeply") from None
        if kind == TopicKind.TELEMETRY:
            out.telemetry.extend(_telemetry(obj, site, line, cell))  # only once the whole message is good
        elif kind == TopicKind.EVENT:
            out.events.append(_event(obj, topic, raw, site, line, cell))
        else:
            out.inspections.append(_inspection(obj, site, line, cell))
    except BadMessage as exc:
        out.dead.append(dead_letter("mqtt", topic, str(exc), raw))
    except Exception as exc:  # a rule we did not think of: still a dead letter, never a dead worker
        out.dead.append(dead_letter("mqtt", topic, f"undecodable: {type(exc).__name__}: {exc}"[:500], raw))
