"""Request and response models of the API (they are the OpenAPI schema)."""

from __future__ import annotations

from datetime import date as date_
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from line_agent.contracts import Verdict
from vision.types import DEFECT_CLASSES

# PostgreSQL text cannot hold NUL; saying so in the schema keeps clients (and Schemathesis) honest.
Text = Annotated[str, StringConstraints(max_length=2000, pattern=r"^[^\x00]*$")]
#: A line, camera or part name: the API's ``Ident``, and what ``lineguard api-token --lines`` accepts.
IDENT_PATTERN, IDENT_MAX = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$", 128
Ident = Annotated[str, StringConstraints(min_length=1, max_length=IDENT_MAX, pattern=IDENT_PATTERN)]
# A part's verdict: the one enum of line_agent.contracts (QA, the runtime, ingest, the API, the console).
DecisionKind = Verdict
LineStateKind = Literal["running", "stopped", "unknown"]
CommandStatus = Literal["ok", "refused", "error", "pending"]
DefectClass = Literal["open", "short", "mousebite", "spur", "spurious_copper", "pin_hole"]
T = TypeVar("T")
assert set(DefectClass.__args__) == set(DEFECT_CLASSES)  # type: ignore[attr-defined]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- auth ---------------------------------------------------------------------------------------
class LoginIn(Strict):
    token: Annotated[str, StringConstraints(min_length=1, max_length=512)]


class MeOut(BaseModel):
    name: str
    role: str
    lines: list[str] = Field(description="The lines this token may see and act on, of those this server runs.")
    all_lines: bool = Field(default=True, description="False: the token is limited to `lines`.")
    can: dict[str, bool] = Field(description="Which console actions this role may take.")


class TokenIn(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[^\x00]*$")]
    role: Literal["viewer", "operator", "supervisor", "admin"]
    lines: list[Ident] | None = Field(default=None, max_length=100, description=(
        "The only lines the token may read and act on (names this server runs); none or empty = every line."))


class TokenOut(BaseModel):
    token_id: int
    name: str
    role: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None
    lines: list[str] | None = Field(default=None, description="The lines it is limited to; null = every line.")


class TokenCreated(TokenOut):
    token: str = Field(description="The token itself: shown once, stored hashed.")


# ---- line and commands ----------------------------------------------------------------------------
class CauseOut(BaseModel):
    """Why the line is in its state: the last command (who, why) or what the PLC reported."""

    action: str = Field(description="start / stop / slow, or safe_state / estop / guard_door / stopped_at_plc.")
    actor: str = Field(description="user:<name>, runtime:<line> (a rule), plc:<line>, or demo:simulated-operator.")
    reason: str
    ts: float = Field(description="Epoch seconds.")


class CameraClassesOut(BaseModel):
    line: str
    camera: str
    model: str = Field(description="The detector the camera runs now ('' when no runtime serves it).")
    classes: list[str] = Field(description="What the editor offers and the feedback set accepts.")
    source: Literal["runtime", "default"] = Field(
        description="runtime: the loaded model's own classes; default: the six PCB classes.")


class CameraOut(BaseModel):
    state: str = Field(description="connected / reconnecting / stalled / ended / loading_model / model_error ...")
    detail: str = ""
    model: str = ""
    frames: int = 0
    fps: float = 0.0
    last_frame_ts: float | None = Field(default=None, description="Epoch seconds of the last frame read.")
    classes: list[str] = Field(default_factory=list, description="The classes its model reports.")


class LineStateOut(BaseModel):
    line: str
    state: LineStateKind
    safe_state: bool | None = Field(default=None, description="PLC in its safe state (heartbeat was lost).")
    cause: CauseOut | None = Field(default=None, description="Why the line is in its state.")
    cameras: dict[str, CameraOut] = Field(default_factory=dict, description="Each camera's health.")
    estop: bool | None = Field(default=None, description="E-stop active.")
    guard_door: bool | None = Field(default=None, description="Guard door open.")
    speed_pct: float | None = None
    reject_count: int | None = None
    reason: str = Field(default="", description="Why the state is unknown, when it is.")
    inputs: dict[str, Any] = Field(default_factory=dict, description="Everything the controller reported.")
    ts: datetime


class CommandIn(Strict):
    confirm: Literal[True] = Field(description="Must be true: the operator confirmed the command.")
    line: Ident | None = Field(default=None, description="Line id; default: the first line.")
    reason: Text = ""


class SlowIn(CommandIn):
    speed_pct: float = Field(ge=1, le=100, description="Conveyor speed in percent of nominal.")


class CommandOut(BaseModel):
    command_id: int
    ts: datetime
    line: str
    command: Literal["stop", "start", "slow", "reset-rejects"]
    params: dict[str, Any]
    actor: str
    status: CommandStatus
    reason: str
    state_before: dict[str, Any] | None
    state_after: dict[str, Any] | None
    idempotency_key: str


class CommandPage(BaseModel):
    items: list[CommandOut]
    total: int


# ---- decisions ------------------------------------------------------------------------------------
class DecisionIn(Strict):
    part_id: Ident
    decision: DecisionKind
    line: Ident | None = None
    inspection_id: Ident | None = None
    camera: Annotated[str, StringConstraints(max_length=128, pattern=r"^[^\x00]*$")] = ""


class DecisionOut(BaseModel):
    decision_id: int
    ts: datetime
    line: str
    part_id: str
    inspection_id: str | None
    camera: str
    decision: DecisionKind
    override: DecisionKind | None
    actor: str
    gate: Literal["none", "fired", "refused", "no_controller", "error"]
    gate_reason: str


class DecisionPage(BaseModel):
    items: list[DecisionOut]
    total: int


class OverrideIn(Strict):
    confirm: Literal[True]
    decision: DecisionKind
    reason: Text = ""


# ---- audit ----------------------------------------------------------------------------------------
class AuditOut(BaseModel):
    audit_id: int
    ts: datetime
    actor: str
    role: str
    action: str
    target: str
    before: Any = None
    after: Any = None
    result: str
    detail: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditOut]
    total: int


