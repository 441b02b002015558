"""Frames are found by (line, camera, inspection id, time) inside frames_dir only, never by a stored path.

An inspection's ``frame_path`` comes from an MQTT message; these rows carry hostile values (absolute paths,
``..`` walks, the data dir's admin token) straight in the database, as a forged message would have left them.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import psycopg
import pytest
from api_support import LINE, Api, write_frame

from line_agent.frames import frame_path

SECRET = "lg_the-admin-token-in-the-data-dir"


def _insert(db: str, iid: str, path: str | None, *, line: str = LINE, camera: str = "cam-1",
            ts: datetime | None = None) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO inspections (inspection_id, ts, line, camera, part_id, decision, n_defects, latency_ms,"
            " model, frame_path) VALUES (%s,%s,%s,%s,'P-x','reject',0,1.0,'pcb:v1',%s)",
            (iid, ts or datetime.now(UTC), line, camera, path))


@pytest.fixture
def hostile(api: Api) -> dict[str, str]:
    """Rows whose stored frame_path (or names) point outside frames_dir; the data dir holds a secret."""
    assert api.deps.frames_dir is not None
    data_dir = api.deps.frames_dir.parent
    (data_dir / "admin_token").write_text(SECRET + "\n")
    rel_secret = os.path.relpath(data_dir / "admin_token", api.deps.frames_dir)  # "../admin_token"
    rows = {
        "abs-etc": "/etc/hostname",
        "dots-etc": "../../../../../../../../etc/hostname",
        "abs-secret": str(data_dir / "admin_token"),
        "rel-secret": rel_secret,
        "nul": "frames/\x01../admin_token",
    }
    for iid, path in rows.items():
        _insert(api.db, iid, path)
    # Names that try to walk out of frames_dir themselves (they may come from a message too).
    _insert(api.db, "bad-line", rel_secret, line="../..")
    _insert(api.db, "bad-cam", rel_secret, camera="..")
    _insert(api.db, "..", rel_secret)
    # A link inside frames_dir, at the exact place of a frame, that points at the secret.
    ts = datetime.now(UTC)
    link = frame_path(api.deps.frames_dir, LINE, "cam-1", "linked", ts.timestamp())
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(data_dir / "admin_token")
    _insert(api.db, "linked", str(link), ts=ts)
    return rows


def _never_the_secret(r: object) -> None:
    content = getattr(r, "content", b"")
    assert SECRET.encode() not in content and Path("/etc/hostname").read_bytes() not in content


def test_hostile_frame_paths_give_404_and_never_a_file(api: Api, hostile: dict[str, str]) -> None:
    h = api.h("viewer")
    for iid in [*hostile, "bad-line", "bad-cam", "linked"]:
        r = api.client.get(f"/api/inspections/{iid}/frame", headers=h)
        assert r.status_code == 404, (iid, r.status_code, r.content[:80])
        _never_the_secret(r)
        d = api.client.get(f"/api/inspections/{iid}", headers=h)
        assert d.status_code == 200 and d.json()["has_frame"] is False, iid
        assert "frame_path" not in d.json()
        # Nor can the label editor turn the secret into a training sample.
        r = api.client.post(f"/api/inspections/{iid}/labels", json={"labels": []}, headers=api.h("operator"))
        assert r.status_code == 409, (iid, r.status_code)
    gallery = api.client.get("/api/inspections?limit=100", headers=h).json()["items"]
    assert {i["inspection_id"]: i["has_frame"] for i in gallery if i["inspection_id"] in hostile} == {
        iid: False for iid in hostile}


def test_real_frame_is_served_whatever_frame_path_says(api: Api) -> None:
    assert api.deps.frames_dir is not None
    ts = datetime.now(UTC)
    img = np.zeros((60, 80, 3), np.uint8)
    cv2.circle(img, (40, 30), 10, (0, 255, 0), -1)
    path = write_frame(api.deps.frames_dir, LINE, "cam-1", "real-1", ts.timestamp(), image=img)
    _insert(api.db, "real-1", "/etc/hostname", ts=ts)  # the stored path lies; the frame is found anyway
    r = api.client.get("/api/inspections/real-1/frame", headers=api.h("viewer"))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == path.read_bytes()
    assert api.client.get("/api/inspections/real-1", headers=api.h("viewer")).json()["has_frame"] is True


def test_frame_just_past_midnight_is_found_in_the_day_before(api: Api) -> None:
    assert api.deps.frames_dir is not None
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    write_frame(api.deps.frames_dir, LINE, "cam-1", "midnight", day.timestamp() - 0.5)
    _insert(api.db, "midnight", None, ts=day.replace(second=1))
    assert api.client.get("/api/inspections/midnight/frame", headers=api.h("viewer")).status_code == 200


@pytest.mark.parametrize("url", [
    "/api/inspections/..%2F..%2F..%2F..%2Fetc%2Fhostname/frame",
    "/api/inspections/%2E%2E/frame",
    "/api/inspections/%2e%2e%2fadmin_token/frame",
    "/api/inspections/..%5C..%5Cadmin_token/frame",
    "/api/inspections/%00/frame",
    "/api/inspections/insp-0000%2F..%2F..%2Fadmin_token/frame",
    "/api/inspections/%252E%252E%252Fadmin_token/frame",
])
def test_traversal_through_the_url_never_reaches_a_file(api: Api, hostile: dict[str, str], url: str) -> None:
    r = api.client.get(url, headers=api.h("viewer"))
    assert r.status_code in (404, 422), (url, r.status_code)
    _never_the_secret(r)


def test_labels_use_the_frame_and_its_template_from_frames_dir(api: Api) -> None:
    assert api.deps.frames_dir is not None
    ts = datetime.now(UTC)
    img = np.full((100, 120, 3), 90, np.uint8)
    tmpl = np.full((100, 120, 3), 10, np.uint8)
    write_frame(api.deps.frames_dir, LINE, "cam-1", "pair-1", ts.timestamp(), image=img)
    write_frame(api.deps.frames_dir, LINE, "cam-1", "pair-1", ts.timestamp(), kind="temp", image=tmpl)
    _insert(api.db, "pair-1", "../../../../etc/hostname", ts=ts)
    body = {"labels": [{"cls": "open", "x1": 5, "y1": 5, "x2": 40, "y2": 40}]}
    r = api.client.post("/api/inspections/pair-1/labels", json=body, headers=api.h("operator"))
    assert r.status_code == 201, r.text
    saved = Path(r.json()["sample_path"])
    got = cv2.imread(str(saved), cv2.IMREAD_UNCHANGED)
    assert got is not None and got.shape == img.shape and int(got.mean()) == 90
    temp = cv2.imread(str(saved.with_name(saved.name.replace("_test", "_temp"))), cv2.IMREAD_UNCHANGED)
    assert temp is not None and int(temp.mean()) == 10
