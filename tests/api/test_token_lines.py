"""Tokens scoped to lines: a token for one line reads and acts on that line only.

Two lines over one real PostgreSQL: line1 on the Modbus simulator (tests/api/api_support.py), line2 without a PLC.
A token limited to line2 gets 403 naming its lines for anything on line1 (reads, control, rows named by id) and
list endpoints return only line2's rows. Also: the live stream's scoping and its alarm pushes, the CLI's --lines.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from api_support import LINE, Api, controller_factory, make_tokens, seed_inspections, write_frame
from api_support import sim as sim
from fastapi.testclient import TestClient

from line_agent.api.app import create_app
from line_agent.api.deps import ApiDeps
from line_agent.live import LiveHub
from line_agent.store.migrate import migrate

OTHER = "line2"


def _seed_other_line(db: str, frames: Path) -> None:
    """line2's rows: inspections (one rejected, with frames), a decision, a summary, an alarm's audit row."""
    now = datetime.now(UTC)
    with psycopg.connect(db, autocommit=True) as conn:
        for i in range(3):
            ts = now - timedelta(minutes=i)
            write_frame(frames, OTHER, "cam-1", f"l2-{i}", ts.timestamp())
            conn.execute("INSERT INTO inspections (inspection_id, ts, line, camera, part_id, decision, n_defects,"
                         " latency_ms, model) VALUES (%s,%s,%s,'cam-1',%s,%s,0,9.0,'pcb:v1')",
                         (f"l2-{i}", ts, OTHER, f"Q-{i}", "reject" if i == 0 else "pass"))
        for line in (LINE, OTHER):
            conn.execute("INSERT INTO decisions (line, part_id, decision, actor) VALUES (%s, %s, 'reject', 'qa')",
                         (line, f"D-{line}"))
            conn.execute("INSERT INTO summaries (line, window_start, window_end, trigger, lang, backend, model,"
                         " verdict, headline, prose)"
                         " VALUES (%s, %s, %s, 'shift', 'en', 'template', '', 'verified', %s, '')",
                         (line, now - timedelta(hours=8), now, f"summary of {line}"))
            conn.execute("INSERT INTO audit_log (actor, role, action, target, result, detail) VALUES"
                         " (%s, 'system', 'line.guard_door', %s, 'ok', %s)",
                         (f"plc:{line}", line, json.dumps({"line": line, "reason": f"door opened on {line}"})))


@pytest.fixture
def two(fresh_db: str, sim: Any, tmp_path: Path) -> Iterator[Api]:
    migrate(fresh_db)
    tokens = make_tokens(fresh_db)
    frames = tmp_path / "frames"
    seed_inspections(fresh_db, frames)
    _seed_other_line(fresh_db, frames)
    deps = ApiDeps(database_url=fresh_db, lines=[LINE, OTHER], hub=LiveHub(), frames_dir=frames,
                   training_dir=tmp_path / "training", model_registry=tmp_path / "models", pool_max=4)
    app = create_app(deps, controller_factory=controller_factory(sim))
    with TestClient(app) as client:
        api = Api(app, client, deps, fresh_db, tokens, sim)
        for role in ("viewer", "operator", "supervisor", "admin"):
            r = client.post("/api/tokens", json={"name": f"{OTHER}-{role}", "role": role, "lines": [OTHER]},
                            headers=api.h("admin"))
            assert r.status_code == 201, r.text
            assert r.json()["lines"] == [OTHER]
            tokens[f"{OTHER}-{role}"] = r.json()["token"]
        yield api


def _refused(r: Any) -> None:
    assert r.status_code == 403, r.text
    msg = r.json()["detail"]
    assert f"limited to line {OTHER}" in msg and f"'{LINE}'" in msg, msg


def test_reads_of_another_line_are_refused_and_lists_hold_only_its_lines(two: Api) -> None:
    c, h = two.client, two.h(f"{OTHER}-operator")
    me = c.get("/api/me", headers=h).json()
    assert me["lines"] == [OTHER] and me["all_lines"] is False
    assert c.get("/api/me", headers=two.h("operator")).json()["lines"] == [LINE, OTHER]

    # A request that names line1 is refused, with the token's lines in the answer.
    for path in ("/api/line/state", "/api/inspections", "/api/telemetry/energy", "/api/telemetry/faults",
                 "/api/telemetry/defect-rate", "/api/telemetry/shifts", "/api/telemetry/downtime", "/api/summaries",
                 "/api/alarms", "/api/targets", "/api/decisions", "/api/commands", "/api/audit",
                 "/api/cameras/cam-1/classes", "/api/live/frame/cam-1"):
        _refused(c.get(path, params={"line": LINE}, headers=h))
        assert c.get(path, params={"line": LINE}, headers=two.h("operator")).status_code in (200, 404), path
    # Rows named by id on line1 are refused too.
    for path in ("/api/inspections/insp-0000", "/api/inspections/insp-0000/frame"):
        _refused(c.get(path, headers=h))
    assert c.get("/api/inspections/l2-0/frame", headers=h).status_code == 200
    # A line it does not name is its own line, not the server's first.
    assert c.get("/api/line/state", headers=h).json()["line"] == OTHER
    assert c.get("/api/telemetry/energy", headers=h).json()["line"] == OTHER
    # An unknown line is still a 422 for everyone.
    assert c.get("/api/line/state", params={"line": "nope"}, headers=h).status_code == 422

    # List endpoints: only line2's rows, and their totals count only those.
    page = c.get("/api/inspections", params={"limit": 500}, headers=h).json()
    assert page["total"] == 3 and {i["line"] for i in page["items"]} == {OTHER}
    assert c.get("/api/inspections", params={"limit": 500}, headers=two.h("operator")).json()["total"] == 15
    assert {d["line"] for d in c.get("/api/decisions", headers=h).json()["items"]} == {OTHER}
    assert [s["headline"] for s in c.get("/api/summaries", headers=h).json()] == [f"summary of {OTHER}"]
    alarms = c.get("/api/alarms", headers=h).json()
    assert {a["line"] for a in alarms["items"]} == {OTHER} and alarms["unacked"] == 1
    assert {a["line"] for a in c.get("/api/alarms", headers=two.h("operator")).json()["items"]} == {LINE, OTHER}
    audit = c.get("/api/audit", params={"who": "system"}, headers=h).json()
    assert audit["total"] >= 1
    assert all(r["detail"].get("line") == OTHER or r["target"] == OTHER for r in audit["items"]), audit
    # Sparkplug nodes: a group is a line.
    with psycopg.connect(two.db, autocommit=True) as conn:
        for line in (LINE, OTHER):
            conn.execute("INSERT INTO sparkplug_nodes (group_id, edge_node, state, last_seen) VALUES"
                         " (%s, 'press', 'alive', now())", (line,))
    nodes = c.get("/api/nodes", headers=h).json()
    assert [n["line"] for n in nodes["items"]] == [OTHER] and nodes["counts"]["alive"] == 1
    assert len(c.get("/api/nodes", headers=two.h("operator")).json()["items"]) == 2
    _refused(c.get("/api/nodes", params={"group": LINE}, headers=h))
    # The live snapshot: only its line's events.
    for line in (LINE, OTHER):
        two.deps.hub.publish("counters", {"line": line, "pass": 1, "reject": 0, "rework": 0, "total": 1})
    snap = c.get("/api/live/snapshot", headers=h).json()
    assert [e["data"]["line"] for e in snap] == [OTHER]
    assert len(c.get("/api/live/snapshot", headers=two.h("operator")).json()) == 2
    # Plant-wide metrics are not for a token of some lines.
    assert c.get("/metrics", headers=two.h(f"{OTHER}-viewer")).status_code == 403
    assert c.get("/metrics", headers=two.h("viewer")).status_code == 200


def test_control_of_another_line_is_refused_and_not_done(two: Api) -> None:
    c, h = two.client, two.h(f"{OTHER}-supervisor")
    for cmd in ("stop", "start", "reset-rejects"):
        r = c.post(f"/api/commands/{cmd}", json={"confirm": True, "line": LINE, "reason": "x"},
                   headers={**h, "Idempotency-Key": uuid.uuid4().hex})
        _refused(r)
    r = c.post("/api/commands/slow", json={"confirm": True, "line": LINE, "speed_pct": 50},
               headers={**h, "Idempotency-Key": uuid.uuid4().hex})
    _refused(r)
    with psycopg.connect(two.db) as conn:
        assert conn.execute("SELECT count(*) FROM commands").fetchone() == (0,)  # nothing was even recorded
    # Its own line: accepted (line2 has no PLC: refused by the line, 409, not by the token).
    r = c.post("/api/commands/stop", json={"confirm": True, "line": OTHER},
               headers={**h, "Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == 409 and "no PLC controller" in r.json()["reason"], r.text
    assert {x["line"] for x in c.get("/api/commands", headers=h).json()["items"]} == {OTHER}

    _refused(c.post("/api/decisions", json={"part_id": "P-9", "decision": "reject", "line": LINE}, headers=h))
    d1 = next(d for d in c.get("/api/decisions", headers=two.h("supervisor")).json()["items"] if d["line"] == LINE)
    _refused(c.post(f"/api/decisions/{d1['decision_id']}/override", json={"confirm": True, "decision": "pass"},
                    headers=h))
    _refused(c.post("/api/inspections/insp-0000/override", json={"confirm": True, "decision": "pass"}, headers=h))
    _refused(c.post("/api/inspections/insp-0000/labels", json={"labels": []}, headers=h))
    _refused(c.put("/api/targets", json={"line": LINE, "reject_red": 0.2}, headers=h))
    _refused(c.post("/api/summaries", json={"line": LINE}, headers=h))
    with psycopg.connect(two.db) as conn:
        assert conn.execute("SELECT override FROM inspections WHERE inspection_id = 'insp-0000'").fetchone() == (None,)
    r = c.post("/api/inspections/l2-0/override", json={"confirm": True, "decision": "pass", "reason": "ok"},
               headers=h)
    assert r.status_code == 200, r.text

    alarms = c.get("/api/alarms", headers=two.h("supervisor")).json()["items"]
    mine = next(a for a in alarms if a["line"] == OTHER)
    theirs = next(a for a in alarms if a["line"] == LINE)
    for what in ("ack", "clear"):
        _refused(c.post(f"/api/alarms/{theirs['alarm_id']}/{what}", json={"note": "x"}, headers=h))
    assert c.post(f"/api/alarms/{mine['alarm_id']}/ack", json={"note": "seen"}, headers=h).status_code == 200
    after = {a["alarm_id"]: a for a in c.get("/api/alarms", headers=two.h("supervisor")).json()["items"]}
    assert after[theirs["alarm_id"]]["acked_at"] is None
    assert after[mine["alarm_id"]]["acked_by"] == f"{OTHER}-supervisor"
    # The override and the ack are in line2's audit trail, for line2's token to read.
    actions = {r["action"] for r in c.get("/api/audit", headers=h).json()["items"]}
    assert {"inspection.override", "alarm.ack"} <= actions


def test_token_lines_at_creation(two: Api) -> None:
    c, admin = two.client, two.h("admin")
    r = c.post("/api/tokens", json={"name": "x", "role": "viewer", "lines": [OTHER, "line9"]}, headers=admin)
    assert r.status_code == 422 and "unknown line 'line9'" in r.text, r.text
    r = c.post("/api/tokens", json={"name": "x", "role": "viewer", "lines": ["bad name"]}, headers=admin)
    assert r.status_code == 422
    r = c.post("/api/tokens", json={"name": "all", "role": "viewer", "lines": []}, headers=admin)
    assert r.status_code == 201 and r.json()["lines"] is None  # empty: every line
    listed = {t["name"]: t for t in c.get("/api/tokens", headers=admin).json()}
    assert listed["all"]["lines"] is None and listed[f"{OTHER}-viewer"]["lines"] == [OTHER]

    # An admin limited to line2 manages only tokens within line2: never a wider one.
    sub = two.h(f"{OTHER}-admin")
    r = c.post("/api/tokens", json={"name": "wide", "role": "viewer"}, headers=sub)
    assert r.status_code == 403 and "cannot create a token for every line" in r.json()["detail"]
    r = c.post("/api/tokens", json={"name": "wide", "role": "viewer", "lines": [LINE, OTHER]}, headers=sub)
    assert r.status_code == 403 and f"for line {LINE}" in r.json()["detail"]
    r = c.post("/api/tokens", json={"name": "narrow", "role": "viewer", "lines": [OTHER]}, headers=sub)
    assert r.status_code == 201
    seen = c.get("/api/tokens", headers=sub).json()
    assert seen and all(t["lines"] == [OTHER] for t in seen) and "narrow" in {t["name"] for t in seen}
    r = c.delete(f"/api/tokens/{listed['all']['token_id']}", headers=sub)
    assert r.status_code == 404
    with psycopg.connect(two.db) as conn:
        audit = conn.execute("SELECT after FROM audit_log WHERE action = 'token.create' AND after->>'name' = 'narrow'"
                             ).fetchone()
    assert audit is not None and audit[0]["lines"] == [OTHER]


def _read_stream(c: TestClient, headers: dict[str, str], max_s: float) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    with c.stream("GET", "/api/live/events", params={"max_s": max_s}, headers=headers) as r:
        assert r.status_code == 200
        buf = ""
        for chunk in r.iter_text():
            buf += chunk
            while "\n\n" in buf:
                block, buf = buf.split("\n\n", 1)
                kind = next((x[6:].strip() for x in block.splitlines() if x.startswith("event:")), "")
                data = next((x[5:].strip() for x in block.splitlines() if x.startswith("data:")), "")
                if kind:
                    out.append((kind, json.loads(data)))
    return out


def test_live_stream_is_scoped_and_pushes_alarm_changes(two: Api) -> None:
    c, hub = two.client, two.deps.hub
    for line in (LINE, OTHER):
        hub.publish("counters", {"line": line, "pass": 1, "reject": 0, "rework": 0, "total": 1})
    hub.publish("alert", {"text": "no line"})

    def later() -> None:  # a rule on line2 stops it while the console listens; line1 gets one too
        time.sleep(1.0)
        with psycopg.connect(two.db, autocommit=True) as conn:
            for line in (LINE, OTHER):
                conn.execute("INSERT INTO audit_log (actor, role, action, target, result, detail) VALUES"
                             " (%s, 'system', 'plc.stop', %s, 'ok', %s)",
                             (f"runtime:{line}", line, json.dumps({"line": line, "reason": f"rule on {line}"})))
        hub.publish("counters", {"line": LINE, "pass": 2, "reject": 0, "rework": 0, "total": 2})

    t0 = time.monotonic()
    th = threading.Thread(target=later)
    th.start()
    events = _read_stream(c, two.h(f"{OTHER}-viewer"), 4.0)
    th.join()
    kinds = [k for k, _ in events]
    assert ("counters", OTHER) in [(k, d.get("line")) for k, d in events]
    assert all(d.get("line") == OTHER for k, d in events if k != "alarms"), events  # nothing of line1, no lineless
    snap = next(d for k, d in events if k == "alarms")  # the active list first
    assert {a["line"] for a in snap["items"]} == {OTHER} and snap["unacked"] == 1
    assert kinds.index("alarms") < kinds.index("alarm")
    pushed = [d for k, d in events if k == "alarm"]
    raised = [d for d in pushed if d["change"] == "raised" and d["alarm"]["kind"] == "rule_stop"]
    assert len(raised) == 1 and raised[0]["alarm"]["reason"] == f"rule on {OTHER}", pushed
    assert time.monotonic() - t0 < 8

    # An all-lines viewer sees both lines' alarms pushed; an acknowledgement is pushed as one.
    aid = raised[0]["alarm"]["alarm_id"]

    def ack() -> None:
        time.sleep(1.0)
        r = c.post(f"/api/alarms/{aid}/ack", json={"note": "seen"}, headers=two.h(f"{OTHER}-supervisor"))
        assert r.status_code == 200, r.text
        time.sleep(1.0)
        r = c.post(f"/api/alarms/{aid}/clear", json={"note": "restarted"}, headers=two.h(f"{OTHER}-supervisor"))
        assert r.status_code == 200, r.text

    th = threading.Thread(target=ack)
    th.start()
    events = _read_stream(c, two.h("viewer"), 4.0)
    th.join()
    snap = next(d for k, d in events if k == "alarms")
    assert {a["line"] for a in snap["items"]} == {LINE, OTHER}
    mine = [(d["change"], d["alarm"]) for k, d in events if k == "alarm" and d["alarm"]["alarm_id"] == aid]
    assert [ch for ch, _ in mine] == ["acknowledged", "cleared"], mine
    assert mine[0][1]["acked_by"] == f"{OTHER}-supervisor" and mine[1][1]["cleared_by"] == f"{OTHER}-supervisor"
    assert mine[1][1]["active"] is False


def test_a_revoked_tokens_stream_ends(two: Api) -> None:
    c = two.client
    made = c.post("/api/tokens", json={"name": "soon-gone", "role": "viewer", "lines": [OTHER]},
                  headers=two.h("admin")).json()

    def revoke() -> None:
        time.sleep(0.5)
        assert c.delete(f"/api/tokens/{made['token_id']}", headers=two.h("admin")).status_code == 200

    th = threading.Thread(target=revoke)
    th.start()
    t0 = time.monotonic()
    _read_stream(c, {"Authorization": f"Bearer {made['token']}"}, 30.0)
    th.join()
    assert time.monotonic() - t0 < 12  # ended at its next token check, not at max_s
    assert c.get("/api/me", headers={"Authorization": f"Bearer {made['token']}"}).status_code == 401


def _cli() -> tuple[Any, Any]:
    import typer
    from typer.testing import CliRunner

    from line_agent.api.cli import register

    app = typer.Typer()
    app.callback()(lambda: None)  # a group, as in `lineguard`: the command is named
    register(app, typer.Typer())
    return CliRunner(), app


def test_cli_creates_a_token_for_some_lines(fresh_db: str) -> None:
    runner, app = _cli()
    r = runner.invoke(app, ["api-token", "--role", "operator", "--name", "dana", "--lines", f"{OTHER}, {LINE}",
                            "--database-url", fresh_db])
    assert r.exit_code == 0, r.output
    token = r.output.strip().splitlines()[-1]
    assert token.startswith("lg_")
    with psycopg.connect(fresh_db) as conn:
        row = conn.execute("SELECT role, lines FROM api_tokens WHERE name = 'dana'").fetchone()
    assert row == ("operator", sorted([LINE, OTHER]))
    r = runner.invoke(app, ["api-token", "--lines", "bad name", "--database-url", fresh_db])
    assert r.exit_code == 2 and "not a line name" in r.output
    cfg = Path(__file__).resolve().parents[2] / "examples" / "line.yaml"  # runs smt-line-3
    r = runner.invoke(app, ["api-token", "--lines", OTHER, "--config", str(cfg), "--database-url", fresh_db])
    assert r.exit_code == 2 and f"unknown line(s) {OTHER}; the configs run smt-line-3" in r.output, r.output
    r = runner.invoke(app, ["api-token", "--lines", "smt-line-3", "--config", str(cfg), "--database-url", fresh_db])
    assert r.exit_code == 0 and r.output.strip().startswith("lg_"), r.output


def test_cli_uses_the_embedded_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """No database URL: `lineguard api-token` uses the embedded server of LINEGUARD_DATA_DIR, running or not."""
    import shutil
    import tempfile

    from line_agent.services import EmbeddedPostgres

    # Outside pytest's basetemp (tests/conftest.py says why).
    d = Path(tempfile.mkdtemp(prefix="lineguard-test-cli-pg-"))
    monkeypatch.delenv("LINEGUARD_DATABASE_URL", raising=False)
    monkeypatch.setenv("LINEGUARD_DATA_DIR", str(d))
    runner, app = _cli()
    try:
        r = runner.invoke(app, ["api-token", "--name", "nobody"])
        assert r.exit_code == 2 and "no embedded database" in r.output, r.output
        pg = EmbeddedPostgres(d / "postgres")
        pg.start()  # as `lineguard run` keeps it while it runs
        try:
            r = runner.invoke(app, ["api-token", "--role", "admin", "--name", "while-running", "--lines", LINE])
            assert r.exit_code == 0 and "using the running embedded database" in r.output, r.output
            assert r.output.strip().splitlines()[-1].startswith("lg_")
            with psycopg.connect(pg.url) as conn:
                row = conn.execute("SELECT role, lines FROM api_tokens WHERE name = 'while-running'").fetchone()
            assert row == ("admin", [LINE])
        finally:
            pg.stop()
        r = runner.invoke(app, ["api-token", "--name", "while-stopped"])
        assert r.exit_code == 0 and "starting the embedded database" in r.output, r.output
        assert EmbeddedPostgres(d / "postgres").running_port() is None  # stopped again after
        with EmbeddedPostgres(d / "postgres") as again, psycopg.connect(again.url) as conn:
            names = {n for (n,) in conn.execute("SELECT name FROM api_tokens").fetchall()}
        assert names == {"while-running", "while-stopped"}
    finally:
        shutil.rmtree(d, ignore_errors=True)
