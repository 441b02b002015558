"""Gallery, frames, label corrections, telemetry, models, live hub and metrics over the real database."""

from __future__ import annotations

import threading
import time

import psycopg
from api_support import LINE, Api

from vision.datasets.deeppcb import load_deeppcb


def test_gallery_filters_by_class_decision_and_time(api: Api) -> None:
    h = api.h("viewer")
    allrows = api.client.get("/api/inspections?limit=100", headers=h).json()
    assert allrows["total"] == 12
    ts = [i["ts"] for i in allrows["items"]]
    assert ts == sorted(ts, reverse=True)
    rejects = api.client.get("/api/inspections?decision=reject", headers=h).json()
    assert rejects["total"] == 4 and all(i["decision"] == "reject" for i in rejects["items"])
    shorts = api.client.get("/api/inspections?cls=short", headers=h).json()
    assert [i["inspection_id"] for i in shorts["items"]] == ["insp-0003"]
    assert shorts["items"][0]["classes"] == ["short"] and shorts["items"][0]["has_frame"] is True
    recent = api.client.get("/api/inspections", params={"since": ts[2]}, headers=h).json()
    assert recent["total"] == 3
    page = api.client.get("/api/inspections?limit=5&offset=10", headers=h).json()
    assert len(page["items"]) == 2 and page["total"] == 12
    # Any product's class names are valid filters (the camera's model decides them): no match is an empty page.
    assert api.client.get("/api/inspections?cls=bogus", headers=h).json() == {"items": [], "total": 0}
    assert api.client.get("/api/inspections?cls=a%00b", headers=h).status_code == 422


def test_inspection_detail_and_frame(api: Api) -> None:
    h = api.h("viewer")
    d = api.client.get("/api/inspections/insp-0000", headers=h).json()
    assert d["defects"][0]["cls"] == "open" and d["defects"][0]["box"] == [20, 30, 60, 70]
    r = api.client.get("/api/inspections/insp-0000/frame", headers=h)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
    assert api.client.get("/api/inspections/nope", headers=h).status_code == 404
    assert api.client.get("/api/inspections/nope/frame", headers=h).status_code == 404


def test_corrected_labels_land_in_the_training_set(api: Api) -> None:
    body = {"labels": [{"cls": "spur", "x1": 10, "y1": 12, "x2": 50, "y2": 40},
                       {"cls": "pin_hole", "x1": 100, "y1": 100, "x2": 120, "y2": 130}]}
    assert api.client.post("/api/inspections/insp-0001/labels", json=body, headers=api.h("viewer")).status_code == 403
    r = api.client.post("/api/inspections/insp-0001/labels", json=body, headers=api.h("operator"))
    assert r.status_code == 201, r.text
    samples = load_deeppcb(api.deps.training_dir)
    assert len(samples) == 1
    assert sorted(lab.cls for lab in samples[0].labels) == ["pin_hole", "spur"]
    assert samples[0].labels[0].box.x1 in (10, 100)
    d = api.client.get("/api/inspections/insp-0001", headers=api.h("viewer")).json()
    assert d["corrected"] is True and len(d["corrections"]) == 1
    bad = {"labels": [{"cls": "spur", "x1": 10, "y1": 10, "x2": 900, "y2": 40}]}
    r = api.client.post("/api/inspections/insp-0001/labels", json=bad, headers=api.h("operator"))
    assert r.status_code == 422 and "outside" in r.text
    with psycopg.connect(api.db) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log WHERE action='labels.save'").fetchone() == (1,)


def test_telemetry_charts(api: Api) -> None:
    h = api.h("viewer")
    e = api.client.get("/api/telemetry/energy?hours=6", headers=h).json()
    full = [p for p in e["items"] if p["kwh"] > 0][1:-1]  # inner hours: four 0.5 kWh meter steps each
    assert full and all(abs(p["kwh"] - 2.0) < 1e-9 for p in full)
    good = sum(p["good_parts"] for p in e["items"])
    assert good == 8
    f = api.client.get("/api/telemetry/faults", headers=h).json()["items"]
    assert [(x["device"], x["faults"], x["downtime_s"]) for x in f] == [("press-1", 1, 120.0), ("robot-1", 1, 30.0)]
    dr = {x["cls"]: x for x in api.client.get("/api/telemetry/defect-rate", headers=h).json()["items"]}
    assert dr["open"]["parts_with"] == 2 and dr["open"]["parts"] == 12
    s = api.client.get("/api/telemetry/shifts?hours=24", headers=h).json()["items"]
    assert sum(x["parts"] for x in s) == 12 and sum(x["faults"] for x in s) == 2
    assert api.client.get("/api/telemetry/energy?line=nope", headers=h).status_code == 422


