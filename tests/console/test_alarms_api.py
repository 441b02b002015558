"""The console's server side: alarms (from audit rows, readiness checks, thresholds), targets, the audit filters.

Real PostgreSQL and the Modbus simulator (tests/api/api_support.py), over FastAPI's TestClient.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from api_support import LINE, Api
from api_support import api as api


def _audit_row(db: str, actor: str, action: str, reason: str, result: str = "ok", target: str = LINE) -> None:
    """What line_agent.audit.AuditWriter writes for the runtime (role 'system', the line in detail)."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO audit_log (actor, role, action, target, before, after, result, detail)"
                     " VALUES (%s, 'system', %s, %s, NULL, NULL, %s, %s)",
                     (actor, action, target, result, json.dumps({"line": LINE, "reason": reason})))


def _alarms(api: Api, role: str = "viewer", **params: Any) -> dict[str, Any]:
    r = api.client.get("/api/alarms", params=params, headers=api.h(role))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_rule_stop_alarm_ack_and_clear(api: Api) -> None:
    _audit_row(api.db, f"runtime:{LINE}", "plc.stop", "stop rule: 3 rejects in 10 parts")
    _audit_row(api.db, f"runtime:{LINE}", "plc.reject_part", "", target="P-1")  # not an alarm
    _audit_row(api.db, "user:alice", "plc.stop", "shift end")  # a person's stop is no alarm
    page = _alarms(api)
    rule = [a for a in page["items"] if a["kind"] == "rule_stop"]
    assert len(rule) == 1, page
    a = rule[0]
    assert a["reason"] == "stop rule: 3 rejects in 10 parts" and a["severity"] == "high" and a["latched"]
    assert a["source"] == f"runtime:{LINE}" and a["line"] == LINE and a["active"]
    assert page["unacked"] >= 1
    # Read again: raised once.
    assert len([x for x in _alarms(api)["items"] if x["kind"] == "rule_stop"]) == 1

    url = f"/api/alarms/{a['alarm_id']}/ack"
    for role in ("viewer", "operator"):
        r = api.client.post(url, json={"note": "seen"}, headers=api.h(role))
        assert r.status_code == 403, r.text
    r = api.client.post(url, json={"note": "jam at the feeder cleared"}, headers=api.h("supervisor"))
    assert r.status_code == 200, r.text
    assert r.json()["acked_by"] == "test-supervisor" and r.json()["ack_note"] == "jam at the feeder cleared"
    assert api.client.post(url, json={}, headers=api.h("supervisor")).status_code == 409
    with psycopg.connect(api.db) as conn:
        row = conn.execute("SELECT actor, role, target, detail FROM audit_log WHERE action = 'alarm.ack'").fetchone()
    assert row is not None and row[0] == "test-supervisor" and row[1] == "supervisor"
    assert row[2] == f"alarm:{a['alarm_id']}" and row[3]["note"] == "jam at the feeder cleared"
    # Acknowledged, still active until cleared; then gone from the active list, kept in the history.
    assert any(x["alarm_id"] == a["alarm_id"] for x in _alarms(api)["items"])
    cl = f"/api/alarms/{a['alarm_id']}/clear"
    assert api.client.post(cl, json={}, headers=api.h("viewer")).status_code == 403
    r = api.client.post(cl, json={"note": "restarted"}, headers=api.h("supervisor"))
    assert r.status_code == 200 and r.json()["active"] is False
    assert not any(x["alarm_id"] == a["alarm_id"] for x in _alarms(api)["items"])
    hist = _alarms(api, state="all")
    assert any(x["alarm_id"] == a["alarm_id"] for x in hist["items"])
    assert api.client.post("/api/alarms/999999/ack", json={}, headers=api.h("supervisor")).status_code == 404


