"""Gallery filters: an overridden reject stays findable by the model's own decision; any model class filters."""

from __future__ import annotations

import psycopg
from api_support import LINE, Api


def test_overridden_reject_is_found_by_the_models_decision(api: Api) -> None:
    rejects = api.client.get("/api/inspections", params={"decision": "reject", "limit": 100},
                             headers=api.h("viewer")).json()
    assert rejects["total"] > 1
    first = rejects["items"][0]["inspection_id"]
    r = api.client.post(f"/api/inspections/{first}/override",
                        json={"confirm": True, "decision": "pass", "reason": "cosmetic only"},
                        headers=api.h("operator"))
    assert r.status_code == 200, r.text
    now_rejects = api.client.get("/api/inspections", params={"decision": "reject", "limit": 100},
                                 headers=api.h("viewer")).json()
    assert first not in {i["inspection_id"] for i in now_rejects["items"]}  # the decision in force is pass
    by_model = api.client.get("/api/inspections", params={"model_decision": "reject", "limit": 100},
                              headers=api.h("viewer")).json()
    assert first in {i["inspection_id"] for i in by_model["items"]} and by_model["total"] == rejects["total"]
    over = api.client.get("/api/inspections", params={"overridden": "true"}, headers=api.h("viewer")).json()
    assert [i["inspection_id"] for i in over["items"]] == [first]
    not_over = api.client.get("/api/inspections", params={"overridden": "false", "limit": 100},
                              headers=api.h("viewer")).json()
    assert not_over["total"] == 12 - 1


def test_class_filter_takes_any_products_class(api: Api) -> None:
    with psycopg.connect(api.db, autocommit=True) as conn:
        iid = conn.execute("SELECT inspection_id, ts FROM inspections WHERE decision = 'reject' LIMIT 1").fetchone()
        assert iid is not None
        conn.execute("INSERT INTO defects (inspection_id, idx, ts, line, camera, cls, confidence, x1, y1, x2, y2)"
                     " VALUES (%s, 5, %s, %s, 'cam-1', 'scratches', 0.8, 1, 2, 3, 4)", (iid[0], iid[1], LINE))
    out = api.client.get("/api/inspections", params={"cls": "scratches"}, headers=api.h("viewer"))
    assert out.status_code == 200 and [i["inspection_id"] for i in out.json()["items"]] == [iid[0]]
