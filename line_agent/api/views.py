"""Read-mostly routes: the defect review gallery and label corrections, telemetry charts, summaries, models."""

from __future__ import annotations

import asyncio
import inspect as pyinspect
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import psycopg
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from line_agent.api.auth import ErrorOut, Principal, Role, guarded, principal, unprocessable
from line_agent.api.control import Limit, Offset, check_line, line_filter, resolve_line
from line_agent.api.db import audit, deps_of, fetch_all, fetch_one, pool_of
from line_agent.api.deps import ApiDeps
from line_agent.api.schemas import (
    CameraClassesOut,
    CameraModelOut,
    DecisionKind,
    DefectOut,
    DefectRateRow,
    DowntimeEpisodeOut,
    DowntimeOut,
    EnergyPoint,
    FaultRow,
    Ident,
    InspectionDetail,
    InspectionOut,
    InspectionPage,
    LabelsIn,
    LabelsOut,
    ModelsOut,
    ModelVersionOut,
    Series,
    ShiftRow,
    SummaryIn,
    SummaryOut,
)
from line_agent.frames import FrameKind, FramePathError, find_frame
from line_agent.store import queries

log = logging.getLogger(__name__)
router = APIRouter()
T = TypeVar("T")

InspectionId = Annotated[str, PathParam(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]
Hours = Annotated[float, Query(gt=0, le=2160, description="Window length in hours, ending at `until`.")]
Until = Annotated[datetime | None, Query(description="Window end (default now; naive = UTC).")]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "No such inspection."}}