def test_safe_state_and_reject_rate_alarms(api: Api) -> None:
    _audit_row(api.db, f"runtime:{LINE}", "line.safe_state", "PLC in its safe state: the controller heartbeat was lost")
    # Seeded: 1 of the 3 parts of the last 15 min is a reject. Lower the bar so it counts, red at 20 %.
    r = api.client.put("/api/targets", json={"reject_min_parts": 1, "reject_amber": 0.1, "reject_red": 0.2,
                                             "throughput_ppm": 30}, headers=api.h("supervisor"))
    assert r.status_code == 200, r.text
    assert api.client.put("/api/targets", json={"reject_amber": 0.3, "reject_red": 0.2},
                          headers=api.h("supervisor")).status_code == 422
    assert api.client.put("/api/targets", json={}, headers=api.h("operator")).status_code == 403
    assert api.client.get("/api/targets", headers=api.h("viewer")).json()["throughput_ppm"] == 30
    page = _alarms(api)
    kinds = {a["kind"]: a for a in page["items"]}
    assert kinds["safe_state"]["severity"] == "critical"
    rr = kinds["reject_rate"]
    assert rr["severity"] == "high" and "33.3 % of 3 parts" in rr["reason"] and not rr["latched"]
    # A condition alarm cannot be cleared by hand; it clears when the condition goes.
    assert api.client.post(f"/api/alarms/{rr['alarm_id']}/clear", json={},
                           headers=api.h("supervisor")).status_code == 409
    api.client.put("/api/targets", json={"reject_min_parts": 1000}, headers=api.h("supervisor"))
    hist = {a["alarm_id"]: a for a in _alarms(api, state="all")["items"]}
    assert hist[rr["alarm_id"]]["cleared_by"] == "condition cleared"


def test_readiness_check_alarms(api: Api) -> None:
    checks = {"broker": "ok", f"camera:{LINE}/cam-1": "no frame for over 10 s (last 42 s ago; source stalled)"}
    api.deps.extra_checks = lambda: checks
    cam = [a for a in _alarms(api)["items"] if a["kind"] == "camera"]
    assert len(cam) == 1 and "no frame for over 10 s" in cam[0]["reason"]
    assert cam[0]["title"] == "Camera cam-1: no frames"
    checks[f"camera:{LINE}/cam-1"] = "ok"
    assert not [a for a in _alarms(api)["items"] if a["kind"] == "camera" and a["active"]]


def test_audit_filters_and_grouping(api: Api) -> None:
    for i in range(5):
        _audit_row(api.db, f"runtime:{LINE}", "plc.reject_part", "", target=f"P-{i}")
    _audit_row(api.db, "user:test-supervisor", "plc.stop", "shift end")
    h = api.h("operator")
    r = api.client.post("/api/commands/stop", json={"confirm": True, "reason": "check"},
                        headers={**api.h("supervisor"), "Idempotency-Key": "audit-filter-1"})
    assert r.status_code in (200, 409), r.text
    plain = api.client.get("/api/audit", params={"action": "plc.reject_part"}, headers=h).json()
    assert plain["total"] == 5
    grouped = api.client.get("/api/audit", params={"action": "plc.", "group": "true"}, headers=h).json()
    parts = [x for x in grouped["items"] if x["action"] == "plc.reject_part"]
    assert len(parts) == 1 and parts[0]["count"] == 5 and parts[0]["first_ts"]
    people = api.client.get("/api/audit", params={"who": "people"}, headers=h).json()["items"]
    assert people and all(x["role"] != "system" or x["actor"].startswith("user:") for x in people)
    assert any(x["action"] == "command.stop" for x in people)
    system = api.client.get("/api/audit", params={"who": "system"}, headers=h).json()["items"]
    assert system and all(x["actor"].startswith("runtime:") or x["role"] in ("system", "") for x in system)
    by_line = api.client.get("/api/audit", params={"line": LINE}, headers=h).json()["items"]
    assert any(x["action"] == "command.stop" for x in by_line)
    assert api.client.get("/api/audit", params={"line": "other"}, headers=h).json()["total"] == 0
    p2 = api.client.get("/api/audit", params={"limit": 2, "offset": 2}, headers=h).json()
    assert len(p2["items"]) == 2 and p2["total"] >= 7
    assert api.client.get("/api/audit", params={"since": "2999-01-01T00:00:00Z"}, headers=h).json()["total"] == 0
    assert api.client.get("/api/audit", headers=api.h("viewer")).status_code == 403
