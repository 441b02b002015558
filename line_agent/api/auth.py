"""Bearer API tokens and roles: viewer < operator < supervisor < admin.

Tokens are random (``secrets.token_urlsafe(32)``, 256 bits), so a plain sha256 of the token is a safe
stored form: there is nothing to brute-force that a slow hash would protect. Every route declares its
role with ``guarded(role)``, which both enforces it and records it in the OpenAPI schema as
``x-required-role`` (the tests walk the schema so no route can escape the check).
"""

from __future__ import annotations

import hashlib
import logging
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

from line_agent.api.limits import AuthFailures, retry_after_header

log = logging.getLogger(__name__)
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
    """Who is calling: the token's name (the audit's "who"), role, and the lines it may act on.

    ``lines`` is None for a token valid on every line the server runs; otherwise the only lines it may read
    or act on (``api_tokens.lines``)."""

    token_id: int
    name: str
    role: Role
    lines: tuple[str, ...] | None = None

    @property
    def all_lines(self) -> bool:
        return self.lines is None

    def may(self, line: str) -> bool:
        """May this token read or act on ``line``?"""
        return self.lines is None or line in self.lines

    def visible(self, served: list[str]) -> list[str]:
        """The served lines this token may see, in the server's order."""
        return [line for line in served if self.may(line)]

    def scope_text(self) -> str:
        if self.lines is None:
            return "every line"
        return ("line " if len(self.lines) == 1 else "lines ") + ", ".join(self.lines)


def line_refused(p: Principal, line: str, what: str = "") -> HTTPException:
    """403 for a token asking about a line outside its scope, saying which lines it has."""
    about = f" ({what})" if what else ""
    return HTTPException(403, f"token {p.name!r} is limited to {p.scope_text()}; line {line!r}{about} is outside it")


class ErrorOut(BaseModel):
    """Every error response but 422: a human-readable reason."""

    detail: str


def unprocessable(loc: tuple[str, ...], msg: str) -> RequestValidationError:
    """A 422 for a business-rule check, in the same shape as FastAPI's own validation errors."""
    return RequestValidationError([{"loc": loc, "msg": msg, "type": "value_error"}])


_BAD_BODY: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Body is not valid JSON."},
    413: {"model": ErrorOut, "description": "Request body over the size limit."},
}
_LOCKED: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorOut, "description": "Too many failed authentications from this address (see Retry-After)."},
}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return "lg_" + secrets.token_urlsafe(32)


def create_token(database_url: str, role: Role | str, name: str, created_by: str = "cli",
                 lines: list[str] | None = None) -> str:
    """Create a token with ``role`` and return it; only its hash is stored (show it to the user once).

    ``lines``: the only lines it may read and act on; None or empty = every line."""
    role = Role(role)
    token = new_token()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO api_tokens (name, token_hash, role, created_by, lines) VALUES (%s, %s, %s, %s, %s)",
            (name, hash_token(token), role.value, created_by, sorted(set(lines)) if lines else None),
        )
    return token


BOOTSTRAP_NAME = "bootstrap-admin"


def token_fingerprint(token: str) -> str:
    """A short, non-secret tag of a token (first 12 hex digits of its sha256) to show in logs instead of it.

    The stored hash is the full sha256; 48 bits of it identify a token to a person and say nothing that
    helps to guess it (the token has 256 random bits)."""
    return "sha256:" + hash_token(token)[:12]