# ---- inspections ----------------------------------------------------------------------------------
class DefectOut(BaseModel):
    idx: int
    cls: str
    confidence: float
    box: list[float] = Field(description="[x1, y1, x2, y2] in pixels.")


class InspectionOut(BaseModel):
    inspection_id: str
    ts: datetime
    line: str
    camera: str
    part_id: str
    decision: DecisionKind
    override: str | None
    n_defects: int
    latency_ms: float | None
    model: str
    has_frame: bool
    classes: list[str]
    corrected: bool


class InspectionDetail(InspectionOut):
    defects: list[DefectOut]
    corrections: list[dict[str, Any]]


class InspectionPage(BaseModel):
    items: list[InspectionOut]
    total: int


class LabelBox(Strict):
    cls: Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")] = Field(
        description="A class of the camera's model (GET /api/cameras/{camera}/classes).")
    x1: float = Field(ge=0, le=100000)
    y1: float = Field(ge=0, le=100000)
    x2: float = Field(ge=0, le=100000)
    y2: float = Field(ge=0, le=100000)

    @model_validator(mode="after")
    def _ordered(self) -> LabelBox:
        if self.x2 <= self.x1 or self.y2 <= self.y1:
            raise ValueError("box needs x2 > x1 and y2 > y1")
        return self


class LabelsIn(Strict):
    labels: list[LabelBox] = Field(max_length=500, description="The complete corrected label set (may be empty).")


class LabelsOut(BaseModel):
    correction_id: int
    inspection_id: str
    sample_path: str
    labels: int


# ---- telemetry ------------------------------------------------------------------------------------
class EnergyPoint(BaseModel):
    ts: datetime
    kwh: float
    good_parts: int
    kwh_per_good_part: float | None


class FaultRow(BaseModel):
    device: str
    faults: int
    downtime_s: float
    codes: dict[str, int]


class DefectRateRow(BaseModel):
    cls: str
    defects: int
    parts_with: int
    parts: int
    rate: float = Field(description="Parts with this class / parts inspected.")


class ShiftRow(BaseModel):
    day: str
    shift: str
    start: datetime
    parts: int
    rejects: int
    reject_rate: float | None
    kwh: float
    kwh_per_good_part: float | None
    faults: int
    downtime_s: float


class Series(BaseModel, Generic[T]):
    line: str
    since: datetime
    until: datetime
    items: list[T]


# ---- summaries and models -------------------------------------------------------------------------
class SummaryOut(BaseModel):
    summary_id: int
    created_at: datetime
    line: str
    window_start: datetime
    window_end: datetime
    trigger: str
    lang: str
    backend: str
    model: str
    verdict: str
    verdict_detail: Any
    headline: str
    prose: str
    summary: Any
    tokens_in: int
    tokens_out: int
    latency_ms: float
    cost_usd: float


class SummaryIn(Strict):
    line: Ident | None = None
    hours: float = Field(default=8.0, gt=0, le=168, description="Window length, ending now (or at `end`).")
    start: datetime | None = Field(default=None, description="Window start (with a zone); overrides `hours`.")
    end: datetime | None = Field(default=None, description="Window end (with a zone); default now.")
    shift: Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")] | None = \
        Field(default=None, description="A shift of the line's calendar (with `date`): that shift's window.")
    date: date_ | None = Field(default=None, description="The day the shift starts (plant time).")
    lang: Literal["en", "zh"] = "en"

    @model_validator(mode="after")
    def _window(self) -> SummaryIn:
        for v in (self.start, self.end):
            if v is not None and v.tzinfo is None:
                raise ValueError("start and end need a time zone (e.g. 2026-09-21T06:00:00+02:00)")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class DowntimeEpisodeOut(BaseModel):
    kind: Literal["stop", "slow"]
    cause: str = Field(description="rule | person | estop | safe_state | guard_door | panel")
    actor: str
    reason: str
    start: datetime
    end: datetime
    duration_s: float
    planned: bool = Field(description="A person's stop whose reason starts with 'planned'.")
    ongoing: bool


