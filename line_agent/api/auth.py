"""Bearer API tokens and roles: viewer < operator < supervisor < admin.

Tokens are random (``secrets.token_urlsafe(32)``, 256 bits), so a plain sha256 of the token is a safe
stored form: there is nothing to brute-force that a slow hash would protect. Every route declares its
role with ``guarded(role)``, which both enforces it and records it in the OpenAPI schema as
``x-required-role`` (the tests walk the schema so no route can escape the check).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import psycopg
from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg.rows import dict_row
from pydantic import BaseModel

_CACHE_S = 5.0  # a revoked token stops working within this many seconds


class Role(StrEnum):
    viewer = "viewer"
    operator = "operator"
    supervisor = "supervisor"
    admin = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Role.viewer: 0, Role.operator: 1, Role.supervisor: 2, Role.admin: 3}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name (the audit's "who") and role."""

    token_id: int
    name: str
    role: Role


class ErrorOut(BaseModel):
    """Every error response but 422: a human-readable reason."""

    detail: str


def unprocessable(loc: tuple[str, ...], msg: str) -> RequestValidationError:
    """A 422 for a business-rule check, in the same shape as FastAPI's own validation errors."""
    return RequestValidationError([{"loc": loc, "msg": msg, "type": "value_error"}])


_BAD_BODY: dict[int | str, dict[str, Any]] = {400: {"model": ErrorOut, "description": "Body is not valid JSON."}}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return "lg_" + secrets.token_urlsafe(32)


def create_token(database_url: str, role: Role | str, name: str, created_by: str = "cli") -> str:
    """Create a token with ``role`` and return it; only its hash is stored (show it to the user once)."""
    role = Role(role)
    token = new_token()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO api_tokens (name, token_hash, role, created_by) VALUES (%s, %s, %s, %s)",
            (name, hash_token(token), role.value, created_by),
        )
    return token


async def ensure_token(conn: psycopg.AsyncConnection[Any], token: str, role: Role, name: str) -> None:
    """Store ``token`` (hashed) with ``role`` unless it is already there: the bootstrap admin token."""
    await conn.execute(
        "INSERT INTO api_tokens (name, token_hash, role, created_by) VALUES (%s, %s, %s, 'bootstrap')"
        " ON CONFLICT (token_hash) DO NOTHING",
        (name, hash_token(token), role.value),
    )


class TokenCache:
    """token hash -> principal for a few seconds: saves a query per request under load."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[float, Principal | None]] = {}

    def get(self, h: str) -> tuple[bool, Principal | None]:
        hit = self._items.get(h)
        if hit is None or hit[0] < time.monotonic():
            return False, None
        return True, hit[1]

    def put(self, h: str, p: Principal | None) -> None:
        if len(self._items) > 10_000:  # garbage tokens must not grow memory without bound
            self._items.clear()
        self._items[h] = (time.monotonic() + _CACHE_S, p)

    def clear(self) -> None:
        self._items.clear()


async def lookup(request: Request, token: str) -> Principal | None:
    """The principal for a raw token, or None when unknown or revoked."""
    cache: TokenCache = request.app.state.token_cache
    h = hash_token(token)
    found, p = cache.get(h)
    if found:
        return p
    async with request.app.state.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT token_id, name, role FROM api_tokens WHERE token_hash = %s AND revoked_at IS NULL", (h,)
        )
        row = await cur.fetchone()
    p = Principal(int(row["token_id"]), str(row["name"]), Role(row["role"])) if row else None
    cache.put(h, p)
    return p


_bearer = HTTPBearer(auto_error=False, description="API token: `Authorization: Bearer <token>`.")


class Guard:
    """Dependency: require a valid token whose role is at least ``role``; 401 / 403 otherwise."""

    def __init__(self, role: Role) -> None:
        self.role = role

    async def __call__(
        self, request: Request, creds: HTTPAuthorizationCredentials | None = Depends(_bearer)
    ) -> Principal:
        if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        p = await lookup(request, creds.credentials)
        if p is None:
            raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
        if p.role.rank < self.role.rank:
            raise HTTPException(403, f"role {p.role.value} may not do this; needs {self.role.value} or above")
        request.state.principal = p
        return p


_GUARDS = {r: Guard(r) for r in Role}


def guarded(role: Role, extra: dict[int | str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Route keyword arguments that enforce ``role`` and document it (and the 401/403 answers)."""
    responses: dict[int | str, dict[str, Any]] = {
        **_BAD_BODY,
        401: {"model": ErrorOut, "description": "Missing, unknown or revoked token."},
        403: {"model": ErrorOut, "description": f"Role below {role.value}."},
    }
    responses.update(extra or {})
    return {
        "dependencies": [Depends(_GUARDS[role])],
        "openapi_extra": {"x-required-role": role.value},
        "responses": responses,
    }


def public(extra: dict[int | str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Route keyword arguments for the few routes without a token (probes, login)."""
    return {"openapi_extra": {"x-required-role": "public"}, "responses": {**_BAD_BODY, **(extra or {})}}


def principal(request: Request) -> Principal:
    """The caller, as checked by the route's guard."""
    p: Principal = request.state.principal
    return p
