"""Line state, part decisions, commands (with confirmation and idempotency), overrides and the audit trail."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from line_agent.api.auth import ErrorOut, Principal, Role, guarded, line_refused, principal, unprocessable
from line_agent.api.db import audit, deps_of, fetch_all, fetch_one, jsonable, pool_of
from line_agent.api.deps import ApiDeps, LineControl
from line_agent.api.schemas import (
    AuditRow,
    AuditRowPage,
    CameraOut,
    CauseOut,
    CommandIn,
    CommandOut,
    CommandPage,
    DecisionIn,
    DecisionOut,
    DecisionPage,
    Ident,
    IsoTime,
    LineStateOut,
    OverrideIn,
    SlowIn,
)
from line_agent.contracts import Verdict

log = logging.getLogger(__name__)
router = APIRouter()

CONTROLLER_TIMEOUT_S = 5.0
MAX_ID = 2**63 - 1
CommandName = Literal["stop", "start", "slow", "reset-rejects"]
# Who may issue each command: anyone on the line may stop it; changing how it runs needs a supervisor.
COMMAND_ROLES: dict[str, Role] = {
    "stop": Role.operator, "start": Role.supervisor, "slow": Role.supervisor, "reset-rejects": Role.supervisor,
}

Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="Rows to skip.")]


def resolve_line(deps: ApiDeps, line: str | None, who: Principal | None = None) -> str:
    """The line a request is about: the one it names (422 when this API does not serve it), else the first line.

    With ``who``, the caller's token must cover the line (403 naming its lines otherwise), and "the first line"
    is the first one the token may see."""
    if line is None:
        if who is None:
            return deps.lines[0]
        seen = who.visible(deps.lines)
        if not seen:
            raise HTTPException(403, f"token {who.name!r} is limited to {who.scope_text()}; this server runs none "
                                     f"of them ({', '.join(deps.lines)})")
        return seen[0]
    if line not in deps.lines:
        raise unprocessable(("query", "line"), f"unknown line {line!r}; this API serves {deps.lines}")
    if who is not None:
        check_line(who, line)
    return line


def line_filter(who: Principal, line: str | None) -> list[str] | None:
    """The lines a list endpoint returns rows of: the one asked for (403 when outside the token's lines), else
    the token's lines; None = no filter (an all-lines token that named no line). Bind it as
    ``(%(lines)s::text[] IS NULL OR line = ANY(%(lines)s))``."""
    if line is not None:
        check_line(who, line)
        return [line]
    return None if who.lines is None else list(who.lines)


def check_line(who: Principal, line: str, what: str = "") -> None:
    """403 when ``line`` is outside the token's lines: a line the request names, or the line of a row it names
    by id (``what``: an inspection, a decision, an alarm)."""
    if not who.may(line):
        raise line_refused(who, line, what)


def _refusal_types() -> tuple[type[BaseException], ...]:
    # hardware/ is optional for the API: without it only our own timeout counts as a refusal.
    types: list[type[BaseException]] = [TimeoutError]
    try:
        from hardware.driver import PlcUnavailable
        from hardware.safety import CommandRefused
        from hardware.tags import WriteRefused

        types += [CommandRefused, WriteRefused, PlcUnavailable]
    except ImportError:
        pass
    return tuple(types)


REFUSALS = _refusal_types()


def refusal_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        reason = f"controller did not answer within {CONTROLLER_TIMEOUT_S:g} s; line state unknown"
    return str(reason)


def normalize_state(line: str, raw: Any) -> LineStateOut:
    """A controller's line state (LineState dataclass, mapping or object) in the API's shape."""
    d = jsonable(raw.as_dict() if hasattr(raw, "as_dict") else raw)
    if not isinstance(d, dict):
        d = {"value": d}

    def pick(*keys: str) -> Any:
        return next((d[k] for k in keys if d.get(k) is not None), None)

    state = str(pick("mode", "state") or "unknown")
    if state not in ("running", "stopped", "unknown"):
        state = "unknown"
    speed = pick("speed_setpoint", "speed_pct", "speed")
    rc = pick("reject_count", "reject_counter")
    return LineStateOut(
        line=line,
        state=state,  # type: ignore[arg-type]
        estop=_opt_bool(pick("estop_active", "estop", "e_stop")),
        guard_door=_opt_bool(pick("guard_door_open", "guard_door", "guard_open")),
        safe_state=_opt_bool(pick("safe_state")),
        speed_pct=float(speed) if isinstance(speed, int | float) else None,
        reject_count=int(rc) if isinstance(rc, int | float) else None,
        reason=str(pick("error", "reason") or ("" if state != "unknown" else f"link {d.get('link', 'down')}")),
        inputs=d,
        ts=datetime.now(UTC),
    )


def _opt_bool(v: Any) -> bool | None:
    return None if v is None else bool(v)


async def read_state(deps: ApiDeps, line: str) -> LineStateOut:
    ctl = deps.controller_for(line)
    if ctl is None:
        return LineStateOut(line=line, state="unknown", reason="no PLC controller connected", ts=datetime.now(UTC))
    try:
        raw = await asyncio.wait_for(ctl.line_state(), CONTROLLER_TIMEOUT_S)
    except Exception as exc:  # a broken link is "unknown", never "good"
        out = LineStateOut(line=line, state="unknown", reason=f"state read failed: {refusal_reason(exc)}",
                           ts=datetime.now(UTC))
    else:
        out = normalize_state(line, raw)
    status = deps.line_status(line) if deps.line_status is not None else None
    if status:
        # The runtime knows why (the command and who gave it, the rule, the safe state) and how the cameras are.
        cause = status.get("cause")
        out.cause = CauseOut.model_validate(cause) if cause else None
        out.cameras = {k: CameraOut.model_validate(v) for k, v in (status.get("cameras") or {}).items()}
        if out.cause is not None and out.state != "unknown" and not out.reason:
            out.reason = out.cause.reason
    return out


@router.get("/api/line/state", response_model=LineStateOut, tags=["line"], summary="Line state",
            description="running / stopped / unknown with e-stop, guard door, speed and reject count. "
                        "Unknown whenever the PLC link is down: never reported as good.",
            **guarded(Role.viewer))
async def line_state(request: Request, line: Ident | None = None,
                     who: Principal = Depends(principal)) -> LineStateOut:
    deps = deps_of(request)
    return await read_state(deps, resolve_line(deps, line, who))


# ---- commands -------------------------------------------------------------------------------------
def _command_out(row: dict[str, Any]) -> dict[str, Any]:
    return jsonable(CommandOut.model_validate(row).model_dump())


async def _invoke(ctl: LineControl, command: str, params: dict[str, Any], who: Principal, reason: str) -> Any:
    # The person and their reason travel down to the PLC write's own audit record and the line's cause.
    actor = f"user:{who.name}"
    if command == "stop":
        return await ctl.stop(actor=actor, reason=reason)
    if command == "start":
        return await ctl.start(actor=actor, reason=reason)
    if command == "slow":
        return await ctl.slow(float(params["speed_pct"]), actor=actor, reason=reason)
    return await ctl.reset_reject_counter()


async def run_command(
    request: Request, command: str, body: CommandIn, key: str, who: Principal
) -> JSONResponse:
    """Run a command once per idempotency key; a replay gets the first result back unchanged."""
    deps = deps_of(request)
    line = resolve_line(deps, body.line, who)
    params = body.model_dump(exclude={"confirm", "line", "reason"})
    req_hash = hashlib.sha256(
        json.dumps({"c": command, "line": line, "p": params, "r": body.reason}, sort_keys=True).encode()
    ).hexdigest()
    pool = pool_of(request)
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "INSERT INTO commands (idempotency_key, request_hash, line, command, params, actor)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (idempotency_key) DO NOTHING RETURNING command_id",
            (key, req_hash, line, command, Jsonb(params), who.name),
        )
        mine = await cur.fetchone()
    if mine is None:
        return await _replay(request, key, req_hash)
    command_id = int(mine["command_id"])
    ctl = deps.controller_for(line)
    before = await read_state(deps, line)
    status, reason, http = "ok", "", 200
    if ctl is None:
        status, reason, http = "refused", "no PLC controller connected: line state unknown", 409
    else:
        try:
            await asyncio.wait_for(_invoke(ctl, command, params, who, body.reason), CONTROLLER_TIMEOUT_S)
        except REFUSALS as exc:
            status, reason, http = "refused", refusal_reason(exc), 409
        except Exception as exc:  # the PLC did something unexpected: say so, keep serving
            log.exception("command %s failed", command)
            status, reason, http = "error", f"controller error: {refusal_reason(exc)}", 502
    after = await read_state(deps, line)
    b, a = jsonable(before.model_dump()), jsonable(after.model_dump())
    async with pool.connection() as conn, conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "UPDATE commands SET status=%s, reason=%s, state_before=%s, state_after=%s, http_status=%s,"
            " finished_at=now() WHERE command_id=%s RETURNING *",
            (status, reason, Jsonb(b), Jsonb(a), http, command_id),
        )
        row = await cur.fetchone()
        assert row is not None
        # The first answer is read back from the stored copy, so replays are byte-identical to it.
        await cur.execute("UPDATE commands SET response=%s WHERE command_id=%s RETURNING response",
                          (Jsonb(_command_out(row)), command_id))
        stored = await cur.fetchone()
        assert stored is not None
        out = stored["response"]
        await audit(conn, who, f"command.{command}", line, b, a, status,
                    {"command_id": command_id, "params": params, "reason": reason or body.reason,
                     "idempotency_key": key})
    return JSONResponse(out, status_code=http)


async def _replay(request: Request, key: str, req_hash: str) -> JSONResponse:
    deadline = time.monotonic() + CONTROLLER_TIMEOUT_S * 3
    while True:
        row = await fetch_one(request, "SELECT * FROM commands WHERE idempotency_key=%s", (key,))
        if row is None:  # cannot happen: rows are never deleted
            raise HTTPException(409, "idempotency key vanished; retry with a new key")
        if row["request_hash"] != req_hash:
            raise unprocessable(("header", "Idempotency-Key"),
                                "Idempotency-Key was already used for a different request")
        if row["status"] != "pending" and row["response"] is not None:
            return JSONResponse(row["response"], status_code=int(row["http_status"]),
                                headers={"Idempotent-Replayed": "true"})
        if time.monotonic() > deadline:
            raise HTTPException(409, "the first request with this Idempotency-Key is still running")
        await asyncio.sleep(0.05)


IdemKey = Annotated[str, Header(alias="Idempotency-Key", min_length=8, max_length=128,
                                pattern=r"^[A-Za-z0-9._:-]+$",
                                description="Unique per intended command; a replay returns the first result.")]
_CMD_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {"model": CommandOut, "description": "Refused: unsafe or unknown line state (reason given)."},
    502: {"model": CommandOut, "description": "The PLC answered unexpectedly (reason given)."},
}
_CMD_DESC = ("Requires `confirm: true` and an `Idempotency-Key` header: a replay with the same key returns the "
             "first result (header `Idempotent-Replayed: true`); the same key with another body is refused (422). "
             "Audited with the line state before and after.")


@router.post("/api/commands/stop", response_model=CommandOut, tags=["commands"], summary="Stop the line",
             description=_CMD_DESC, **guarded(COMMAND_ROLES["stop"], _CMD_RESPONSES))
async def cmd_stop(request: Request, body: CommandIn, key: IdemKey,
                   who: Principal = Depends(principal)) -> JSONResponse:
    return await run_command(request, "stop", body, key, who)


@router.post("/api/commands/start", response_model=CommandOut, tags=["commands"], summary="Start the line",
             description=_CMD_DESC + " Refused while the e-stop or guard door is active.",
             **guarded(COMMAND_ROLES["start"], _CMD_RESPONSES))
async def cmd_start(request: Request, body: CommandIn, key: IdemKey,
                    who: Principal = Depends(principal)) -> JSONResponse:
    return await run_command(request, "start", body, key, who)


@router.post("/api/commands/slow", response_model=CommandOut, tags=["commands"], summary="Set conveyor speed",
             description=_CMD_DESC, **guarded(COMMAND_ROLES["slow"], _CMD_RESPONSES))
async def cmd_slow(request: Request, body: SlowIn, key: IdemKey,
                   who: Principal = Depends(principal)) -> JSONResponse:
    return await run_command(request, "slow", body, key, who)


@router.post("/api/commands/reset-rejects", response_model=CommandOut, tags=["commands"],
             summary="Reset the reject counter", description=_CMD_DESC,
             **guarded(COMMAND_ROLES["reset-rejects"], _CMD_RESPONSES))
async def cmd_reset(request: Request, body: CommandIn, key: IdemKey,
                    who: Principal = Depends(principal)) -> JSONResponse:
    return await run_command(request, "reset-rejects", body, key, who)


@router.get("/api/commands", response_model=CommandPage, tags=["commands"], summary="List commands",
            **guarded(Role.viewer))
async def list_commands(request: Request, limit: Limit = 50, offset: Offset = 0,
                        line: Ident | None = None, who: Principal = Depends(principal)) -> CommandPage:
    where = "(%(lines)s::text[] IS NULL OR line = ANY(%(lines)s))"
    p = {"lines": line_filter(who, line), "limit": limit, "offset": offset}
    rows = await fetch_all(
        request, f"SELECT *, count(*) OVER () AS total FROM commands WHERE {where}"
        " ORDER BY command_id DESC LIMIT %(limit)s OFFSET %(offset)s", p)
    if rows:
        total = int(rows[0]["total"])
    else:  # past the last page: still the filtered count
        n = await fetch_one(request, f"SELECT count(*) AS n FROM commands WHERE {where}", p)
        total = int(n["n"]) if n else 0
    return CommandPage(items=[CommandOut.model_validate(r) for r in rows], total=total)


# ---- decisions ------------------------------------------------------------------------------------
@router.post("/api/decisions", response_model=DecisionOut, status_code=201, tags=["decisions"],
             summary="Post a part decision",
             description="Records the decision; a reject fires the reject gate through the controller. "
                         "If the controller refuses the gate the decision is still stored and the answer is 409.",
             **guarded(Role.operator, {409: {"model": DecisionOut, "description": "Stored; reject gate refused."},
                                       502: {"model": DecisionOut, "description": "Stored; PLC error."}}))
async def post_decision(request: Request, body: DecisionIn, who: Principal = Depends(principal)) -> JSONResponse:
    deps = deps_of(request)
    line = resolve_line(deps, body.line, who)
    gate, reason, http = "none", "", 201
    if body.decision == "reject":
        ctl = deps.controller_for(line)
        if ctl is None:
            gate, reason = "no_controller", "no PLC controller connected"
        else:
            try:
                await asyncio.wait_for(ctl.reject_part(body.part_id), CONTROLLER_TIMEOUT_S)
                gate = "fired"
            except REFUSALS as exc:
                gate, reason, http = "refused", refusal_reason(exc), 409
            except Exception as exc:
                log.exception("reject gate failed")
                gate, reason, http = "error", f"controller error: {refusal_reason(exc)}", 502
    async with pool_of(request).connection() as conn, conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "INSERT INTO decisions (line, part_id, inspection_id, camera, decision, actor, gate, gate_reason)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
            (line, body.part_id, body.inspection_id, body.camera, body.decision, who.name, gate, reason),
        )
        row = await cur.fetchone()
        assert row is not None
        if gate in ("refused", "error"):
            await audit(conn, who, "decision.reject_gate", body.part_id, None, {"gate": gate}, gate,
                        {"decision_id": row["decision_id"], "reason": reason})
    return JSONResponse(jsonable(DecisionOut.model_validate(row).model_dump()), status_code=http)


@router.get("/api/decisions", response_model=DecisionPage, tags=["decisions"], summary="List decisions",
            **guarded(Role.viewer))
async def list_decisions(request: Request, limit: Limit = 50, offset: Offset = 0, line: Ident | None = None,
                         decision: Verdict | None = None, who: Principal = Depends(principal)) -> DecisionPage:
    rows = await fetch_all(
        request,
        "SELECT *, count(*) OVER () AS total FROM decisions WHERE (%(lines)s::text[] IS NULL OR line = ANY(%(lines)s))"
        " AND (%(d)s::text IS NULL OR coalesce(override, decision) = %(d)s)"
        " ORDER BY decision_id DESC LIMIT %(limit)s OFFSET %(offset)s",
        {"lines": line_filter(who, line), "d": decision, "limit": limit, "offset": offset},
    )
    total = int(rows[0]["total"]) if rows else 0
    return DecisionPage(items=[DecisionOut.model_validate(r) for r in rows], total=total)


@router.post("/api/decisions/{decision_id}/override", response_model=DecisionOut, tags=["decisions"],
             summary="Override a decision",
             description="Operator override (confirm: true). Audited with the decision before and after; "
                         "the linked inspection's override is set too.",
             **guarded(Role.operator, {404: {"model": ErrorOut, "description": "No such decision."}}))
async def override_decision(request: Request, body: OverrideIn,
                            decision_id: Annotated[int, Path(ge=1, le=MAX_ID)],
                            who: Principal = Depends(principal)) -> DecisionOut:
    async with pool_of(request).connection() as conn, conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT * FROM decisions WHERE decision_id=%s FOR UPDATE", (decision_id,))
        before = await cur.fetchone()
        if before is None:
            raise HTTPException(404, f"no decision {decision_id}")
        check_line(who, str(before["line"]), f"decision {decision_id}")
        await cur.execute("UPDATE decisions SET override=%s WHERE decision_id=%s RETURNING *",
                          (body.decision, decision_id))
        after = await cur.fetchone()
        assert after is not None
        if before["inspection_id"]:
            await cur.execute("UPDATE inspections SET override=%s WHERE inspection_id=%s",
                              (body.decision, before["inspection_id"]))
        await audit(conn, who, "decision.override", f"decision:{decision_id}",
                    {"decision": before["decision"], "override": before["override"]},
                    {"decision": after["decision"], "override": after["override"]}, "ok",
                    {"reason": body.reason, "line": before["line"]})
    return DecisionOut.model_validate(after)


@router.post("/api/inspections/{inspection_id}/override", response_model=dict[str, Any], tags=["decisions"],
             summary="Override an inspection's decision",
             description="Operator override from the review gallery (confirm: true). Audited.",
             **guarded(Role.operator, {404: {"model": ErrorOut, "description": "No such inspection."}}))
async def override_inspection(request: Request, body: OverrideIn, inspection_id: Annotated[str, Path(
        min_length=1, max_length=200, pattern=r"^[^\x00]*$")], who: Principal = Depends(principal)) -> dict[str, Any]:
    async with pool_of(request).connection() as conn, conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT decision, override, line FROM inspections WHERE inspection_id=%s FOR UPDATE",
                          (inspection_id,))
        found = await cur.fetchone()
        if found is None:
            raise HTTPException(404, f"no inspection {inspection_id!r}")
        check_line(who, str(found["line"]), f"inspection {inspection_id}")
        before = {"decision": found["decision"], "override": found["override"]}
        await cur.execute("UPDATE inspections SET override=%s WHERE inspection_id=%s", (body.decision, inspection_id))
        after = {"decision": before["decision"], "override": body.decision}
        await audit(conn, who, "inspection.override", f"inspection:{inspection_id}", before, after, "ok",
                    {"reason": body.reason, "line": found["line"]})
    return {"inspection_id": inspection_id, **after}


# ---- audit ----------------------------------------------------------------------------------------
@router.get("/api/audit", response_model=AuditRowPage, tags=["audit"], summary="Audit trail",
            description="Append-only record of commands, overrides, label corrections, token changes, alarms and the "
                        "controller's PLC writes. Filters: `action` (prefix), `who` (`people`: a person, through the "
                        "API or as the actor of a PLC write; `system`: the runtime, the PLC, bootstrap), `line`, "
                        "`since` / `until`. `group=true` folds per-part PLC writes (`plc.reject_part`) into one "
                        "entry per actor, line, result and hour (`count`, `first_ts`).",
            **guarded(Role.operator))
async def list_audit(request: Request, limit: Limit = 50, offset: Offset = 0,
                     action: Annotated[str | None, Query(max_length=100, pattern=r"^[^\x00]*$")] = None,
                     who: Literal["people", "system"] | None = None, line: Ident | None = None,
                     since: IsoTime | None = None, until: IsoTime | None = None,
                     group: bool = False, who_: Principal = Depends(principal)) -> AuditRowPage:
    def iso(name: str, v: str | None) -> datetime | None:
        try:
            t = None if v is None else datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError as exc:
            raise unprocessable(("query", name), f"not a time: {exc}") from None
        return t if t is None or t.tzinfo else t.replace(tzinfo=UTC)

    people = "(role IN ('viewer', 'operator', 'supervisor', 'admin') OR actor LIKE 'user:%%')"
    where = ("(%(a)s::text IS NULL OR action LIKE %(a)s || '%%')"
             f" AND (%(who)s::text IS NULL OR (%(who)s = 'people') = {people})"
             " AND (%(lines)s::text[] IS NULL OR detail->>'line' = ANY(%(lines)s)"
             "      OR (action LIKE 'command.%%' AND target = ANY(%(lines)s)))"
             " AND (%(since)s::timestamptz IS NULL OR ts >= %(since)s)"
             " AND (%(until)s::timestamptz IS NULL OR ts < %(until)s)")
    rows = await fetch_all(
        request,
        f"WITH f AS (SELECT * FROM audit_log WHERE {where}), e AS ("
        " SELECT audit_id, ts, actor, role, action, target, before, after, result, detail, 1 AS count,"
        "  NULL::timestamptz AS first_ts FROM f WHERE NOT (%(g)s AND action = 'plc.reject_part')"
        " UNION ALL"
        " SELECT max(audit_id), max(ts), actor, max(role), action, '', NULL, NULL, result,"
        "  jsonb_build_object('line', detail->>'line', 'grouped', 'per hour'), count(*), min(ts)"
        "  FROM f WHERE %(g)s AND action = 'plc.reject_part'"
        "  GROUP BY actor, action, result, detail->>'line', date_trunc('hour', ts))"
        " SELECT *, count(*) OVER () AS total FROM e ORDER BY audit_id DESC LIMIT %(limit)s OFFSET %(offset)s",
        {"a": action, "who": who, "lines": line_filter(who_, line), "since": iso("since", since),
         "until": iso("until", until), "g": group, "limit": limit, "offset": offset},
    )
    total = int(rows[0]["total"]) if rows else 0
    return AuditRowPage(items=[AuditRow.model_validate(r) for r in rows], total=total)