async def ensure_bootstrap_token(conn: psycopg.AsyncConnection[Any], token: str, role: Role = Role.admin,
                                 name: str = BOOTSTRAP_NAME) -> str:
    """Make ``token`` (hashed) the one live bootstrap token called ``name``; revoke any other one.

    The configured admin token is a single named row: when the configured token changes, the row with the
    old hash is revoked (and audited) and a row with the new hash takes its place, so the old token stops
    working at once. A token that was revoked before (rotated out, or revoked by an admin through the API)
    is never brought back: configure a new one. Returns "created", "kept", "rotated" or "revoked-before".
    Never logs the token, only its fingerprint."""
    from line_agent.api.db import audit  # db imports this module

    h = hash_token(token)
    async with conn.transaction():
        # Two processes starting at once over one database must not both insert a bootstrap row.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('lineguard:bootstrap-token:' || %s))", (name,))
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE created_by = 'bootstrap' AND name = %s"
            " AND revoked_at IS NULL AND token_hash <> %s RETURNING token_id", (name, h))
        old = [int(r["token_id"]) for r in await cur.fetchall()]
        await cur.execute(
            "INSERT INTO api_tokens (name, token_hash, role, created_by) VALUES (%s, %s, %s, 'bootstrap')"
            " ON CONFLICT (token_hash) DO NOTHING RETURNING token_id", (name, h, role.value))
        made = await cur.fetchone()
        for tid in old:
            await audit(conn, "bootstrap", "token.revoke", f"token:{tid}", None,
                        {"revoked": True, "reason": "configured admin token changed"}, "ok")
        if made is not None:
            await audit(conn, "bootstrap", "token.create", f"token:{made['token_id']}", None,
                        {"name": name, "role": role.value, "fingerprint": token_fingerprint(token)}, "ok")
            outcome = "rotated" if old else "created"
        else:
            await cur.execute("SELECT token_id, name, role, created_by, revoked_at FROM api_tokens"
                              " WHERE token_hash = %s", (h,))
            row = await cur.fetchone()
            ok = (row is not None and row["revoked_at"] is None and row["created_by"] == "bootstrap"
                  and row["name"] == name and row["role"] == role.value)
            outcome = "kept" if ok else "revoked-before"
    if old:
        log.warning("configured admin token changed: revoked %d old bootstrap token(s)", len(old))
    if outcome == "revoked-before":
        log.error("the configured admin token (%s) was revoked before or belongs to another token; it does "
                  "not work: configure a new one", token_fingerprint(token))
    return outcome


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


def client_address(request: Request) -> str:
    """The peer address failed authentications are counted against (the proxy's, behind a proxy)."""
    return request.client.host if request.client else "unknown"


async def lookup(request: Request, token: str) -> Principal | None:
    """The principal for a raw token, or None when unknown or revoked.

    Counts unknown tokens per client address: once an address has used up its failures (``AuthFailures``),
    every lookup from it answers 429 with ``Retry-After`` until the bucket refills, whatever the token."""
    failures: AuthFailures | None = getattr(request.app.state, "auth_failures", None)
    addr = client_address(request)
    if failures is not None:
        wait = failures.retry_after(addr)
        if wait > 0:
            raise HTTPException(429, "too many failed authentications from this address; retry later",
                                headers={"Retry-After": retry_after_header(wait)})
    cache: TokenCache = request.app.state.token_cache
    h = hash_token(token)
    found, p = cache.get(h)
    if not found:
        async with request.app.state.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT token_id, name, role, lines FROM api_tokens WHERE token_hash = %s AND revoked_at IS NULL",
                (h,))
            row = await cur.fetchone()
        p = Principal(int(row["token_id"]), str(row["name"]), Role(row["role"]),
                      None if row["lines"] is None else tuple(str(x) for x in row["lines"])) if row else None
        cache.put(h, p)
    if p is None and failures is not None and failures.failed(addr):
        log.warning("authentication: %s used up its failed attempts; locked out for %.0f s", addr,
                    failures.retry_after(addr))
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
        403: {"model": ErrorOut, "description": f"Role below {role.value}, or a line outside the token's lines."},
        **_LOCKED,
    }
    responses.update(extra or {})
    return {
        "dependencies": [Depends(_GUARDS[role])],
        "openapi_extra": {"x-required-role": role.value},
        "responses": responses,
    }


def public(extra: dict[int | str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Route keyword arguments for the few routes without a token (probes, login)."""
    return {"openapi_extra": {"x-required-role": "public"}, "responses": {**_BAD_BODY, **_LOCKED, **(extra or {})}}


def principal(request: Request) -> Principal:
    """The caller, as checked by the route's guard."""
    p: Principal = request.state.principal
    return p
