"""Downtime episodes from the line's audit rows: rule and supervisor stops, planned apart, restarts, window cuts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from line_agent.downtime import episodes

T0 = datetime(2018, 1, 3, 8, tzinfo=UTC)


def test_rule_stops_supervisor_planned_stop_and_estop() -> None:
    s = T0.timestamp()
    rows = [
        (s + 2, "plc.stop", "runtime:L1", "burst: 5 rejects in 20 parts"),
        (s + 5, "plc.start", "user:anna", "cleared"),
        (s + 12, "plc.stop", "runtime:L1", "burst"),
        (s + 13, "line.estop", "runtime:L1", "emergency stop pressed"),  # already stopped: same episode
        (s + 20, "plc.start", "user:anna", ""),
        (s + 100, "plc.slow", "runtime:L1", "slow rule"),
        (s + 160, "plc.stop", "user:bob", "Planned: tool change"),
        (s + 460, "plc.start", "user:bob", ""),
        (s + 900, "line.safe_state", "runtime:L1", "heartbeat lost"),  # open at the window's end
    ]
    d = episodes(rows, T0, T0 + timedelta(seconds=1000))
    stops = d.stops()
    assert [(e.cause, e.duration_s, e.planned) for e in stops] == [
        ("rule", 3.0, False), ("rule", 8.0, False), ("person", 300.0, True), ("safe_state", 100.0, False)]
    assert stops[-1].ongoing and d.restarts == 3
    assert d.seconds(planned=True) == 300.0 and d.seconds(planned=False) == pytest.approx(111.0)
    assert d.seconds(kind="slow") == 60.0
    assert d.by_cause()["rule"] == (2, 11.0)


def test_stopped_before_the_window_counts_from_its_start() -> None:
    s = T0.timestamp()
    d = episodes([(s - 50, "plc.stop", "user:x", "lunch"), (s + 30, "plc.start", "user:x", "")], T0,
                 T0 + timedelta(minutes=5))
    assert [(e.duration_s, e.planned) for e in d.stops()] == [(30.0, False)] and d.restarts == 1
