"""The contracts between lineguard's parts: one typed model per message, used on both sides of each seam.

The line runtime builds these to publish, ingest validates what arrives with the same models, the API
answers with them and the console reads their JSON schema (``GET /api/contracts``). docs/MQTT.md
describes the same fields for people. A leaf module: pydantic and the standard library only, so vision,
hardware and the web layer can all import it without pulling each other in.

What lives here:

* ``Verdict``: what QA decided for one part (pass / rework / reject).
* ``LineAction``: what the line runtime does to the line because of a run of verdicts (reject a part,
  slow, stop). A verdict is about a part, an action about the line: two names, never one enum.
* ``Inspection`` / ``Defect``: the event the runtime publishes for every part.
* ``TelemetryPoint`` / ``MachineEvent``: what meters and machines publish (JSON convention).
* ``EnergyMetric``: the metric names and units the energy computation understands.
* ``epoch_seconds``: the one range check every timestamp source goes through (JSON, Sparkplug, replay).
* ``topic``: the JSON-convention topic ``<prefix>/<site>/<line>/<cell>/<kind>``.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StringConstraints,
    ValidationError,
)

# ---- timestamps --------------------------------------------------------------------------------------
#: Accepted time range for any timestamp from outside, epoch seconds: 2000-01-01 .. 2100-01-01 UTC.
#: It catches milliseconds sent as seconds (year 58000) and zero clocks (1970) from every source alike.
TS_MIN: Final = 946_684_800.0
TS_MAX: Final = 4_102_444_800.0


class ContractError(ValueError):
    """A value breaks the contract; the message names the field and the rule (it becomes a dead letter)."""


def epoch_seconds(value: Any, field: str = "ts") -> float:
    """Epoch seconds (number) or ISO 8601 with a zone -> epoch seconds, range-checked (2000..2100).

    The one check for every timestamp source; raises ContractError naming ``field``. Never raises
    anything else (OverflowError from a huge integer, say), so a caller can dead-letter on this alone."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ContractError(f"{field}: time without a zone")
        v = value.timestamp()
    elif isinstance(value, str):
        if len(value) > 64:
            raise ContractError(f"{field}: not an ISO 8601 time (longer than 64 characters)")
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise ContractError(f"{field}: not an ISO 8601 time: {value[:64]!r}") from None
        if dt.tzinfo is None:
            raise ContractError(f"{field}: ISO time without a zone")
        try:
            v = dt.timestamp()
        except (OverflowError, ValueError, OSError):
            raise ContractError(f"{field}: time out of range") from None
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ContractError(f"{field}: expected epoch seconds or an ISO 8601 time, got {type(value).__name__}")
    else:
        try:
            v = float(value)
        except OverflowError:
            raise ContractError(f"{field}: number too large for a time") from None
    if not math.isfinite(v) or not TS_MIN <= v <= TS_MAX:
        raise ContractError(f"{field}: {v} is not epoch seconds between 2000 and 2100")
    return v


def epoch_millis(value: Any, field: str = "timestamp") -> float:
    """Milliseconds since the epoch (Sparkplug's unit) -> epoch seconds, through the same range check.

    Never raises anything but ContractError (a uint64 past year 9999 included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ContractError(f"{field}: expected milliseconds since the epoch, got {type(value).__name__}")
    try:
        seconds = float(value) / 1000.0
    except OverflowError:
        raise ContractError(f"{field}: number too large for a time") from None
    if not math.isfinite(seconds) or not TS_MIN <= seconds <= TS_MAX:
        raise ContractError(f"{field}: {value} ms is not a time between 2000 and 2100")
    return seconds


def utc(ts: float) -> datetime:
    """Epoch seconds -> an aware UTC datetime (for SQL parameters and display)."""
    return datetime.fromtimestamp(ts, UTC)


def _ts(v: Any) -> float:
    return epoch_seconds(v)


EpochSeconds = Annotated[float, BeforeValidator(_ts)]

# ---- names -------------------------------------------------------------------------------------------
#: Site, line, camera and cell names: safe in MQTT topics, file names and SQL values.
NAME_PATTERN: Final = r"^[A-Za-z0-9_.-]+$"
_NAME_RE = re.compile(NAME_PATTERN)
MAX_NAME: Final = 200
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME, pattern=NAME_PATTERN)]
#: Free identifiers (part ids, event ids, model names, codes): any text but NUL, bounded.
Ident = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME, pattern=r"^[^\x00]*$")]
Text = Annotated[str, StringConstraints(max_length=MAX_NAME, pattern=r"^[^\x00]*$")]
#: Inspection ids: also the frame's file name (line_agent/frames.py), so a plain id only.
INSPECTION_ID_PATTERN: Final = r"^[A-Za-z0-9_-]+$"


def is_name(value: str) -> bool:
    return bool(_NAME_RE.match(value)) and len(value) <= MAX_NAME


#: A finite number: an int or a float, never a string, a boolean, NaN or an infinity. Checked inside
#: pydantic-core (no Python call per value: ingest validates telemetry by the hundred thousand).
Finite = Annotated[float, Strict(), AllowInfNan(False)]


# ---- verdicts and actions ----------------------------------------------------------------------------
class Verdict(StrEnum):
    """QA's decision for one part."""

    PASS = "pass"
    REWORK = "rework"
    REJECT = "reject"

    @property
    def severity(self) -> int:
        """pass < rework < reject: the worst rule that fires decides a part."""
        return _VERDICT_SEVERITY[self]