def test_models_lists_registry_and_cameras(api: Api) -> None:
    m = api.client.get("/api/models", headers=api.h("viewer")).json()
    assert m["versions"] == []
    assert m["cameras"] == [{"camera": "cam-1", "model": "pcb:v1", "source": "inspections",
                             "last_seen": m["cameras"][0]["last_seen"]}]


def test_live_hub_snapshot_stream_and_frame(api: Api) -> None:
    hub = api.deps.hub
    hub.publish("counters", {"line": LINE, "pass": 10, "reject": 2, "rework": 0, "total": 12, "throughput_ppm": 60})
    hub.publish("frame", {"line": LINE, "camera": "cam-1", "jpeg": b"\xff\xd8fakejpeg", "boxes": []})
    snap = api.client.get("/api/live/snapshot", headers=api.h("viewer")).json()
    assert [e["kind"] for e in snap] == ["counters", "frame"]
    r = api.client.get("/api/live/frame/cam-1", headers=api.h("viewer"))
    assert r.content == b"\xff\xd8fakejpeg"

    def later() -> None:
        time.sleep(0.3)
        hub.publish("line_state", {"line": LINE, "state": "stopped"})

    threading.Thread(target=later).start()  # publish from another thread, as the runtime does
    with api.client.stream("GET", "/api/live/events?max_s=1.5", headers=api.h("viewer")) as s:
        text = "".join(s.iter_text())
    assert "event: counters" in text and "event: line_state" in text and '"state":"stopped"' in text


def test_metrics_and_probes(api: Api) -> None:
    from line_agent import metrics as m

    m.FRAMES.labels(line=LINE, camera="cam-1").inc(3)
    m.PLC_WRITE_LATENCY.labels(line=LINE).observe(0.004)
    text = api.client.get("/metrics", headers=api.h("viewer")).text
    for name in ("lineguard_frames_total", "lineguard_inference_latency_seconds", "lineguard_ingest_lag_seconds",
                 "lineguard_spool_bytes", "lineguard_plc_write_latency_seconds", "lineguard_llm_cost_total"):
        assert name in text
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz").json()
    assert ready["ready"] is True
    if api.sim is not None:
        assert ready["checks"][f"controller:{LINE}"] == "ok"


def test_summaries_with_and_without_summarizer(api: Api) -> None:
    h = api.h("supervisor")
    assert api.client.get("/api/summaries", headers=h).json() == []
    r = api.client.post("/api/summaries", json={"hours": 2, "lang": "zh"}, headers=h)
    assert r.status_code == 409 and "no summarizer" in r.text

    def fake_summarize(line: str, start: object, end: object, lang: str) -> int:
        # Stands in for line_agent.agent: writes the row the real one writes.
        with psycopg.connect(api.db, autocommit=True) as conn:
            row = conn.execute(
                "INSERT INTO summaries (line, window_start, window_end, trigger, lang, verdict, headline, prose,"
                " tokens_in, tokens_out, cost_usd) VALUES (%s,%s,%s,'on_demand',%s,'verified','4 rejects','...',"
                " 900, 120, 0.0012) RETURNING summary_id", (line, start, end, lang)).fetchone()
        assert row is not None
        return int(row[0])

    api.deps.summarize = fake_summarize
    r = api.client.post("/api/summaries", json={"hours": 2, "lang": "zh"}, headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["lang"] == "zh" and r.json()["verdict"] == "verified" and r.json()["tokens_in"] == 900
    assert api.client.post("/api/summaries", json={}, headers=api.h("operator")).status_code == 403
    assert len(api.client.get("/api/summaries?lang=zh", headers=h).json()) == 1
