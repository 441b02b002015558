"""Shift figures by the line's own calendar and time zone (the line YAML's ``shifts`` and ``timezone``)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import psycopg
import pytest
from api_support import LINE, Api

from line_agent.meters import ShiftConfig


def test_shift_rows_follow_the_lines_calendar(api: Api) -> None:
    shifts = (ShiftConfig(name="early", start="06:00", end="14:00"), ShiftConfig(name="late", start="14:00",
                                                                               end="22:00"),
              ShiftConfig(name="night", start="22:00", end="06:00"))
    api.deps.calendars = {LINE: (shifts, "Asia/Kolkata")}  # +05:30: shift edges at :30 past UTC hours
    r = api.client.get("/api/telemetry/shifts", params={"line": LINE, "hours": 24}, headers=api.h("viewer"))
    assert r.status_code == 200, r.text
    body = r.json()
    rows = body["items"]
    assert rows and {row["shift"] for row in rows} <= {"early", "late", "night"}
    for row in rows[1:]:  # each starts on a local shift edge (the first is cut at the window's start)
        local = datetime.fromisoformat(row["start"]).astimezone(ZoneInfo("Asia/Kolkata"))
        assert (local.hour, local.minute) in ((6, 0), (14, 0), (22, 0))
    with psycopg.connect(api.db) as conn:
        n = conn.execute("SELECT count(*) FROM inspections WHERE line = %s AND ts >= %s AND ts < %s",
                         (LINE, body["since"], body["until"])).fetchone()
    assert n is not None and sum(row["parts"] for row in rows) == n[0]
    total = api.client.get("/api/telemetry/energy", params={"line": LINE, "hours": 24, "bucket": "day"},
                           headers=api.h("viewer")).json()["items"]
    assert sum(row["kwh"] for row in rows) == pytest.approx(sum(x["kwh"] for x in total), rel=1e-6, abs=1e-6)
