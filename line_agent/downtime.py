"""Downtime from the line itself: stops, slowdowns, safe states and restarts from ``audit_log``.

The runtime writes one ``audit_log`` row per PLC command (``plc.stop`` / ``plc.start`` / ``plc.slow``, actor
``runtime:<line>`` for a rule, ``user:<name>`` for a person, detail ``{"line", "reason", "ts"}``) and one per
change it observed but did not command (``line.safe_state``, ``line.estop``, ``line.guard_door``,
``line.stopped_at_plc``). Only accepted commands (result ``ok``) changed the line; refused ones are ignored.

An episode starts at a stop (or slowdown) while the line ran and ends at the next accepted ``plc.start`` (a
slowdown also ends at a stop, which then begins its own episode). An episode still open at the window's end
lasts until the end (``ongoing``). The line's state at the window's start is the last row before it.

Causes: ``rule`` (the runtime's burst rules), ``person`` (a stop from the console/API), ``estop``,
``safe_state`` (PLC watchdog), ``guard_door``, ``panel`` (stopped at the PLC). **Planned** is a stop by a
person whose reason starts with "planned" (e.g. "planned: tool change", "Planned maintenance"); every other
stop, a person's included, is unplanned.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

STOP_ACTIONS = {"plc.stop": "", "line.safe_state": "safe_state", "line.estop": "estop",
                "line.guard_door": "guard_door", "line.stopped_at_plc": "panel"}
ACTIONS = (*STOP_ACTIONS, "plc.start", "plc.slow")
LOOKBACK = timedelta(days=7)


@dataclass(frozen=True)
class Episode:
    kind: str  # stop | slow
    cause: str  # rule | person | estop | safe_state | guard_door | panel
    actor: str
    reason: str
    start: datetime
    end: datetime
    planned: bool
    ongoing: bool = False

    @property
    def duration_s(self) -> float:
        return (self.end - self.start).total_seconds()


@dataclass(frozen=True)
class Downtime:
    episodes: tuple[Episode, ...]
    restarts: int

    def stops(self) -> list[Episode]:
        return [e for e in self.episodes if e.kind == "stop"]

    def seconds(self, *, kind: str = "stop", planned: bool | None = None) -> float:
        return sum(e.duration_s for e in self.episodes if e.kind == kind and (planned is None or e.planned == planned))

    def by_cause(self) -> dict[str, tuple[int, float]]:
        out: dict[str, tuple[int, float]] = {}
        for e in self.stops():
            n, s = out.get(e.cause, (0, 0.0))
            out[e.cause] = (n + 1, s + e.duration_s)
        return out


def is_planned(actor: str, reason: str) -> bool:
    return actor.startswith("user:") and reason.strip().lower().startswith("planned")


def _cause(action: str, actor: str) -> str:
    if STOP_ACTIONS.get(action):
        return STOP_ACTIONS[action]
    return "person" if actor.startswith("user:") else "rule"


def episodes(rows: list[tuple[float, str, str, str]], start: datetime, end: datetime) -> Downtime:
    """Rows (epoch ts, action, actor, reason), any order, from before ``start`` on -> episodes cut at the window."""
    s, e = start.timestamp(), end.timestamp()
    rows = sorted(rows, key=lambda r: r[0])
    out: list[Episode] = []
    restarts = 0
    open_: tuple[str, str, str, str, float, bool] | None = None  # kind, cause, actor, reason, since, planned

    def close(at: float) -> None:
        nonlocal open_
        if open_ is None:
            return
        kind, cause, actor, reason, since, planned = open_
        a, b = max(since, s), min(at, e)
        if b > a or (since >= s and since < e):
            out.append(Episode(kind, cause, actor, reason, datetime.fromtimestamp(a, UTC),
                               datetime.fromtimestamp(max(a, b), UTC), planned, ongoing=at > e))
        open_ = None

    for ts, action, actor, reason in rows:
        if ts >= e:
            break
        if action == "plc.start":
            if open_ is not None and ts >= s:
                restarts += 1
            close(ts)
        elif action in STOP_ACTIONS:
            if open_ is not None and open_[0] == "stop":
                continue  # already stopped: an e-stop after a rule stop does not start a second episode
            close(ts)
            open_ = ("stop", _cause(action, actor), actor, reason, ts, is_planned(actor, reason))
        elif action == "plc.slow" and open_ is None:
            open_ = ("slow", _cause(action, actor), actor, reason, ts, is_planned(actor, reason))
    close(e + 1.0)
    return Downtime(tuple(out), restarts)


def read(conn: Any, line: str, start: datetime, end: datetime, lookback: timedelta = LOOKBACK) -> Downtime:
    """The line's episodes in [start, end) from ``audit_log`` (accepted commands and observations only)."""
    rows = conn.execute(
        "SELECT coalesce(CASE WHEN jsonb_typeof(detail->'ts') = 'number' THEN (detail->>'ts')::float8 END,"
        "                extract(epoch FROM ts)::float8), action, actor, coalesce(detail->>'reason', '')"
        " FROM audit_log WHERE action = ANY(%(actions)s) AND result = 'ok'"
        " AND (detail->>'line' = %(line)s OR (detail->>'line' IS NULL AND target = %(line)s))"
        " AND ts >= %(since)s AND ts < %(until)s ORDER BY ts, audit_id",
        {"actions": list(ACTIONS), "line": line, "since": start - lookback, "until": end + timedelta(minutes=5)},
    ).fetchall()
    return episodes([(float(t), str(a), str(who), str(r)) for t, a, who, r in rows], start, end)
