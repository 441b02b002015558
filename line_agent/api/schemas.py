"""Request and response models of the API (they are the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from line_agent.contracts import Verdict
from vision.types import DEFECT_CLASSES

# PostgreSQL text cannot hold NUL; saying so in the schema keeps clients (and Schemathesis) honest.
Text = Annotated[str, StringConstraints(max_length=2000, pattern=r"^[^\x00]*$")]
Ident = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")]
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
    lines: list[str]
    can: dict[str, bool] = Field(description="Which console actions this role may take.")


class TokenIn(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[^\x00]*$")]
    role: Literal["viewer", "operator", "supervisor", "admin"]


class TokenOut(BaseModel):
    token_id: int
    name: str
    role: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None


class TokenCreated(TokenOut):
    token: str = Field(description="The token itself: shown once, stored hashed.")


# ---- line and commands ----------------------------------------------------------------------------
class CauseOut(BaseModel):
    """Why the line is in its state: the last command (who, why) or what the PLC reported."""

    action: str = Field(description="start / stop / slow, or safe_state / estop / guard_door / stopped_at_plc.")
    actor: str = Field(description="user:<name>, runtime:<line> (a rule), plc:<line>, or demo:simulated-operator.")
    reason: str
    ts: float = Field(description="Epoch seconds.")


class CameraOut(BaseModel):
    state: str = Field(description="connected / reconnecting / stalled / ended / loading_model / model_error ...")
    detail: str = ""
    model: str = ""
    frames: int = 0
    fps: float = 0.0
    last_frame_ts: float | None = Field(default=None, description="Epoch seconds of the last frame read.")


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
    cls: DefectClass
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
    hours: float = Field(default=8.0, gt=0, le=168, description="Window length, ending now.")
    lang: Literal["en", "zh"] = "en"


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
