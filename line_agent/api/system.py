"""Probes, metrics, login and tokens, and the live event stream for the console."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg.rows import dict_row

from line_agent.api.auth import ErrorOut, Principal, Role, guarded, hash_token, lookup, new_token, principal, public
from line_agent.api.control import COMMAND_ROLES
from line_agent.api.db import audit, deps_of, fetch_all, pool_of
from line_agent.api.schemas import HealthOut, LiveEvent, LoginIn, MeOut, ReadyOut, TokenCreated, TokenIn, TokenOut
from line_agent.contracts import contract_schemas

router = APIRouter()
HEARTBEAT_S = 15.0


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
async def metrics() -> Response:
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
    return MeOut(name=p.name, role=p.role.value, lines=list(deps_of(request).lines), can=_can(p.role))


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


@router.get("/api/tokens", response_model=list[TokenOut], tags=["auth"], summary="List API tokens",
            **guarded(Role.admin))
async def list_tokens(request: Request) -> list[TokenOut]:
    rows = await fetch_all(request, "SELECT token_id, name, role, created_at, created_by, revoked_at FROM api_tokens"
                                    " ORDER BY token_id")
    return [TokenOut.model_validate(r) for r in rows]


@router.post("/api/tokens", response_model=TokenCreated, status_code=201, tags=["auth"],
             summary="Create an API token (shown once)", **guarded(Role.admin))
async def create_token(request: Request, body: TokenIn, who: Principal = Depends(principal)) -> TokenCreated:
    token = new_token()
    async with pool_of(request).connection() as conn, conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "INSERT INTO api_tokens (name, token_hash, role, created_by) VALUES (%s, %s, %s, %s)"
            " RETURNING token_id, name, role, created_at, created_by, revoked_at",
            (body.name, hash_token(token), body.role, who.name))
        row = await cur.fetchone()
        assert row is not None
        await audit(conn, who, "token.create", f"token:{row['token_id']}", None,
                    {"name": body.name, "role": body.role}, "ok")
    return TokenCreated(**row, token=token)


@router.delete("/api/tokens/{token_id}", response_model=TokenOut, tags=["auth"], summary="Revoke an API token",
               **guarded(Role.admin, {404: {"model": ErrorOut, "description": "No such token."}}))
async def revoke_token(request: Request, token_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
                       who: Principal = Depends(principal)) -> TokenOut:
    async with pool_of(request).connection() as conn, conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE token_id = %s"
            " RETURNING token_id, name, role, created_at, created_by, revoked_at", (token_id,))
        row = await cur.fetchone()
        if row is None:
            raise HTTPException(404, f"no token {token_id}")
        await audit(conn, who, "token.revoke", f"token:{token_id}", None, {"revoked": True}, "ok")
    request.app.state.token_cache.clear()
    return TokenOut.model_validate(row)


# ---- live -----------------------------------------------------------------------------------------
@router.get("/api/live/snapshot", response_model=list[LiveEvent], tags=["live"],
            summary="Latest live event of each kind", **guarded(Role.viewer))
async def live_snapshot(request: Request) -> list[LiveEvent]:
    return [LiveEvent.model_validate(e) for e in deps_of(request).hub.snapshot()]


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@router.get("/api/live/events", tags=["live"], summary="Live events (Server-Sent Events)",
            description="`text/event-stream`: the latest event of each kind first, then every event as it is "
                        "published (inspection, counters, line_state, frame, ...). A comment line every 15 s keeps "
                        "proxies from closing it. `max_s` > 0 ends the stream after that many seconds.",
            response_class=StreamingResponse,
            **guarded(Role.viewer, {200: {"content": {"text/event-stream": {}}, "description": "Event stream."}}))
async def live_events(request: Request, max_s: Annotated[float, Query(ge=0, le=86400)] = 0) -> StreamingResponse:
    hub = deps_of(request).hub

    async def stream() -> AsyncIterator[bytes]:
        sub = hub.subscribe()
        loop = asyncio.get_running_loop()
        end = loop.time() + max_s if max_s > 0 else None
        try:
            for e in hub.snapshot():
                yield _sse(e["kind"], e["data"])
            last_sent = loop.time()
            while end is None or loop.time() < end:
                if await request.is_disconnected():
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
                last_sent = loop.time()
                yield _sse(kind, data)
        finally:
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
                                                                   "may share a name).")] = None) -> Response:
    f = deps_of(request).hub.latest_frame(camera, line)
    if f is None:
        raise HTTPException(404, f"no frame from camera {camera!r} yet")
    return Response(f.jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store", "X-Seq": str(f.seq)})
