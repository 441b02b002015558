"""``create_app(deps)``: the control API and the supervisor console in one FastAPI app.

    from line_agent.api import ApiDeps, LiveHub, create_app
    hub = LiveHub()
    app = create_app(ApiDeps(database_url=url, lines=["line-1"], controller=line_controller, hub=hub,
                             model_registry=Path(".lineguard/models"), admin_token=settings.admin_token))
    uvicorn.run(app, host="127.0.0.1", port=8080)

The console is served at ``/`` from ``line_agent/console`` (plain ES modules, no external request).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout
from starlette.concurrency import run_in_threadpool

from line_agent import metrics as m
from line_agent.api import alarms, control, system, views
from line_agent.api.auth import Role, TokenCache, ensure_bootstrap_token
from line_agent.api.deps import ApiDeps
from line_agent.api.limits import AuthFailures, BodyLimit
from line_agent.store.migrate import migrate

log = logging.getLogger(__name__)

CONSOLE_DIR = Path(str(resources.files("line_agent") / "console"))
TAGS = [
    {"name": "line", "description": "Line state from the PLC controller."},
    {"name": "commands", "description": "Stop / start / slow / reset rejects: confirmed, idempotent, audited."},
    {"name": "decisions", "description": "Part decisions, the reject gate, operator overrides."},
    {"name": "audit", "description": "Append-only audit trail."},
    {"name": "review", "description": "Defect review gallery, frames, label corrections to the training set."},
    {"name": "telemetry", "description": "Energy, faults and downtime, defect rates, shift comparison."},
    {"name": "agent", "description": "Line agent summaries with their verification verdict."},
    {"name": "models", "description": "Model registry versions and the model each camera runs."},
    {"name": "live", "description": "Live events for the console (SSE) and latest frames."},
    {"name": "auth", "description": "Login and API tokens (roles viewer < operator < supervisor < admin)."},
    {"name": "system", "description": "Probes and Prometheus metrics."},
]


def create_app(deps: ApiDeps, *, controller_factory: Callable[[], Awaitable[Any]] | None = None) -> FastAPI:
    """Build the app. ``controller_factory`` (optional) creates the controller inside the server's event loop
    at startup (an asyncio Modbus client must live in the loop that uses it) and is closed at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if deps.migrate:
            applied = await run_in_threadpool(migrate, deps.database_url)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            deps.database_url, min_size=deps.pool_min, max_size=deps.pool_max, open=False,
            kwargs={"autocommit": True}, timeout=10.0)
        await pool.open(wait=True, timeout=30.0)
        app.state.pool = pool
        # Sync connections for line_agent.store.queries (run in the threadpool).
        sync_pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            deps.database_url, min_size=0, max_size=4, open=True, kwargs={"autocommit": True}, timeout=10.0)
        app.state.sync_pool = sync_pool
        if deps.admin_token:
            async with pool.connection() as conn:
                await ensure_bootstrap_token(conn, deps.admin_token, Role.admin)
        made = None
        if controller_factory is not None:
            made = await controller_factory()
            deps.controller = made
        # Pushes alarm changes to the consoles' live streams (idle while none listens).
        watcher = asyncio.create_task(app.state.alarm_watch.run(), name="alarm-watch")
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if made is not None and hasattr(made, "close"):
                res = made.close()
                if inspect.isawaitable(res):
                    # A PLC that stopped answering must not hold the server's shutdown hostage.
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(res, 5.0)
            await pool.close(timeout=5.0)
            await run_in_threadpool(sync_pool.close, 5.0)

    app = FastAPI(
        title="lineguard control API",
        version="0.1.0",
        description="Quality decisions to the line, safely: line state, confirmed and idempotent commands, "
                    "decisions and overrides, an append-only audit trail, defect review, telemetry, agent "
                    "summaries and the model registry. Every route states its minimum role in "
                    "`x-required-role`; send `Authorization: Bearer <token>`.",
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.deps = deps
    app.state.token_cache = TokenCache()
    app.state.alarm_watch = alarms.AlarmWatch(app)
    app.state.auth_failures = AuthFailures(deps.auth_fail_burst, deps.auth_fail_window_s, deps.auth_fail_clients)
    for r in (system.router, control.router, views.router, alarms.router):
        app.include_router(r)
    from line_agent.api.nodes import router as nodes_router  # GET /api/nodes: Sparkplug nodes, alive/stale/dead
    app.include_router(nodes_router)

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "other")
        m.API_REQUESTS.labels(request.method, path, str(response.status_code)).inc()
        m.API_LATENCY.labels(path).observe(time.perf_counter() - t0)
        return response

    # Outermost (added last): nothing reads a body before its size is checked.
    app.add_middleware(BodyLimit, max_bytes=deps.max_body_bytes)

    @app.exception_handler(psycopg.DataError)
    async def bad_value(request: Request, exc: psycopg.DataError) -> JSONResponse:
        # A value PostgreSQL cannot store (out of range, bad encoding) is the caller's error, not ours.
        msg = f"invalid value: {(str(exc).splitlines() or [''])[0]}"
        return JSONResponse({"detail": [{"loc": ["body"], "msg": msg, "type": "value_error"}]}, status_code=422)

    @app.exception_handler(UnicodeEncodeError)
    async def bad_text(request: Request, exc: UnicodeEncodeError) -> JSONResponse:
        msg = "text is not valid UTF-8 (lone surrogate?)"
        return JSONResponse({"detail": [{"loc": ["body"], "msg": msg, "type": "value_error"}]}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default, minus the echoed input: it may contain bytes that are not JSON-safe.
        errs = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")),
                 "type": str(e.get("type", ""))} for e in exc.errors()]
        return JSONResponse({"detail": errs}, status_code=422)

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(PoolTimeout)
    async def db_down(request: Request, exc: Exception) -> JSONResponse:
        log.error("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return JSONResponse({"detail": "database unavailable; retry later"}, status_code=503,
                            headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # Anything unexpected: a JSON 500 with a reference to the server log, never a traceback or message.
        ref = secrets.token_hex(6)
        log.error("internal error %s on %s %s", ref, request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": f"internal error (ref {ref})"}, status_code=500)

    if CONSOLE_DIR.is_dir():
        app.mount("/console", StaticFiles(directory=CONSOLE_DIR), name="console")

        @app.get("/", include_in_schema=False)
        async def index() -> FileResponse:
            return FileResponse(CONSOLE_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    return app