def _utc(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    if not 1971 <= t.year <= 9000:
        raise unprocessable(("query", "until"), f"time {t.isoformat()} is out of range (1971..9000)")
    return t


def window(hours: float, until: datetime | None) -> tuple[datetime, datetime]:
    end = _utc(until) or datetime.now(UTC)
    return end - timedelta(hours=hours), end


# ---- gallery --------------------------------------------------------------------------------------
_INSPECTION_COLS = """
    i.inspection_id, i.ts, i.line, i.camera, i.part_id, i.decision, i.override, i.n_defects, i.latency_ms,
    i.model,
    coalesce(array(SELECT DISTINCT d.cls FROM defects d WHERE d.inspection_id = i.inspection_id ORDER BY 1),
             '{}') AS classes,
    EXISTS (SELECT 1 FROM label_corrections c WHERE c.inspection_id = i.inspection_id) AS corrected
"""


def _inspection(row: dict[str, Any], deps: ApiDeps) -> dict[str, Any]:
    out = dict(row)
    out["has_frame"] = _frame_file(deps, row) is not None or _hub_frame(
        deps, str(row["inspection_id"]), str(row["camera"])) is not None
    return out


def _frame_file(deps: ApiDeps, row: dict[str, Any], kind: FrameKind = "test") -> Path | None:
    """The kept frame (or golden template) of an inspection row, found by line, camera, id and time only.

    ``inspections.frame_path`` is never read: it comes from a message, and a path from a message must not
    decide which file the API opens. ``find_frame`` checks the names and that the file lies inside
    ``frames_dir``; a missing (or unsafe) file is "no frame"."""
    if deps.frames_dir is None:
        return None
    try:
        return find_frame(deps.frames_dir, str(row["line"]), str(row["camera"]), str(row["inspection_id"]),
                          row["ts"].timestamp(), kind)
    except (FramePathError, OSError):  # e.g. a link inside frames_dir that points outside it
        return None


def _hub_frame(deps: ApiDeps, inspection_id: str, camera: str, line: str | None = None) -> bytes | None:
    f = deps.hub.latest_frame(camera, line)
    if f is not None and str(f.meta.get("inspection_id", "")) == inspection_id:
        return f.jpeg
    return None


@router.get("/api/inspections", response_model=InspectionPage, tags=["review"], summary="Defect review gallery",
            description="Newest first; filter by defect class, decision (after override), camera and time.",
            **guarded(Role.viewer))
async def list_inspections(
    request: Request, limit: Limit = 48, offset: Offset = 0, line: Ident | None = None,
    camera: Ident | None = None,
    cls: Annotated[Ident | None, Query(description="A defect class of the camera's model (any product's classes).")]
    = None,
    decision: Annotated[DecisionKind | None, Query(description="The decision in force (after an override).")] = None,
    model_decision: Annotated[DecisionKind | None, Query(description="The model's own decision, overridden or not: "
                                                                     "a reject a person overrode to pass still "
                                                                     "matches reject here.")] = None,
    overridden: Annotated[bool | None, Query(description="Only parts a person overrode (true) or not (false).")]
    = None,
    since: Until = None, until: Until = None, who: Principal = Depends(principal),
) -> InspectionPage:
    deps = deps_of(request)
    rows = await fetch_all(
        request,
        f"SELECT {_INSPECTION_COLS}, count(*) OVER () AS total FROM inspections i"
        " WHERE (%(lines)s::text[] IS NULL OR i.line = ANY(%(lines)s))"
        " AND (%(cam)s::text IS NULL OR i.camera = %(cam)s)"
        " AND (%(d)s::text IS NULL OR coalesce(i.override, i.decision) = %(d)s)"
        " AND (%(md)s::text IS NULL OR i.decision = %(md)s)"
        " AND (%(ov)s::boolean IS NULL OR (i.override IS NOT NULL) = %(ov)s)"
        " AND (%(since)s::timestamptz IS NULL OR i.ts >= %(since)s)"
        " AND (%(until)s::timestamptz IS NULL OR i.ts < %(until)s)"
        " AND (%(cls)s::text IS NULL OR EXISTS (SELECT 1 FROM defects d WHERE d.inspection_id = i.inspection_id"
        "      AND d.cls = %(cls)s))"
        " ORDER BY i.ts DESC, i.inspection_id LIMIT %(limit)s OFFSET %(offset)s",
        {"lines": line_filter(who, line), "cam": camera, "d": decision, "md": model_decision, "ov": overridden,
         "since": _utc(since), "until": _utc(until), "cls": cls, "limit": limit, "offset": offset},
    )
    total = int(rows[0]["total"]) if rows else 0
    items = await run_in_threadpool(lambda: [_inspection(r, deps) for r in rows])  # file checks off the loop
    return InspectionPage(items=[InspectionOut.model_validate(r) for r in items], total=total)


async def _get_inspection(request: Request, inspection_id: str, who: Principal) -> dict[str, Any]:
    """The inspection row; 404 when there is none, 403 when it lies on a line outside the caller's token."""
    row = await fetch_one(request, f"SELECT {_INSPECTION_COLS} FROM inspections i WHERE i.inspection_id = %s",
                          (inspection_id,))
    if row is None:
        raise HTTPException(404, f"no inspection {inspection_id!r}")
    check_line(who, str(row["line"]), f"inspection {inspection_id}")
    return row


@router.get("/api/inspections/{inspection_id}", response_model=InspectionDetail, tags=["review"],
            summary="One inspection with its defects and label corrections", **guarded(Role.viewer, _NOT_FOUND))
async def get_inspection(request: Request, inspection_id: InspectionId,
                         who: Principal = Depends(principal)) -> InspectionDetail:
    deps = deps_of(request)
    found = await _get_inspection(request, inspection_id, who)
    row = await run_in_threadpool(_inspection, found, deps)
    defects = await fetch_all(
        request, "SELECT idx, cls, confidence, x1, y1, x2, y2 FROM defects WHERE inspection_id=%s ORDER BY idx",
        (inspection_id,))
    corrections = await fetch_all(
        request, "SELECT correction_id, ts, actor, labels, sample_path FROM label_corrections"
        " WHERE inspection_id=%s ORDER BY correction_id", (inspection_id,))
    row["defects"] = [DefectOut(idx=d["idx"], cls=d["cls"], confidence=d["confidence"],
                                box=[d["x1"], d["y1"], d["x2"], d["y2"]]) for d in defects]
    row["corrections"] = [{**c, "ts": c["ts"].isoformat()} for c in corrections]
    return InspectionDetail.model_validate(row)


_IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".bmp": "image/bmp"}


