"""Commands, decisions, overrides and the audit trail against the real Modbus simulator and PostgreSQL."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest
from api_support import LINE, Api


def _cmd(api: Api, name: str, role: str, key: str | None = None, **body: object) -> object:
    return api.client.post(f"/api/commands/{name}", json={"confirm": True, **body},
                           headers={**api.h(role), "Idempotency-Key": key or uuid.uuid4().hex})


def _audit_rows(api: Api, action: str) -> list[tuple[object, ...]]:
    with psycopg.connect(api.db) as conn:
        return conn.execute("SELECT actor, role, before, after, result, detail FROM audit_log WHERE action=%s"
                            " ORDER BY audit_id", (action,)).fetchall()


def test_line_state_reads_the_plc(api: Api) -> None:
    r = api.client.get("/api/line/state", headers=api.h("viewer"))
    assert r.status_code == 200
    st = r.json()
    if api.sim is None:
        assert st["state"] == "unknown"
    else:
        assert st["state"] in ("running", "stopped") and st["estop"] is False


def test_stop_and_start_change_the_line_and_are_audited(api: Api) -> None:
    if api.sim is None:
        pytest.skip("hardware/ simulator not available")
    r = _cmd(api, "start", "supervisor")
    assert r.status_code == 200, r.text  # type: ignore[attr-defined]
    assert r.json()["state_after"]["state"] == "running"  # type: ignore[attr-defined]
    r = _cmd(api, "stop", "operator", reason="jam at station 3")
    assert r.status_code == 200, r.text  # type: ignore[attr-defined]
    body = r.json()  # type: ignore[attr-defined]
    assert body["status"] == "ok" and body["state_before"]["state"] == "running"
    assert body["state_after"]["state"] == "stopped"
    rows = _audit_rows(api, "command.stop")
    assert len(rows) == 1
    actor, role, before, after, result, detail = rows[0]
    assert (actor, role, result) == ("test-operator", "operator", "ok")
    assert before["state"] == "running" and after["state"] == "stopped"  # type: ignore[index]
    assert detail["reason"] == "jam at station 3"  # type: ignore[index]


def test_start_refused_under_estop_is_409_and_audited(api: Api) -> None:
    if api.sim is None:
        pytest.skip("hardware/ simulator not available")
    _cmd(api, "stop", "operator")
    api.sim.set_estop(True)
    time.sleep(0.1)
    r = _cmd(api, "start", "supervisor")
    assert r.status_code == 409, r.text  # type: ignore[attr-defined]
    body = r.json()  # type: ignore[attr-defined]
    assert body["status"] == "refused" and "stop" in body["reason"].lower()
    assert body["state_after"]["state"] == "stopped" and body["state_after"]["estop"] is True
    rows = _audit_rows(api, "command.start")
    assert rows and rows[-1][4] == "refused"


def test_commands_need_confirmation_and_a_key(api: Api) -> None:
    r = api.client.post("/api/commands/stop", json={"confirm": False},
                        headers={**api.h("operator"), "Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == 422
    r = api.client.post("/api/commands/stop", json={}, headers={**api.h("operator"), "Idempotency-Key": "k" * 16})
    assert r.status_code == 422
    r = api.client.post("/api/commands/stop", json={"confirm": True}, headers=api.h("operator"))
    assert r.status_code == 422 and "Idempotency-Key" in r.text
    assert _audit_rows(api, "command.stop") == []


def test_idempotency_key_replay_returns_the_first_result(api: Api) -> None:
    key = uuid.uuid4().hex
    first = _cmd(api, "slow", "supervisor", key=key, speed_pct=40)
    second = _cmd(api, "slow", "supervisor", key=key, speed_pct=40)
    assert first.status_code == second.status_code  # type: ignore[attr-defined]
    assert first.json() == second.json()  # type: ignore[attr-defined]
    assert second.headers["Idempotent-Replayed"] == "true"  # type: ignore[attr-defined]
    assert "Idempotent-Replayed" not in first.headers  # type: ignore[attr-defined]
    with psycopg.connect(api.db) as conn:
        assert conn.execute("SELECT count(*) FROM commands WHERE idempotency_key=%s", (key,)).fetchone() == (1,)
    assert len(_audit_rows(api, "command.slow")) == 1  # acted (and audited) once
    other = _cmd(api, "slow", "supervisor", key=key, speed_pct=70)
    assert other.status_code == 422 and "different request" in other.text  # type: ignore[attr-defined]
    listed = api.client.get("/api/commands", headers=api.h("viewer")).json()
    assert listed["total"] == 1 and listed["items"][0]["idempotency_key"] == key


def test_decision_reject_fires_the_gate_pass_does_not(api: Api) -> None:
    pulses = api.sim.logic.gate_pulses if api.sim else 0
    r = api.client.post("/api/decisions", json={"part_id": "P-100", "decision": "pass"}, headers=api.h("operator"))
    assert r.status_code == 201 and r.json()["gate"] == "none"
    r = api.client.post("/api/decisions", json={"part_id": "P-101", "decision": "reject", "inspection_id": "insp-0001"},
                        headers=api.h("operator"))
    if api.sim is None:
        assert r.json()["gate"] == "no_controller"
        return
    assert r.status_code == 201, r.text
    assert r.json()["gate"] == "fired"
    time.sleep(0.05)
    assert api.sim.logic.gate_pulses == pulses + 1
    listed = api.client.get("/api/decisions?decision=reject", headers=api.h("viewer")).json()
    assert [d["part_id"] for d in listed["items"]] == ["P-101"]


def test_override_is_audited_before_and_after(api: Api) -> None:
    d = api.client.post("/api/decisions", json={"part_id": "P-7", "decision": "pass", "inspection_id": "insp-0002"},
                        headers=api.h("operator")).json()
    r = api.client.post(f"/api/decisions/{d['decision_id']}/override",
                        json={"confirm": True, "decision": "reject", "reason": "scratch seen"}, headers=api.h("viewer"))
    assert r.status_code == 403
    r = api.client.post(f"/api/decisions/{d['decision_id']}/override",
                        json={"confirm": True, "decision": "reject", "reason": "scratch seen"},
                        headers=api.h("operator"))
    assert r.status_code == 200 and r.json()["override"] == "reject"
    rows = _audit_rows(api, "decision.override")
    assert rows[-1][2] == {"decision": "pass", "override": None}
    assert rows[-1][3] == {"decision": "pass", "override": "reject"}
    with psycopg.connect(api.db) as conn:
        row = conn.execute("SELECT override FROM inspections WHERE inspection_id='insp-0002'").fetchone()
    assert row == ("reject",)
    assert api.client.post("/api/decisions/424242/override", json={"confirm": True, "decision": "pass"},
                           headers=api.h("operator")).status_code == 404
    audit = api.client.get("/api/audit", headers=api.h("operator")).json()
    assert audit["items"][0]["action"] == "decision.override"


@pytest.mark.parametrize("sql", [
    "UPDATE audit_log SET result = 'ok'",
    "DELETE FROM audit_log",
    "TRUNCATE audit_log",
])
def test_audit_log_is_append_only(api: Api, sql: str) -> None:
    _cmd(api, "stop", "operator")
    with psycopg.connect(api.db, autocommit=True) as conn:
        n = conn.execute("SELECT count(*) FROM audit_log").fetchone()
        assert n is not None and n[0] >= 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(sql)
        assert conn.execute("SELECT count(*) FROM audit_log").fetchone() == n


def test_no_controller_means_unknown_and_refused(fresh_db: str) -> None:
    from api_support import make_tokens
    from fastapi.testclient import TestClient

    from line_agent.api.app import create_app
    from line_agent.api.deps import ApiDeps
    from line_agent.store.migrate import migrate

    migrate(fresh_db)
    tokens = make_tokens(fresh_db)
    with TestClient(create_app(ApiDeps(database_url=fresh_db, lines=[LINE]))) as c:
        h = {"Authorization": f"Bearer {tokens['admin']}"}
        assert c.get("/api/line/state", headers=h).json()["state"] == "unknown"
        r = c.post("/api/commands/start", json={"confirm": True}, headers={**h, "Idempotency-Key": "abcdefgh1"})
        assert r.status_code == 409 and "unknown" in r.json()["reason"]
        ready = c.get("/readyz").json()
        assert ready["ready"] is True and ready["checks"]["database"] == "ok"
        assert ready["checks"][f"controller:{LINE}"].startswith("absent")


def test_concurrent_replays_act_once(fresh_db: str, sim: object, tmp_path: object) -> None:
    """Eight clients send the same command with the same key at once: one acts, all get its result."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from api_support import ServerThread, controller_factory, make_tokens

    from line_agent.api.app import create_app
    from line_agent.api.deps import ApiDeps
    from line_agent.store.migrate import migrate

    migrate(fresh_db)
    tokens = make_tokens(fresh_db)
    app = create_app(ApiDeps(database_url=fresh_db, lines=[LINE], pool_max=8),
                     controller_factory=controller_factory(sim))
    key = uuid.uuid4().hex
    with ServerThread(app) as srv:
        def send(_: int) -> tuple[int, dict[str, object]]:
            r = httpx.post(f"{srv.url}/api/commands/slow", json={"confirm": True, "speed_pct": 30},
                           headers={"Authorization": f"Bearer {tokens['supervisor']}", "Idempotency-Key": key},
                           timeout=30)
            return r.status_code, r.json()

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(send, range(8)))
    assert len({code for code, _ in results}) == 1
    assert len({str(body) for _, body in results}) == 1
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM commands").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM audit_log WHERE action='command.slow'").fetchone() == (1,)
