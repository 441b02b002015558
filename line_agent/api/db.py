"""Database helpers for the API: the async pool, JSON-safe rows, and the audit writer."""

from __future__ import annotations

import dataclasses
import json
from datetime import date, datetime
from enum import Enum
from typing import Any, Protocol

from fastapi import Request
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from line_agent.api.auth import Principal
from line_agent.api.deps import ApiDeps


class HasApp(Protocol):
    """A request, or anything else that knows the app (the alarm watcher works without a request)."""

    @property
    def app(self) -> Any: ...


def pool_of(request: HasApp) -> AsyncConnectionPool[AsyncConnection[Any]]:
    pool: AsyncConnectionPool[AsyncConnection[Any]] = request.app.state.pool
    return pool


def deps_of(request: HasApp) -> ApiDeps:
    deps: ApiDeps = request.app.state.deps
    return deps


async def fetch_all(request: Request, sql: str, params: dict[str, Any] | tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    async with pool_of(request).connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(sql, params)  # SQL text is ours, values are bound
        return await cur.fetchall()


async def fetch_one(request: Request, sql: str, params: dict[str, Any] | tuple[Any, ...] = ()) -> dict[str, Any] | None:
    rows = await fetch_all(request, sql, params)
    return rows[0] if rows else None


def jsonable(value: Any) -> Any:
    """Controller states and results (dataclasses, enums, datetimes) as plain JSON values."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Enum):
        return jsonable(value.value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return json.loads(json.dumps(value, default=str))


async def audit(
    conn: AsyncConnection[Any],
    who: Principal | str,
    action: str,
    target: str,
    before: Any,
    after: Any,
    result: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one audit row (the table refuses UPDATE and DELETE)."""
    actor, role = (who.name, who.role.value) if isinstance(who, Principal) else (who, "")
    await conn.execute(
        "INSERT INTO audit_log (actor, role, action, target, before, after, result, detail)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (actor, role, action, target, Jsonb(jsonable(before)), Jsonb(jsonable(after)), result,
         Jsonb(jsonable(detail or {}))),
    )