@router.get("/api/inspections/{inspection_id}/frame", tags=["review"], summary="The inspected frame image",
            response_class=Response,
            **guarded(Role.viewer, {200: {"content": {"image/jpeg": {}, "image/png": {}}, "description": "Image."},
                                    404: {"model": ErrorOut, "description": "No such inspection or no frame."}}))
async def get_frame(request: Request, inspection_id: InspectionId,
                    who: Principal = Depends(principal)) -> Response:
    deps = deps_of(request)
    row = await _get_inspection(request, inspection_id, who)
    path = await run_in_threadpool(_frame_file, deps, row)
    if path is not None:
        return FileResponse(path, media_type=_IMAGE_TYPES.get(path.suffix.lower(), "application/octet-stream"))
    jpeg = _hub_frame(deps, inspection_id, str(row["camera"]), str(row["line"]))
    if jpeg is not None:
        return Response(jpeg, media_type="image/jpeg")
    raise HTTPException(404, f"no frame stored for inspection {inspection_id!r}")


def camera_classes(deps: ApiDeps, line: str, camera: str) -> tuple[str, list[str] | None]:
    """(model, classes) of the model a camera runs now, from the runtime; ("", None) when none serves it."""
    status = deps.line_status(line) if deps.line_status is not None else None
    cam = ((status or {}).get("cameras") or {}).get(camera) or {}
    classes = [str(c) for c in cam.get("classes") or []]
    return str(cam.get("model") or ""), (classes or None)


@router.get("/api/cameras/{camera}/classes", response_model=CameraClassesOut, tags=["review"],
            summary="The classes of the model a camera runs (what the label editor offers)",
            **guarded(Role.viewer))
