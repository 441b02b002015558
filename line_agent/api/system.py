"""Probes, metrics, login and tokens, and the live event stream for the console."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg.rows import dict_row
from psycopg_pool import PoolTimeout

from line_agent.api.alarms import alarm_page, watch_of
from line_agent.api.auth import (
    ErrorOut,
    Principal,
    Role,
    guarded,
    hash_token,
    lookup,
    new_token,
    principal,
    public,
    unprocessable,
)
from line_agent.api.control import COMMAND_ROLES, line_filter, resolve_line
from line_agent.api.db import audit, deps_of, fetch_all, pool_of
from line_agent.api.schemas import HealthOut, LiveEvent, LoginIn, MeOut, ReadyOut, TokenCreated, TokenIn, TokenOut
from line_agent.contracts import contract_schemas

log = logging.getLogger(__name__)
router = APIRouter()
HEARTBEAT_S = 15.0
REAUTH_S = 5.0  # an open live stream re-checks its token this often: a revoked token's stream ends
_TOKEN_COLS = "token_id, name, role, created_at, created_by, revoked_at, lines"


@router.get("/healthz", response_model=HealthOut, tags=["system"], summary="Liveness: the process answers",
            **public())
async def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get("/readyz", response_model=ReadyOut, tags=["system"], summary="Readiness: each dependency's status",
            description="503, with the reason, when the database is unreachable or, on a running line, when the "
                        "broker is unreachable, a PLC link is down, a model failed to load or a camera "
                        "delivered no frame for too long (checks named plc:, model:, camera:, broker).",
            **public({503: {"model": ReadyOut, "description": "Not ready."}}))
async def readyz(request: Request) -> JSONResponse:
    deps = deps_of(request)
    checks: dict[str, str] = {}
    ready = True
    try:
        async with pool_of(request).connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
        ready = False
    for line in deps.lines:
        ctl = deps.controller_for(line)
        if ctl is None:
            checks[f"controller:{line}"] = "absent (line state unknown)"
            continue
        try:
            st = await asyncio.wait_for(ctl.line_state(), 2.0)
            mode = getattr(st, "mode", None) or (st.get("state") if isinstance(st, dict) else None)
            checks[f"controller:{line}"] = "ok" if mode in ("running", "stopped") else f"link down ({mode})"
        except Exception as exc:
            checks[f"controller:{line}"] = f"error: {type(exc).__name__}"
    reg = deps.model_registry
    checks["model_registry"] = "absent" if reg is None else ("ok" if reg.is_dir() else f"missing: {reg}")
    checks["summarizer"] = "ok" if deps.summarize is not None else "absent"
    checks["live_hub"] = f"ok ({deps.hub.subscribers} subscribers)"
    if deps.extra_checks is not None:
        # The line runtime's checks (broker, PLC links, cameras, models) decide readiness: a line that
        # cannot see, decide or act is not ready, whatever the database says.
        try:
            runtime = dict(deps.extra_checks())
        except Exception as exc:  # a failing probe is reported, never a 500
            runtime = {"runtime": f"error: {type(exc).__name__}: {exc}"}
        checks.update(runtime)
        failed = sorted(k for k, v in runtime.items() if not str(v).startswith("ok"))
        if failed:
            ready = False
            checks["reason"] = "; ".join(f"{k}: {runtime[k]}" for k in failed)
    return JSONResponse(ReadyOut(ready=ready, checks=checks).model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", tags=["system"], summary="Prometheus metrics", response_class=Response,
            **guarded(Role.viewer, {200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}}))
async def metrics(who: Principal = Depends(principal)) -> Response:
    if not who.all_lines:  # the metrics are the whole plant's, labelled by line: not for a token of some lines
        raise HTTPException(403, f"token {who.name!r} is limited to {who.scope_text()}; the metrics cover every "
                                 "line: use a token for every line")
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/contracts", response_model=dict[str, Any], tags=["system"],
            summary="The message contracts: verdicts, line actions, energy metrics, JSON schemas",
            description="`line_agent.contracts.contract_schemas()`: the verdict list (the console takes its "
                        "decision buttons and colours' keys from it), line actions, energy metric units and the "
                        "JSON schemas of the inspection, telemetry point and machine event messages (docs/MQTT.md).",
            **guarded(Role.viewer))
async def contracts() -> dict[str, Any]:
    return contract_schemas()


def _can(role: Role) -> dict[str, bool]:
    return {
        **{f"command:{c}": role.rank >= r.rank for c, r in COMMAND_ROLES.items()},
        "override": role.rank >= Role.operator.rank,
        "labels": role.rank >= Role.operator.rank,
        "audit": role.rank >= Role.operator.rank,
        "summary": role.rank >= Role.supervisor.rank,
        "tokens": role.rank >= Role.admin.rank,
    }


def _me(request: Request, p: Principal) -> MeOut:
    return MeOut(name=p.name, role=p.role.value, lines=p.visible(deps_of(request).lines), all_lines=p.all_lines,
                 can=_can(p.role))


@router.post("/api/login", response_model=MeOut, tags=["auth"], summary="Check a token; return its role",
             description="For the console: the token stays in the browser and is sent as a bearer token.",
             **public({401: {"model": ErrorOut, "description": "Unknown or revoked token."}}))
async def login(request: Request, body: LoginIn) -> MeOut:
    p = await lookup(request, body.token)
    if p is None:
        raise HTTPException(401, "unknown or revoked token")
    return _me(request, p)


@router.get("/api/me", response_model=MeOut, tags=["auth"], summary="Who am I", **guarded(Role.viewer))
async def me(request: Request, who: Principal = Depends(principal)) -> MeOut:
    return _me(request, who)


def _manages(who: Principal, lines: list[str] | None) -> bool:
    """May this admin see and change a token of ``lines`` (None = every line)? An admin limited to lines only
    manages tokens limited to some of its own lines: it can never make (or revoke) a token wider than itself."""
    return who.all_lines or (lines is not None and all(who.may(line) for line in lines))


@router.get("/api/tokens", response_model=list[TokenOut], tags=["auth"], summary="List API tokens",
            description="Every token with its role and lines (`lines: null` = every line). An admin limited to lines "
                        "sees only tokens limited to some of its lines.", **guarded(Role.admin))
async def list_tokens(request: Request, who: Principal = Depends(principal)) -> list[TokenOut]:
    rows = await fetch_all(request, f"SELECT {_TOKEN_COLS} FROM api_tokens ORDER BY token_id")
    return [TokenOut.model_validate(r) for r in rows if _manages(who, r["lines"])]


@router.post("/api/tokens", response_model=TokenCreated, status_code=201, tags=["auth"],
             summary="Create an API token (shown once)",
             description="With a role and, optionally, the lines it may read and act on (`lines`: names this server "
                         "runs, 422 for another; none or empty = every line). An admin limited to lines can only "
                         "create tokens limited to some of its own lines (403 otherwise). Audited as `token.create`.",
             **guarded(Role.admin))
async def create_token(request: Request, body: TokenIn, who: Principal = Depends(principal)) -> TokenCreated:
    served = deps_of(request).lines
    lines = sorted(set(body.lines)) if body.lines else None
    unknown = [x for x in lines or () if x not in served]
    if unknown:
        raise unprocessable(("body", "lines"), f"unknown line{'s' if len(unknown) > 1 else ''} "
                                               f"{', '.join(map(repr, unknown))}; this server runs {', '.join(served)}")
    if not _manages(who, lines):
        wide = "every line" if lines is None else "line " + ", ".join(x for x in lines if not who.may(x))
        raise HTTPException(403, f"token {who.name!r} is limited to {who.scope_text()}; it cannot create a token "
                                 f"for {wide}")
    token = new_token()
    async with pool_of(request).connection() as conn, conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "INSERT INTO api_tokens (name, token_hash, role, created_by, lines) VALUES (%s, %s, %s, %s, %s)"
            f" RETURNING {_TOKEN_COLS}", (body.name, hash_token(token), body.role, who.name, lines))
        row = await cur.fetchone()
        assert row is not None
        await audit(conn, who, "token.create", f"token:{row['token_id']}", None,
                    {"name": body.name, "role": body.role, "lines": lines}, "ok")
    return TokenCreated(**row, token=token)


@router.delete("/api/tokens/{token_id}", response_model=TokenOut, tags=["auth"], summary="Revoke an API token",
               description="Effective within seconds (the lookup cache); a live stream with it ends. Audited.",
               **guarded(Role.admin, {404: {"model": ErrorOut, "description": "No such token."}}))
async def revoke_token(request: Request, token_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
                       who: Principal = Depends(principal)) -> TokenOut:
    async with pool_of(request).connection() as conn, conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT lines FROM api_tokens WHERE token_id = %s FOR UPDATE", (token_id,))
        found = await cur.fetchone()
        if found is None or not _manages(who, found["lines"]):
            # A token this admin may not manage is not even confirmed to exist.
            raise HTTPException(404, f"no token {token_id}")
        await cur.execute(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE token_id = %s"
            f" RETURNING {_TOKEN_COLS}", (token_id,))
        row = await cur.fetchone()
        assert row is not None
        await audit(conn, who, "token.revoke", f"token:{token_id}", None, {"revoked": True}, "ok")
    request.app.state.token_cache.clear()
    return TokenOut.model_validate(row)


# ---- live -----------------------------------------------------------------------------------------
@router.get("/api/live/snapshot", response_model=list[LiveEvent], tags=["live"],
            summary="Latest live event of each kind", **guarded(Role.viewer))
async def live_snapshot(request: Request, who: Principal = Depends(principal)) -> list[LiveEvent]:
    return [LiveEvent.model_validate(e) for e in deps_of(request).hub.snapshot() if _mine(who, e["data"])]


def _mine(who: Principal, data: dict[str, Any]) -> bool:
    """Is a live event for this token? One limited to lines gets only events that name one of them."""
    if who.all_lines:
        return True
    line = data.get("line")
    return isinstance(line, str) and who.may(line)


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@router.get("/api/live/events", tags=["live"], summary="Live events (Server-Sent Events)",
            description="`text/event-stream`: the latest event of each kind first, then `alarms` (the active alarms, "
                        "as `GET /api/alarms` answers), then every event as it is published (inspection, counters, "
                        "line_state, frame, and `alarm`: `{line, change: raised|acknowledged|cleared|updated, alarm}` "
                        "for each alarm change, pushed within about a second). A token limited to lines gets only "
                        "its lines' events. A comment line every 15 s keeps proxies from closing it; the token is "
                        "checked again every few seconds and the stream ends once it is revoked. `max_s` > 0 ends "
                        "the stream after that many seconds.",
            response_class=StreamingResponse,
            **guarded(Role.viewer, {200: {"content": {"text/event-stream": {}}, "description": "Event stream."}}))
async def live_events(request: Request, max_s: Annotated[float, Query(ge=0, le=86400)] = 0,
                      who: Principal = Depends(principal)) -> StreamingResponse:
    hub = deps_of(request).hub
    watch = watch_of(request)
    token = request.headers.get("authorization", "").partition(" ")[2].strip()

    async def still_valid() -> bool:
        try:
            p = await lookup(request, token)
        except HTTPException:  # this address is locked out (429): the stream ends like any other request would
            return False
        except (psycopg.Error, PoolTimeout):  # cannot check now: the database is down; check again next time
            return True
        return p is not None and p.role == who.role and p.lines == who.lines

    async def stream() -> AsyncIterator[bytes]:
        sub = hub.subscribe()  # before the snapshots: nothing published meanwhile is lost
        watch.streams += 1
        watch.kick()
        loop = asyncio.get_running_loop()
        end = loop.time() + max_s if max_s > 0 else None
        try:
            for e in hub.snapshot():
                if _mine(who, e["data"]):
                    yield _sse(e["kind"], e["data"])
            try:
                page = await alarm_page(request, line_filter(who, None), "active", limit=200)
                yield _sse("alarms", page.model_dump(mode="json"))
            except (psycopg.Error, PoolTimeout) as exc:  # the console keeps polling until it gets the list
                log.warning("live stream: alarms unavailable (%s)", type(exc).__name__)
            last_sent = checked = loop.time()
            while end is None or loop.time() < end:
                if await request.is_disconnected():
                    break
                if loop.time() - checked >= REAUTH_S:
                    checked = loop.time()
                    if not await still_valid():
                        break
                # Wake at least once a second to notice a closed connection or the end of max_s.
                wait = 1.0 if end is None else max(0.0, min(1.0, end - loop.time()))
                try:
                    kind, data = await asyncio.wait_for(sub.queue.get(), timeout=wait)
                except TimeoutError:
                    if loop.time() - last_sent >= HEARTBEAT_S:
                        last_sent = loop.time()
                        yield b": keep-alive\n\n"
                    continue
                if not _mine(who, data):
                    continue
                last_sent = loop.time()
                yield _sse(kind, data)
        finally:
            watch.streams -= 1
            hub.unsubscribe(sub)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/api/live/frame/{camera}", tags=["live"], summary="Latest frame of a camera (JPEG)",
            response_class=Response,
            **guarded(Role.viewer, {200: {"content": {"image/jpeg": {}}, "description": "JPEG."},
                                    404: {"model": ErrorOut, "description": "No frame from this camera yet."}}))
async def live_frame(request: Request, camera: Annotated[str, Path(min_length=1, max_length=128)],
                     line: Annotated[str | None, Query(min_length=1, max_length=128,
                                                       description="The camera's line (cameras of two lines "
                                                                   "may share a name).")] = None,
                     who: Principal = Depends(principal)) -> Response:
    deps = deps_of(request)
    if line is not None:
        resolve_line(deps, line, who)  # 422 unknown, 403 outside the token's lines
        f = deps.hub.latest_frame(camera, line)
    elif who.all_lines:
        f = deps.hub.latest_frame(camera)
    else:  # the newest frame of a camera of that name on the token's lines
        frames = [x for x in (deps.hub.latest_frame(camera, ln) for ln in who.visible(deps.lines)) if x is not None]
        f = max(frames, key=lambda x: x.seq) if frames else None
    if f is None:
        raise HTTPException(404, f"no frame from camera {camera!r} yet")
    return Response(f.jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store", "X-Seq": str(f.seq)})
