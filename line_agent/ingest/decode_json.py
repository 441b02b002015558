"""The plain JSON convention: ``<prefix>/<site>/<line>/<cell>/<kind>``, kind = telemetry | event | inspection.

Every field is checked before anything is stored: a message that breaks a rule becomes one dead letter
naming the rule; it never raises out of here. See docs/MQTT.md for the payloads.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime
from typing import Any

from line_agent.ingest.rows import Batch, DeadLetter, DefectRow, EventRow, InspectionRow, TelemetryRow

MAX_PAYLOAD = 16 * 1024 * 1024  # bytes: bigger is a mistake or an attack, not telemetry
MAX_NAME = 200  # characters for ids, names, codes
MAX_TEXT = 4096  # characters for free text (frame paths)
MAX_POINTS = 200_000  # points in one message
TS_MIN, TS_MAX = 946_684_800.0, 4_102_444_800.0  # 2000-01-01 .. 2100-01-01 UTC: catches ms-vs-s mix-ups
KINDS = ("telemetry", "event", "inspection")
# Published by lineguard itself (the agent's summaries and alerts, already stored where they are
# made): ingest subscribes to the same tree, recognises them and leaves them alone.
OUTBOUND_KINDS = ("summary", "alert")
DECISIONS = ("pass", "reject", "rework")


class BadMessage(ValueError):
    """The reason a message goes to dead_letter."""


def _reject_constant(name: str) -> float:
    raise BadMessage(f"non-finite number {name} is not allowed")


def _text(obj: Any, field: str, *, limit: int = MAX_NAME, default: str | None = None) -> str:
    if obj is None and default is not None:
        return default
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


def _number(obj: Any, field: str) -> float:
    if isinstance(obj, bool):  # machine states are often booleans: store them as 0/1
        return 1.0 if obj else 0.0
    if not isinstance(obj, int | float):
        raise BadMessage(f"{field}: expected a number, got {type(obj).__name__}")
    try:
        v = float(obj)
    except OverflowError:
        raise BadMessage(f"{field}: integer too large for a double") from None
    if not math.isfinite(v):
        raise BadMessage(f"{field}: non-finite number")
    return v


def _opt_number(obj: Any, field: str) -> float | None:
    return None if obj is None else _number(obj, field)


def parse_ts(obj: Any, field: str = "ts") -> float:
    """Epoch seconds (number) or an ISO 8601 string with a zone -> epoch seconds."""
    if isinstance(obj, str):
        try:
            dt = datetime.fromisoformat(_text(obj, field, limit=64))
        except ValueError:
            raise BadMessage(f"{field}: not an ISO 8601 time: {obj[:64]!r}") from None
        if dt.tzinfo is None:
            raise BadMessage(f"{field}: ISO time without a zone")
        v = dt.timestamp()
    else:
        v = _number(obj, field)
    if not TS_MIN <= v <= TS_MAX:
        raise BadMessage(f"{field}: {v} is not epoch seconds between 2000 and 2100")
    return v


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


def _telemetry(obj: Any, site: str, line: str, cell: str, out: list[TelemetryRow]) -> None:
    points = obj if isinstance(obj, list) else [obj]
    n = 0
    for i, p in enumerate(points):
        if not isinstance(p, dict):
            raise BadMessage(f"point {i}: expected an object, got {type(p).__name__}")
        ts = parse_ts(p.get("ts"), f"point {i} ts")
        device = _text(p.get("device"), f"point {i} device", default=cell)
        metrics = p.get("metrics")
        if not isinstance(metrics, dict) or not metrics:
            raise BadMessage(f"point {i} metrics: expected a non-empty object of name: number")
        n += len(metrics)
        if n > MAX_POINTS:
            raise BadMessage(f"more than {MAX_POINTS} points in one message")
        for name, value in metrics.items():
            out.append(TelemetryRow(ts, site, line, cell, device, _text(name, f"point {i} metric name"),
                                    _number(value, f"point {i} metrics.{name[:50]}")))


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
    known = {"event_id", "ts", "device", "kind", "code", "severity", "duration_s", "site", "line", "cell"}
    extra = {k: v for k, v in obj.items() if k not in known}
    _check_json(extra, "event payload")
    event_id = obj.get("event_id")
    eid = _text(event_id, "event_id") if event_id is not None else stable_id(topic, raw)
    severity = obj.get("severity", 0)
    if isinstance(severity, bool) or not isinstance(severity, int) or not -32768 <= severity <= 32767:
        raise BadMessage("severity: expected a small integer")
    return EventRow(
        eid, parse_ts(obj.get("ts")), site, line, cell,
        _text(obj.get("device"), "device", default=cell),
        _text(obj.get("kind"), "kind", default="fault"),
        _text(obj.get("code"), "code", default=""),
        severity, _opt_number(obj.get("duration_s"), "duration_s"), extra,
    )


def _inspection(obj: Any, site: str, line: str, cell: str) -> InspectionRow:
    if not isinstance(obj, dict):
        raise BadMessage(f"inspection: expected an object, got {type(obj).__name__}")
    decision = obj.get("decision")
    if decision not in DECISIONS:
        raise BadMessage(f"decision: expected one of {', '.join(DECISIONS)}")
    defects_in = obj.get("defects") or []
    if not isinstance(defects_in, list):
        raise BadMessage("defects: expected a list")
    defects: list[DefectRow] = []
    for i, d in enumerate(defects_in):
        if not isinstance(d, dict):
            raise BadMessage(f"defects[{i}]: expected an object")
        box = d.get("box")
        if not isinstance(box, list) or len(box) != 4:
            raise BadMessage(f"defects[{i}].box: expected [x1, y1, x2, y2]")
        x1, y1, x2, y2 = (_number(v, f"defects[{i}].box") for v in box)
        defects.append(DefectRow(i, _text(d.get("cls"), f"defects[{i}].cls"),
                                 _number(d.get("confidence"), f"defects[{i}].confidence"), x1, y1, x2, y2))
    truth = obj.get("truth")
    _check_json(truth, "truth")
    frame_path = obj.get("frame_path")
    return InspectionRow(
        _text(obj.get("inspection_id"), "inspection_id"), parse_ts(obj.get("ts")),
        _text(obj.get("site"), "site", default=site), _text(obj.get("line"), "line", default=line),
        _text(obj.get("camera"), "camera", default=cell), _text(obj.get("part_id"), "part_id"),
        decision, _opt_number(obj.get("latency_ms"), "latency_ms"), _text(obj.get("model"), "model", default=""),
        None if frame_path is None else _text(frame_path, "frame_path", limit=MAX_TEXT),
        truth, tuple(defects),
    )


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
        if kind == "telemetry":
            rows: list[TelemetryRow] = []
            _telemetry(obj, site, line, cell, rows)
            if not rows:
                raise BadMessage("telemetry: no points")
            out.telemetry.extend(rows)  # only once the whole message is good
        elif kind == "event":
            out.events.append(_event(obj, topic, raw, site, line, cell))
        else:
            out.inspections.append(_inspection(obj, site, line, cell))
    except BadMessage as exc:
        out.dead.append(DeadLetter("mqtt", topic, str(exc), raw))
    except Exception as exc:  # a rule we did not think of: still a dead letter, never a dead worker
        out.dead.append(DeadLetter("mqtt", topic, f"undecodable: {type(exc).__name__}: {exc}"[:500], raw))