async def get_camera_classes(request: Request, camera: Annotated[str, PathParam(
        min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")], line: Ident | None = None,
        who: Principal = Depends(principal)) -> CameraClassesOut:
    from vision.types import DEFECT_CLASSES

    deps = deps_of(request)
    line_ = resolve_line(deps, line, who)
    model, classes = camera_classes(deps, line_, camera)
    return CameraClassesOut(line=line_, camera=camera, model=model, classes=classes or list(DEFECT_CLASSES),
                            source="runtime" if classes else "default")


def _save_training_sample(deps: ApiDeps, row: dict[str, Any], frame: Path | None, jpeg: bytes | None,
                          labels: Sequence[tuple[str, float, float, float, float]]) -> str:
    """Write the frame and its corrected labels into the training set (vision.feedback: DeepPCB layout)."""
    import cv2
    import numpy as np

    from vision.feedback import save_feedback
    from vision.types import Box, Frame, Label

    if frame is not None:
        image = cv2.imread(str(frame), cv2.IMREAD_UNCHANGED)
    else:
        image = cv2.imdecode(np.frombuffer(jpeg or b"", np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise HTTPException(409, "the stored frame cannot be decoded")
    h, w = image.shape[:2]
    for cls, x1, y1, x2, y2 in labels:
        if x2 > w or y2 > h:
            raise unprocessable(("body", "labels"),
                                f"{cls} box ({x1:g},{y1:g},{x2:g},{y2:g}) lies outside the {w}x{h} frame")
    template = None
    if frame is not None:  # DeepPCB pairs the test image with its golden template, kept beside it
        t = _frame_file(deps, row, "temp")
        if t is not None:
            template = cv2.imread(str(t), cv2.IMREAD_UNCHANGED)
    f = Frame(camera=str(row["camera"]), seq=0, ts=row["ts"].timestamp(), image=image.astype(np.uint8, copy=False),
              template=None if template is None else template.astype(np.uint8, copy=False),
              part_id=str(row["part_id"]))
    # The camera's model's classes (any product); the six PCB classes when no runtime says otherwise.
    _model, classes = camera_classes(deps, str(row["line"]), str(row["camera"]))
    sample = save_feedback(deps.training_dir, f, [Label(Box(x1, y1, x2, y2), cls) for cls, x1, y1, x2, y2 in labels],
                           note=f"inspection {row['inspection_id']}", classes=classes)
    return str(sample.image_path)


@router.post("/api/inspections/{inspection_id}/labels", response_model=LabelsOut, status_code=201, tags=["review"],
             summary="Send corrected labels to the training set",
             description="The complete corrected label set for the frame; written in DeepPCB layout under the "
                         "training directory and audited.",
             **guarded(Role.operator, {**_NOT_FOUND, 409: {"model": ErrorOut, "description": "No frame to label."}}))
async def save_labels(request: Request, inspection_id: InspectionId, body: LabelsIn,
                      who: Principal = Depends(principal)) -> LabelsOut:
    deps = deps_of(request)
    row = await _get_inspection(request, inspection_id, who)
    frame = await run_in_threadpool(_frame_file, deps, row)
    jpeg = None if frame is not None else _hub_frame(deps, inspection_id, str(row["camera"]), str(row["line"]))
    if frame is None and jpeg is None:
        raise HTTPException(409, f"no frame stored for inspection {inspection_id!r}")
    labels = [(b.cls, b.x1, b.y1, b.x2, b.y2) for b in body.labels]
    try:
        path = await run_in_threadpool(_save_training_sample, deps, row, frame, jpeg, labels)
    except ValueError as exc:  # vision.feedback's own checks
        raise unprocessable(("body", "labels"), str(exc)) from exc
    as_json = [{"cls": c, "box": [x1, y1, x2, y2]} for c, x1, y1, x2, y2 in labels]
    async with pool_of(request).connection() as conn, conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "INSERT INTO label_corrections (inspection_id, actor, labels, sample_path) VALUES (%s, %s, %s, %s)"
            " RETURNING correction_id", (inspection_id, who.name, Jsonb(as_json), path))
        rec = await cur.fetchone()
        assert rec is not None
        await cur.execute("SELECT cls, x1, y1, x2, y2 FROM defects WHERE inspection_id=%s ORDER BY idx",
                          (inspection_id,))
        before = [{"cls": d["cls"], "box": [d["x1"], d["y1"], d["x2"], d["y2"]]} for d in await cur.fetchall()]
        await audit(conn, who, "labels.save", f"inspection:{inspection_id}", before, as_json, "ok",
                    {"sample_path": path, "line": row["line"]})
    return LabelsOut(correction_id=rec["correction_id"], inspection_id=inspection_id, sample_path=path,
                     labels=len(labels))


# ---- telemetry ------------------------------------------------------------------------------------
# The numbers come from line_agent.store.queries, the same functions the agent's tools use, so the
# console's charts and the agent's summaries never disagree. Those are sync psycopg functions: they run
# in the threadpool on a small sync pool.
_BUCKETS = {"15m": 900, "hour": 3600, "day": 86400}


async def _sync(request: Request, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    pool: ConnectionPool[Any] = request.app.state.sync_pool

    def run() -> T:
        with pool.connection() as conn:
            return fn(conn, *args, **kw)

    return await run_in_threadpool(run)


def _bucket_rows(conn: psycopg.Connection[Any], deps: ApiDeps, line: str, since: datetime, until: datetime,
                 width_s: int) -> list[dict[str, Any]]:
    """Per bucket: kWh (queries.energy, all devices), parts, good parts, rejects, faults, downtime."""
    acc: dict[datetime, dict[str, Any]] = defaultdict(
        lambda: {"kwh": 0.0, "parts": 0, "good": 0, "rejects": 0, "faults": 0, "downtime_s": 0.0})
    # line_agent.energy by the line's meters (the plant default / documented contract: each device's counter,
    # else its power); deps.energy_metric only when a deployment set a non-default one.
    legacy = deps.energy_metric != "energy_kwh" or deps.energy_source != "counter"
    for e in queries.energy(conn, line, since, until, width_s, metric=deps.energy_metric if legacy else None,
                            source=deps.energy_source if legacy else None, unit_w=deps.energy_unit_w):
        acc[e.start]["kwh"] += e.kwh
    bucket = "to_timestamp(floor(extract(epoch FROM ts) / %(w)s) * %(w)s)"
    p = {"line": line, "s": since, "u": until, "w": width_s}
    cur = conn.cursor(row_factory=dict_row)
    cur.execute(
        f"SELECT {bucket} AS t, count(*) AS parts,"
        " count(*) FILTER (WHERE coalesce(override, decision) = 'pass') AS good,"
        " count(*) FILTER (WHERE coalesce(override, decision) <> 'pass') AS rejects"
        " FROM inspections WHERE line = %(line)s AND ts >= %(s)s AND ts < %(u)s GROUP BY 1", p)
    for r in cur.fetchall():
        a = acc[r["t"].astimezone(UTC)]
        a["parts"], a["good"], a["rejects"] = int(r["parts"]), int(r["good"]), int(r["rejects"])
    cur.execute(
        f"SELECT {bucket} AS t, count(*) AS n, coalesce(sum(duration_s), 0) AS down FROM events"
        " WHERE line = %(line)s AND kind = 'fault' AND ts >= %(s)s AND ts < %(u)s GROUP BY 1", p)
    for r in cur.fetchall():
        a = acc[r["t"].astimezone(UTC)]
        a["faults"], a["downtime_s"] = int(r["n"]), float(r["down"])
    return [{"t": t, **a} for t, a in sorted(acc.items())]


@router.get("/api/telemetry/energy", response_model=Series[EnergyPoint], tags=["telemetry"],
            summary="Energy per interval and per good part", **guarded(Role.viewer))
async def energy(request: Request, line: Ident | None = None, hours: Hours = 24, until: Until = None,
                 bucket: Literal["15m", "hour", "day"] = "hour",
                 who: Principal = Depends(principal)) -> Series[EnergyPoint]:
    deps = deps_of(request)
    line_ = resolve_line(deps, line, who)
    since, end = window(hours, until)
    rows = await _sync(request, _bucket_rows, deps, line_, since, end, _BUCKETS[bucket])
    items = [EnergyPoint(ts=r["t"], kwh=float(r["kwh"]), good_parts=int(r["good"]),
                         kwh_per_good_part=float(r["kwh"]) / int(r["good"]) if r["good"] else None) for r in rows]
    return Series[EnergyPoint](line=line_, since=since, until=end, items=items)


@router.get("/api/telemetry/faults", response_model=Series[FaultRow], tags=["telemetry"],
            summary="Faults and downtime per machine", **guarded(Role.viewer))
async def faults(request: Request, line: Ident | None = None, hours: Hours = 24,
                 until: Until = None, who: Principal = Depends(principal)) -> Series[FaultRow]:
    line_ = resolve_line(deps_of(request), line, who)
    since, end = window(hours, until)
    counts = await _sync(request, queries.fault_counts, line_, since, end)
    per: dict[str, FaultRow] = {}
    for fc in counts:
        f = per.setdefault(fc.device, FaultRow(device=fc.device, faults=0, downtime_s=0.0, codes={}))
        f.faults += fc.count
        f.downtime_s += fc.downtime_s
        f.codes[fc.code or "-"] = f.codes.get(fc.code or "-", 0) + fc.count
    items = sorted(per.values(), key=lambda f: (-f.downtime_s, f.device))
    return Series[FaultRow](line=line_, since=since, until=end, items=items)


@router.get("/api/telemetry/defect-rate", response_model=Series[DefectRateRow], tags=["telemetry"],
            summary="Defect rate by class", description="Share of inspected parts that showed each class.",
            **guarded(Role.viewer))
async def defect_rate(request: Request, line: Ident | None = None, hours: Hours = 24,
                      until: Until = None, who: Principal = Depends(principal)) -> Series[DefectRateRow]:
    line_ = resolve_line(deps_of(request), line, who)
    since, end = window(hours, until)
    rates = await _sync(request, queries.defect_rates, line_, since, end)
    items = sorted((DefectRateRow(cls=c.cls, defects=c.defects, parts_with=c.parts_with, parts=rates.parts,
                                  rate=c.rate) for c in rates.by_class), key=lambda r: (-r.defects, r.cls))
    return Series[DefectRateRow](line=line_, since=since, until=end, items=items)


def _shift_of(deps: ApiDeps, t: datetime) -> tuple[str, str, datetime]:
    """(day, shift name, shift start) of an hour; a shift crossing midnight belongs to the day it started."""
    h = t.hour
    for s in deps.shifts:
        inside = s.start_hour <= h < s.end_hour if s.start_hour < s.end_hour else (h >= s.start_hour or h < s.end_hour)
        if inside:
            start_day = t.date() if h >= s.start_hour else (t - timedelta(days=1)).date()
            start = datetime(start_day.year, start_day.month, start_day.day, s.start_hour, tzinfo=UTC)
            return start_day.isoformat(), s.name, start
    return t.date().isoformat(), "-", t.replace(minute=0, second=0, microsecond=0)


def _calendar_shifts(conn: psycopg.Connection[Any], deps: ApiDeps, line: str, since: datetime,
                     until: datetime) -> list[ShiftRow]:
    """One row per shift of the line's calendar overlapping the window (cut at it): energy by the one energy
    computation over exactly that shift, parts and faults counted within it."""
    from line_agent import energy as energy_mod
    from line_agent.meters import shifts_between

    shifts, tz = deps.calendars[line]
    out: list[ShiftRow] = []
    for day, name, s, e in shifts_between(tuple(shifts), since, until, tz):
        kwh = energy_mod.compute(conn, line, s, e).total
        cur = conn.cursor(row_factory=dict_row)
        q = cur.execute(
            "SELECT count(*) AS parts, count(*) FILTER (WHERE coalesce(override, decision) = 'pass') AS good,"
            " count(*) FILTER (WHERE coalesce(override, decision) <> 'pass') AS rejects FROM inspections"
            " WHERE line = %(l)s AND ts >= %(s)s AND ts < %(e)s", {"l": line, "s": s, "e": e}).fetchone() or {}
        f = cur.execute(
            "SELECT count(*) AS n, coalesce(sum(duration_s), 0) AS down FROM events WHERE line = %(l)s"
            " AND kind = 'fault' AND ts >= %(s)s AND ts < %(e)s", {"l": line, "s": s, "e": e}).fetchone() or {}
        parts, good, rejects = int(q.get("parts", 0)), int(q.get("good", 0)), int(q.get("rejects", 0))
        out.append(ShiftRow(day=day.isoformat(), shift=name, start=s, parts=parts, rejects=rejects,
                            reject_rate=rejects / parts if parts else None, kwh=kwh,
                            kwh_per_good_part=kwh / good if good else None, faults=int(f.get("n", 0)),
                            downtime_s=float(f.get("down", 0.0))))
    return out


@router.get("/api/telemetry/shifts", response_model=Series[ShiftRow], tags=["telemetry"],
            summary="Shift comparison: parts, reject rate, energy per good part, faults, downtime",
            **guarded(Role.viewer))
async def shifts(request: Request, line: Ident | None = None, hours: Annotated[float, Query(
        gt=0, le=2160, description="Window length in hours.")] = 72, until: Until = None,
        who: Principal = Depends(principal)) -> Series[ShiftRow]:
    deps = deps_of(request)
    line_ = resolve_line(deps, line, who)
    since, end = window(hours, until)
    if line_ in deps.calendars:  # the line's own calendar, in the plant's time zone
        cal_items = await _sync(request, _calendar_shifts, deps, line_, since, end)
        return Series[ShiftRow](line=line_, since=since, until=end, items=cal_items)
    rows = await _sync(request, _bucket_rows, deps, line_, since, end, 3600)
    acc: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"parts": 0, "rejects": 0, "good": 0, "kwh": 0.0, "faults": 0, "downtime_s": 0.0})
    starts: dict[tuple[str, str], datetime] = {}
    for r in rows:
        day, name, start = _shift_of(deps, r["t"].astimezone(UTC))
        a = acc[(day, name)]
        starts[(day, name)] = start
        for k in ("parts", "rejects", "good", "faults"):
            a[k] += int(r[k])
        a["kwh"] += float(r["kwh"])
        a["downtime_s"] += float(r["downtime_s"])
    items = [ShiftRow(day=k[0], shift=k[1], start=starts[k], parts=a["parts"], rejects=a["rejects"],
                      reject_rate=a["rejects"] / a["parts"] if a["parts"] else None, kwh=a["kwh"],
                      kwh_per_good_part=a["kwh"] / a["good"] if a["good"] else None,
                      faults=a["faults"], downtime_s=a["downtime_s"])
             for k, a in sorted(acc.items(), key=lambda kv: starts[kv[0]])]
    return Series[ShiftRow](line=line_, since=since, until=end, items=items)


@router.get("/api/telemetry/downtime", response_model=DowntimeOut, tags=["telemetry"],
            summary="Downtime from the line itself: stops, slowdowns, safe states, with causes and durations",
            description="From the audit trail the runtime and the controller write (line_agent/downtime.py, the "
                        "same facts the agent reports): planned (a person's stop whose reason starts with "
                        "'planned') and unplanned apart.", **guarded(Role.viewer))
async def downtime(request: Request, line: Ident | None = None, hours: Hours = 24,
                   until: Until = None, who: Principal = Depends(principal)) -> DowntimeOut:
    from line_agent import downtime as dt

    line_ = resolve_line(deps_of(request), line, who)
    since, end = window(hours, until)
    d = await _sync(request, dt.read, line_, since, end)
    return DowntimeOut(
        line=line_, since=since, until=end, stopped_s=d.seconds(), planned_s=d.seconds(planned=True),
        unplanned_s=d.seconds(planned=False), slow_s=d.seconds(kind="slow"), restarts=d.restarts,
        by_cause={c: {"stops": n, "seconds": s} for c, (n, s) in d.by_cause().items()},
        episodes=[DowntimeEpisodeOut(kind=e.kind, cause=e.cause, actor=e.actor, reason=e.reason,  # type: ignore[arg-type]
                                     start=e.start, end=e.end, duration_s=e.duration_s, planned=e.planned,
                                     ongoing=e.ongoing) for e in d.episodes])


# ---- summaries ------------------------------------------------------------------------------------
_SUMMARY_COLS = ("summary_id, created_at, line, window_start, window_end, trigger, lang, backend, model, verdict,"
                 " verdict_detail, headline, prose, summary, tokens_in, tokens_out, latency_ms, cost_usd")


async def _has_summaries(request: Request) -> bool:
    row = await fetch_one(request, "SELECT to_regclass('summaries') IS NOT NULL AS ok")
    return bool(row and row["ok"])


@router.get("/api/summaries", response_model=list[SummaryOut], tags=["agent"], summary="Latest agent summaries",
            description="With the verification verdict, tokens and cost.", **guarded(Role.viewer))
async def list_summaries(request: Request, line: Ident | None = None, lang: Literal["en", "zh"] | None = None,
                         limit: Annotated[int, Query(ge=1, le=100)] = 10,
                         who: Principal = Depends(principal)) -> list[SummaryOut]:
    lines = line_filter(who, line)
    if not await _has_summaries(request):
        return []
    rows = await fetch_all(
        request,
        f"SELECT {_SUMMARY_COLS} FROM summaries WHERE (%(l)s::text[] IS NULL OR line = ANY(%(l)s))"
        " AND (%(g)s::text IS NULL OR lang = %(g)s) ORDER BY created_at DESC, summary_id DESC LIMIT %(n)s",
        {"l": lines, "g": lang, "n": limit})
    return [SummaryOut.model_validate(r) for r in rows]


@router.post("/api/summaries", response_model=SummaryOut, status_code=201, tags=["agent"],
             summary="Ask the agent for a new summary",
             description="Runs the on-demand summarizer over the last `hours`; 409 when none is configured.",
             **guarded(Role.supervisor, {409: {"model": ErrorOut, "description": "No summarizer, or it failed."}}))
async def request_summary(request: Request, body: SummaryIn, who: Principal = Depends(principal)) -> SummaryOut:
    deps = deps_of(request)
    line = resolve_line(deps, body.line, who)
    if deps.summarize is None:
        raise HTTPException(409, "no summarizer configured on this server")
    end = body.end.astimezone(UTC) if body.end else datetime.now(UTC)
    start = body.start.astimezone(UTC) if body.start else end - timedelta(hours=body.hours)
    if body.shift is not None:
        from line_agent.meters import ShiftError, shift_window

        if line not in deps.calendars or body.date is None:
            raise HTTPException(422, "a shift needs its date and a line with a shift calendar (the line YAML)")
        shifts, tz = deps.calendars[line]
        try:
            start, end = shift_window(tuple(shifts), body.shift, body.date, tz)
        except ShiftError as exc:
            raise HTTPException(422, str(exc)) from exc
    try:
        if pyinspect.iscoroutinefunction(deps.summarize):
            result = await asyncio.wait_for(deps.summarize(line=line, start=start, end=end, lang=body.lang), 300)
        else:
            result = await run_in_threadpool(deps.summarize, line=line, start=start, end=end, lang=body.lang)
    except Exception as exc:  # the agent's failure is the caller's answer, not a crash
        log.exception("summarize failed")
        # The type only: an exception's text may carry internals (URLs, paths, keys); the log has it all.
        raise HTTPException(409, f"summarizer failed ({type(exc).__name__}); see the server log") from exc
    sid = result if isinstance(result, int) else (
        result.get("summary_id") if isinstance(result, dict) else getattr(result, "summary_id", None))
    sql = f"SELECT {_SUMMARY_COLS} FROM summaries WHERE " + (
        "summary_id = %(id)s" if sid is not None else "line = %(l)s ORDER BY summary_id DESC LIMIT 1")
    row = await fetch_one(request, sql, {"id": sid, "l": line})
    if row is None:
        raise HTTPException(409, "the summarizer stored no summary")
    async with pool_of(request).connection() as conn:
        await audit(conn, who, "summary.request", line, None, {"summary_id": row["summary_id"]}, "ok",
                    {"start": start.isoformat(), "end": end.isoformat(), "lang": body.lang,
                     "cost_usd": row["cost_usd"], "line": line})
    return SummaryOut.model_validate(row)


# ---- models ---------------------------------------------------------------------------------------
def _registry_versions(registry: Path | None) -> list[ModelVersionOut]:
    if registry is None or not registry.is_dir():
        return []
    from vision import registry as reg

    out: list[ModelVersionOut] = []
    for name in reg.list_models(registry):
        for version in reg.list_versions(registry, name):
            try:
                info = reg.resolve(registry, name, version).info()
                out.append(ModelVersionOut(**{k: info[k] for k in ModelVersionOut.model_fields if k in info}))
            except Exception as exc:  # an incomplete version is listed with its problem, not hidden
                out.append(ModelVersionOut(name=name, version=version, error=str(exc)))
    return out


@router.get("/api/models", response_model=ModelsOut, tags=["models"], summary="Model registry and cameras",
            description="Every registered version with its held-out metrics, and the model each camera runs.",
            **guarded(Role.viewer))
async def models(request: Request, who: Principal = Depends(principal)) -> ModelsOut:
    deps = deps_of(request)
    versions = await run_in_threadpool(_registry_versions, deps.model_registry)
    rows = await fetch_all(
        request, "SELECT DISTINCT ON (camera) camera, model, ts FROM inspections"
        " WHERE ts > now() - interval '7 days' AND (%(lines)s::text[] IS NULL OR line = ANY(%(lines)s))"
        " ORDER BY camera, ts DESC", {"lines": line_filter(who, None)})
    # The configured cameras name no line: a token limited to lines sees those its lines' inspections show.
    seen = {str(r["camera"]) for r in rows}
    cams = {c: CameraModelOut(camera=c, model=m, source="config") for c, m in deps.camera_models.items()
            if who.all_lines or c in seen}
    for r in rows:
        if r["camera"] not in cams:
            cams[r["camera"]] = CameraModelOut(camera=r["camera"], model=r["model"], source="inspections",
                                               last_seen=r["ts"])
        else:
            cams[r["camera"]].last_seen = r["ts"]
    return ModelsOut(registry=str(deps.model_registry) if deps.model_registry else None, versions=versions,
                     cameras=sorted(cams.values(), key=lambda c: c.camera))
