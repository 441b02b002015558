"""Every route in the OpenAPI schema refuses a missing token, an unknown token and a role below its own.

The routes are read from the schema, so a new endpoint is covered (or fails) without editing this file.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from api_support import Api

from line_agent.api.app import create_app
from line_agent.api.auth import Role
from line_agent.api.deps import ApiDeps

PUBLIC = {("get", "/healthz"), ("get", "/readyz"), ("post", "/api/login")}
_SCHEMA = create_app(ApiDeps(database_url="postgresql://nobody@127.0.0.1:1/none")).openapi()
ROUTES = [(method, path, op) for path, ops in _SCHEMA["paths"].items() for method, op in ops.items()]
_RANKS = [r.value for r in Role]


def _url(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "999999", path)  # ids that do not exist: no side effects


def _call(api: Api, method: str, path: str, headers: dict[str, str]) -> Any:
    url = _url(path)
    if path == "/api/live/events":
        url += "?max_s=0.2"
    kw: dict[str, Any] = {"headers": {**headers, "Idempotency-Key": uuid.uuid4().hex}}
    if method in ("post", "put", "patch"):
        kw["json"] = {}
    return api.client.request(method.upper(), url, **kw)


def test_every_route_declares_a_role() -> None:
    assert len(ROUTES) >= 25
    for method, path, op in ROUTES:
        role = op.get("x-required-role")
        assert role in [*_RANKS, "public"], f"{method.upper()} {path} declares no x-required-role"
        assert (role == "public") == ((method, path) in PUBLIC), f"{method.upper()} {path}: unexpected {role}"


@pytest.mark.parametrize(("method", "path", "op"), ROUTES, ids=[f"{m.upper()} {p}" for m, p, _ in ROUTES])
def test_route_refuses_missing_unknown_and_lower_role(
    shared_api: Api, method: str, path: str, op: dict[str, Any]
) -> None:
    role = op["x-required-role"]
    if role == "public":  # probes and login answer without a token (login then checks the one in its body)
        assert _call(shared_api, method, path, {}).status_code not in (401, 403)
        return
    r = _call(shared_api, method, path, {})
    assert r.status_code == 401, r.text
    assert r.headers.get("www-authenticate") == "Bearer"
    r = _call(shared_api, method, path, {"Authorization": "Bearer lg_not-a-real-token"})
    assert r.status_code == 401, r.text
    r = _call(shared_api, method, path, {"Authorization": "Basic dXNlcjpwdw=="})
    assert r.status_code == 401, r.text
    rank = _RANKS.index(role)
    if rank > 0:
        below = _RANKS[rank - 1]
        r = _call(shared_api, method, path, shared_api.h(below))
        assert r.status_code == 403, f"{below} got {r.status_code}: {r.text}"
    # The declared role itself gets past the guard (whatever the handler then says about the body).
    r = _call(shared_api, method, path, shared_api.h(role))
    assert r.status_code not in (401, 403), r.text


def test_revoked_token_is_refused(shared_api: Api) -> None:
    admin = shared_api.h("admin")
    made = shared_api.client.post("/api/tokens", json={"name": "temp", "role": "operator"}, headers=admin)
    assert made.status_code == 201
    tok = made.json()["token"]
    assert shared_api.client.get("/api/me", headers={"Authorization": f"Bearer {tok}"}).json()["role"] == "operator"
    assert shared_api.client.delete(f"/api/tokens/{made.json()['token_id']}", headers=admin).status_code == 200
    assert shared_api.client.get("/api/me", headers={"Authorization": f"Bearer {tok}"}).status_code == 401
    # The database holds only the hash.
    import psycopg

    with psycopg.connect(shared_api.db) as conn:
        rows = conn.execute("SELECT token_hash FROM api_tokens").fetchall()
    assert all(tok not in r[0] for r in rows) and all(len(r[0]) == 64 for r in rows)


def test_login_returns_role_and_permissions(shared_api: Api) -> None:
    r = shared_api.client.post("/api/login", json={"token": shared_api.tokens["viewer"]})
    assert r.status_code == 200
    body = r.json()
    assert body["role"] == "viewer" and body["can"]["command:stop"] is False
    r = shared_api.client.post("/api/login", json={"token": shared_api.tokens["supervisor"]})
    assert r.json()["can"]["command:stop"] is True and r.json()["can"]["tokens"] is False
    assert shared_api.client.post("/api/login", json={"token": "nope"}).status_code == 401