class DowntimeOut(BaseModel):
    line: str
    since: datetime
    until: datetime
    stopped_s: float
    planned_s: float
    unplanned_s: float
    slow_s: float
    restarts: int
    by_cause: dict[str, dict[str, float]] = Field(description="cause -> {stops, seconds}")
    episodes: list[DowntimeEpisodeOut]


class ModelVersionOut(BaseModel):
    name: str
    version: str
    created: str = ""
    classes: list[str] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)
    train_command: str = ""
    data_hash: str = ""
    error: str = ""


class CameraModelOut(BaseModel):
    camera: str
    model: str
    source: Literal["config", "inspections"]
    last_seen: datetime | None = None


class ModelsOut(BaseModel):
    registry: str | None
    versions: list[ModelVersionOut]
    cameras: list[CameraModelOut]


# ---- system ---------------------------------------------------------------------------------------
class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    ready: bool
    checks: dict[str, str] = Field(description="Each dependency: ok, or why not.")


class LiveEvent(BaseModel):
    kind: str
    data: dict[str, Any]


# ---- audit trail, grouped (console) ---------------------------------------------------------------
class AuditRow(AuditOut):
    """An audit row, or (``count`` > 1) a group of per-part PLC writes (``plc.reject_part``) of one actor, line,
    result and hour: ``ts`` is the newest, ``first_ts`` the oldest, ``audit_id`` the newest row's id."""

    count: int = Field(default=1, description="Rows this entry stands for (1 unless grouped).")
    first_ts: datetime | None = Field(default=None, description="Oldest row of a group.")


class AuditRowPage(BaseModel):
    items: list[AuditRow]
    total: int


# An ISO 8601 time as a query parameter (the pattern keeps numbers like 0.5 out; naive = UTC).
IsoTime = Annotated[str, StringConstraints(
    max_length=40, pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?$")]


# ---- alarms and targets ---------------------------------------------------------------------------
AlarmSeverity = Literal["critical", "high", "medium", "low"]
Note = Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\x00]*$")]


class AlarmOut(BaseModel):
    alarm_id: int
    key: str = Field(description="audit:<audit_id> (an event the runtime recorded) or cond:<check> (a condition).")
    line: str
    kind: str = Field(description="rule_stop, rule_slow, safe_state, estop, guard_door, stopped_at_plc, plc_link, "
                                  "camera, model, broker, reject_rate, energy, sparkplug_stale, sparkplug_dead, "
                                  "dead_letter_quota, ...")
    severity: AlarmSeverity
    title: str
    reason: str
    source: str = Field(description="Who or what raised it: runtime:<line>, plc:<line>, readiness, threshold, "
                                    "sparkplug:<group>/<node>, ingest.")
    audit_id: int | None = None
    latched: bool = Field(description="True: stays until a person clears it; false: clears with its condition.")
    raised_at: datetime
    cleared_at: datetime | None = None
    cleared_by: str = ""
    active: bool
    acked_at: datetime | None = None
    acked_by: str | None = None
    ack_note: str | None = None


class AlarmPage(BaseModel):
    items: list[AlarmOut]
    total: int
    active: int = Field(description="Alarms not cleared (all lines asked for).")
    unacked: int = Field(description="Alarms shown and not acknowledged (the console's header count).")


class AlarmNoteIn(Strict):
    note: Note = Field(default="", description="Why (kept with the acknowledgement and in the audit trail).")


class TargetsOut(BaseModel):
    line: str
    throughput_ppm: float | None = Field(description="Target parts per minute; none: no target.")
    throughput_amber: float = Field(description="Fraction of the target below which throughput is amber.")
    throughput_red: float
    reject_amber: float = Field(description="Reject rate (0..1) from which it is amber.")
    reject_red: float = Field(description="Reject rate from which it is red, and an alarm.")
    reject_window_min: float
    reject_min_parts: int
    energy_kwh_h_max: float | None = Field(description="kWh in the last hour above this raises an alarm.")
    updated_at: datetime | None = None
    updated_by: str = ""


class TargetsIn(Strict):
    line: Ident | None = None
    throughput_ppm: float | None = Field(default=None, ge=0, le=1e6, allow_inf_nan=False)
    throughput_amber: float = Field(default=0.9, ge=0, le=1, allow_inf_nan=False)
    throughput_red: float = Field(default=0.75, ge=0, le=1, allow_inf_nan=False)
    reject_amber: float = Field(default=0.05, ge=0, le=1, allow_inf_nan=False)
    reject_red: float = Field(default=0.10, ge=0, le=1, allow_inf_nan=False)
    reject_window_min: float = Field(default=15, ge=1, le=1440, allow_inf_nan=False)
    reject_min_parts: int = Field(default=20, ge=1, le=1_000_000)
    energy_kwh_h_max: float | None = Field(default=None, ge=0, le=1e9, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> TargetsIn:
        if self.reject_red < self.reject_amber:
            raise ValueError("reject_red must be >= reject_amber")
        if self.throughput_red > self.throughput_amber:
            raise ValueError("throughput_red must be <= throughput_amber")
        return self