_VERDICT_SEVERITY: Final = {Verdict.PASS: 0, Verdict.REWORK: 1, Verdict.REJECT: 2}
VERDICTS: Final = tuple(v.value for v in Verdict)


class LineAction(StrEnum):
    """What the runtime does to the line because of verdicts. Never ``start``: the line does not start itself."""

    REJECT_PART = "reject_part"  # fire the reject gate for this part
    SLOW = "slow"
    STOP = "stop"


# ---- the inspection event ----------------------------------------------------------------------------
class _Message(BaseModel):
    """Messages from outside: unknown fields are refused, so a typo is a dead letter, not a silent loss."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Defect(_Message):
    """One detected defect: class, confidence and box in pixels ``[x1, y1, x2, y2]``."""

    cls: Ident
    confidence: Annotated[float, Strict(), Field(ge=0.0, le=1.0)]
    box: tuple[Finite, Finite, Finite, Finite]


class TruthLabel(_Message):
    """Injected ground truth of a simulated part (demo and tests only)."""

    cls: Ident
    box: tuple[Finite, Finite, Finite, Finite]


class Inspection(_Message):
    """One part inspected: what the line runtime publishes on ``<prefix>/<site>/<line>/<cell>/inspection``
    (the line's ``mqtt.cell``, ``inspection`` by default).

    Frames are never named by a path here: a stored frame is found by ``inspection_id`` inside the frames
    folder of its line and camera (``frame_saved`` says whether one was kept)."""

    inspection_id: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=INSPECTION_ID_PATTERN)]
    ts: EpochSeconds
    site: Name
    line: Name
    camera: Name
    part_id: Ident
    decision: Verdict
    defects: list[Defect] = Field(default_factory=list, max_length=10_000)
    latency_ms: Annotated[float, Strict(), Field(ge=0.0, le=3_600_000.0)] | None = None
    model: Text = ""
    frame_saved: bool = False
    truth: list[TruthLabel] | None = None


# ---- telemetry and machine events (JSON convention) --------------------------------------------------
MAX_POINTS: Final = 200_000  # points in one telemetry message


class TelemetryPoint(_Message):
    """One reading time of one device: ``{"ts": ..., "device": "meter1", "metrics": {"power_w": 1520.5}}``.

    Booleans are stored as 0/1. ``device`` defaults to the topic's cell."""

    ts: EpochSeconds
    device: Ident | None = None
    metrics: Annotated[dict[Ident, Finite | StrictBool], Field(min_length=1)]


class MachineEvent(BaseModel):
    """A fault, alarm or state change of a machine, one per message. Fields beyond these are kept as payload."""

    model_config = ConfigDict(extra="allow", frozen=True)

    event_id: Ident | None = None
    ts: EpochSeconds
    device: Ident | None = None
    kind: Ident = "fault"
    code: Text = ""
    severity: Annotated[int, Strict(), Field(ge=-32768, le=32767)] = 0
    duration_s: Annotated[float, Strict(), Field(ge=0.0, le=366 * 86400.0)] | None = None


# ---- energy ------------------------------------------------------------------------------------------
class EnergyMetric(StrEnum):
    """Metric names a meter publishes, by the documented contract (docs/MQTT.md)."""

    POWER_W = "power_w"  # instantaneous power, W
    POWER_KW = "power_kw"  # instantaneous power, kW
    ENERGY_KWH = "energy_kwh"  # cumulative counter, kWh (resets and rollovers handled)
    ENERGY_WH = "energy_wh"  # cumulative counter, Wh


#: Unit of each energy metric, and its factor to the unit the store reports in (W for power, kWh for energy).
ENERGY_UNITS: Final[dict[EnergyMetric, tuple[str, float]]] = {
    EnergyMetric.POWER_W: ("W", 1.0),
    EnergyMetric.POWER_KW: ("kW", 1000.0),
    EnergyMetric.ENERGY_KWH: ("kWh", 1.0),
    EnergyMetric.ENERGY_WH: ("Wh", 0.001),
}
PARTS_METRIC: Final = "parts"  # 1 per part produced, for lines that publish no inspections


# ---- topics ------------------------------------------------------------------------------------------
class TopicKind(StrEnum):
    TELEMETRY = "telemetry"
    EVENT = "event"
    INSPECTION = "inspection"
    # Published by lineguard itself (agent summaries, alerts); ingest recognises and leaves them.
    SUMMARY = "summary"
    ALERT = "alert"


INBOUND_KINDS: Final = (TopicKind.TELEMETRY, TopicKind.EVENT, TopicKind.INSPECTION)
DEFAULT_PREFIX: Final = "lineguard"


def topic(site: str, line: str, cell: str, kind: TopicKind | str, prefix: str = DEFAULT_PREFIX) -> str:
    """``<prefix>/<site>/<line>/<cell>/<kind>``; every part must be a safe name."""
    for label, part in (("site", site), ("line", line), ("cell", cell)):
        if not is_name(part):
            raise ContractError(f"topic {label} {part!r}: use letters, digits, '_', '-' or '.' only")
    return f"{prefix}/{site}/{line}/{cell}/{TopicKind(kind).value}"


# ---- validation errors as one line -----------------------------------------------------------------
#: What a pattern means, for people: a dead letter's reason says the rule, not the regular expression.
_PATTERN_RULES: Final = {
    r"^[^\x00]*$": "contains a NUL character",
    NAME_PATTERN: "use letters, digits, '_', '-' or '.' only",
    INSPECTION_ID_PATTERN: "use letters, digits, '_' or '-' only",
}
#: Fields the contract no longer takes, and why (a message that still sends one is refused).
RETIRED_FIELDS: Final = {
    "frame_path": "not accepted: frames are found by line, camera and inspection_id (send frame_saved)",
}
_UNION_TAGS: Final = frozenset({"float", "bool"})  # pydantic names the branch of a union in the location


def _loc_part(part: Any) -> str:
    text = str(part)
    if len(text) > 50:
        text = text[:50] + "..."
    # A location names the offending key as it came: no NUL or lone surrogate may reach a reason.
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _loc(loc: tuple[Any, ...], root: str) -> str:
    """``("defects", 0, "box", 3)`` -> ``defects[0].box[3]``; with root "point": ``(3, "ts")`` -> ``point 3 ts``."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"{root} {part}" if i == 0 and root else f"[{part}]"
        elif part == "[key]":
            out += " key"
        else:
            sep = "" if not out else (" " if i == 1 and root and isinstance(loc[0], int) else ".")
            out += sep + _loc_part(part)
    return out


def describe(exc: ValidationError, root: str = "") -> str:
    """A pydantic ValidationError as one short line naming the field and the rule, for a dead letter's reason:
    ``decision: Input should be 'pass', 'rework' or 'reject'``. ``root`` names the items of a top-level list
    (``point 3 ts: ...``)."""
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:
        return str(exc)[:300]
    first = errors[0]
    loc = tuple(first["loc"])
    rest = len(errors) - 1
    if (len(errors) > 1 and loc and loc[-1] in _UNION_TAGS and errors[1]["loc"][:-1] == loc[:-1]
            and errors[1]["loc"][-1] in _UNION_TAGS):
        loc = loc[:-1]  # the branches of one union (number | boolean): one problem, said once
        rest = sum(1 for e in errors[1:] if tuple(e["loc"][:-1]) != loc)
    kind = first["type"]
    ctx = first.get("ctx") or {}
    if kind == "value_error" and isinstance(ctx.get("error"), ContractError):
        # The check names its field itself ("ts: ... is not epoch seconds"): only say where it sits.
        where = _loc(loc[:-1], root)
        text = f"{where} {ctx['error']}" if where else str(ctx["error"])
    else:
        msg = first["msg"]
        if kind == "string_pattern_mismatch":
            msg = _PATTERN_RULES.get(str(ctx.get("pattern")), msg)
        elif kind == "string_unicode":
            msg = "not valid Unicode (a lone surrogate)"
        elif kind == "extra_forbidden":
            msg = RETIRED_FIELDS.get(str(loc[-1]) if loc else "", "not a field of this message (unknown fields"
                                     " are refused)")
        elif kind == "value_error":
            msg = msg.removeprefix("Value error, ")
        where = _loc(loc, root)
        text = f"{where}: {msg}" if where else msg
    if rest > 0:
        text += f" (and {rest} more problem{'s' if rest > 1 else ''})"
    return text[:500]


def contract_schemas() -> dict[str, Any]:
    """JSON schemas of the published contracts and their enums (served to the console and to integrators)."""
    return {
        "verdicts": list(VERDICTS),
        "line_actions": [a.value for a in LineAction],
        "energy_metrics": {m.value: ENERGY_UNITS[m][0] for m in EnergyMetric},
        "inspection": Inspection.model_json_schema(),
        "telemetry_point": TelemetryPoint.model_json_schema(),
        "machine_event": MachineEvent.model_json_schema(),
    }
