"""The bootstrap admin token is one named row: a changed LINEGUARD_ADMIN_TOKEN revokes the old one; no token
is ever logged; an unexpected error is a JSON 500 without internals."""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg
import pytest
from api_support import LINE
from fastapi.testclient import TestClient

from line_agent.api.app import create_app
from line_agent.api.auth import BOOTSTRAP_NAME, new_token, token_fingerprint
from line_agent.api.deps import ApiDeps
from line_agent.live import LiveHub
from line_agent.store.migrate import migrate


def _deps(db: str, tmp: Path, token: str | None) -> ApiDeps:
    return ApiDeps(database_url=db, lines=[LINE], hub=LiveHub(), frames_dir=tmp / "frames",
                   training_dir=tmp / "training", model_registry=tmp / "models", pool_max=2, admin_token=token)


def _status(client: TestClient, token: str) -> int:
    return client.get("/api/tokens", headers={"Authorization": f"Bearer {token}"}).status_code


def _live_bootstrap(db: str) -> list[tuple[int, str]]:
    with psycopg.connect(db) as conn:
        return [(int(r[0]), str(r[1])) for r in conn.execute(
            "SELECT token_id, token_hash FROM api_tokens WHERE name = %s AND revoked_at IS NULL",
            (BOOTSTRAP_NAME,)).fetchall()]


def test_changing_the_admin_token_revokes_the_old_one(fresh_db: str, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    migrate(fresh_db)
    a, b = new_token(), new_token()
    with TestClient(create_app(_deps(fresh_db, tmp_path, a))) as c:
        assert _status(c, a) == 200
    with TestClient(create_app(_deps(fresh_db, tmp_path, b))) as c:
        assert _status(c, a) == 401
        assert _status(c, b) == 200
    assert len(_live_bootstrap(fresh_db)) == 1
    with TestClient(create_app(_deps(fresh_db, tmp_path, b))) as c:  # same token again: the same row
        assert _status(c, b) == 200 and _status(c, a) == 401
    assert len(_live_bootstrap(fresh_db)) == 1
    # Back to A: B is revoked; A was rotated out once and is not brought back.
    with TestClient(create_app(_deps(fresh_db, tmp_path, a))) as c:
        assert _status(c, a) == 401 and _status(c, b) == 401
    assert _live_bootstrap(fresh_db) == []
    with psycopg.connect(fresh_db) as conn:
        actions = [r[0] for r in conn.execute(
            "SELECT action FROM audit_log WHERE actor = 'bootstrap' ORDER BY audit_id").fetchall()]
    assert actions == ["token.create", "token.revoke", "token.create", "token.revoke"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert a not in logged and b not in logged
    assert token_fingerprint(a) in logged  # the "not brought back" error names it by fingerprint


def test_an_admin_revoked_bootstrap_token_stays_revoked(fresh_db: str, tmp_path: Path) -> None:
    migrate(fresh_db)
    a = new_token()
    with TestClient(create_app(_deps(fresh_db, tmp_path, a))) as c:
        tid = _live_bootstrap(fresh_db)[0][0]
        assert c.delete(f"/api/tokens/{tid}", headers={"Authorization": f"Bearer {a}"}).status_code == 200
    with TestClient(create_app(_deps(fresh_db, tmp_path, a))) as c:
        assert _status(c, a) == 401


def test_old_bootstrap_rows_from_before_are_revoked_too(fresh_db: str, tmp_path: Path) -> None:
    """Databases from before this fix may hold several live bootstrap rows (one per token ever configured)."""
    from line_agent.api.auth import hash_token

    migrate(fresh_db)
    olds = [new_token() for _ in range(3)]
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        for t in olds:
            conn.execute("INSERT INTO api_tokens (name, token_hash, role, created_by) VALUES (%s, %s, 'admin',"
                         " 'bootstrap')", (BOOTSTRAP_NAME, hash_token(t)))
    new = new_token()
    with TestClient(create_app(_deps(fresh_db, tmp_path, new))) as c:
        assert [_status(c, t) for t in olds] == [401, 401, 401] and _status(c, new) == 200


def test_fingerprint_is_not_the_token() -> None:
    t = new_token()
    fp = token_fingerprint(t)
    assert fp.startswith("sha256:") and len(fp) == 19 and t not in fp and fp == token_fingerprint(t)


def test_unexpected_error_is_a_json_500_without_internals(fresh_db: str, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    migrate(fresh_db)
    app = create_app(_deps(fresh_db, tmp_path, None))

    @app.get("/api/boom", include_in_schema=False)
    async def boom() -> None:
        raise RuntimeError("password=hunter2 at /srv/lineguard/secret.py")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/api/boom")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    detail = r.json()["detail"]
    assert detail.startswith("internal error (ref ")
    for leak in ("hunter2", "secret.py", "Traceback", "RuntimeError"):
        assert leak not in r.text
    ref = detail.removeprefix("internal error (ref ").rstrip(")")
    assert any(ref in rec.getMessage() for rec in caplog.records)  # the log has the reference


def test_failing_summarizer_does_not_echo_its_message(fresh_db: str, tmp_path: Path) -> None:
    from api_support import make_tokens

    migrate(fresh_db)
    tokens = make_tokens(fresh_db)

    def summarize(**_: object) -> int:
        raise ConnectionError("could not reach http://llm:key-abc123@10.0.0.5/v1")

    deps = _deps(fresh_db, tmp_path, None).replace(summarize=summarize)
    with TestClient(create_app(deps)) as c:
        r = c.post("/api/summaries", json={"hours": 1},
                   headers={"Authorization": f"Bearer {tokens['supervisor']}"})
    assert r.status_code == 409 and "ConnectionError" in r.text
    assert "key-abc123" not in r.text and "10.0.0.5" not in r.text
