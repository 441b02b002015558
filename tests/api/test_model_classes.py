"""Classes from the model: the editor's classes and the feedback set follow the camera's model, any product."""

from __future__ import annotations

from api_support import LINE, Api


def _status(classes: list[str]):  # type: ignore[no-untyped-def]
    return lambda line: {"cameras": {"cam-1": {"model": "centernet:steel@v1", "classes": classes}}} \
        if line == LINE else None


def test_editor_classes_and_feedback_follow_the_cameras_model(api: Api) -> None:
    h = api.h("operator")
    default = api.client.get("/api/cameras/cam-1/classes", params={"line": LINE}, headers=h).json()
    assert default["source"] == "default" and "short" in default["classes"]
    api.deps.line_status = _status(["scratches", "pits", "inclusion"])
    c = api.client.get("/api/cameras/cam-1/classes", params={"line": LINE}, headers=h).json()
    assert c == {"line": LINE, "camera": "cam-1", "model": "centernet:steel@v1",
                 "classes": ["scratches", "pits", "inclusion"], "source": "runtime"}
    iid = api.client.get("/api/inspections", params={"limit": 1}, headers=h).json()["items"][0]["inspection_id"]
    ok = api.client.post(f"/api/inspections/{iid}/labels", headers=h,
                         json={"labels": [{"cls": "scratches", "x1": 10, "y1": 10, "x2": 40, "y2": 30}]})
    assert ok.status_code == 201, ok.text  # a steel class, which the PCB-only schema used to refuse
    classes_txt = next(api.deps.training_dir.rglob("classes.txt")).read_text().split()
    assert classes_txt == ["scratches", "pits", "inclusion"]
    bad = api.client.post(f"/api/inspections/{iid}/labels", headers=h,
                          json={"labels": [{"cls": "short", "x1": 10, "y1": 10, "x2": 40, "y2": 30}]})
    assert bad.status_code == 422 and "short" in bad.text  # not a class of this camera's model
