"""Alarms and line targets for the supervisor console.

Nothing here invents an alarm: each one is derived from what lineguard already records or checks.

* **Event alarms** come from ``audit_log`` rows the runtime wrote: ``line.*`` (safe state, e-stop, guard door,
  a stop at the panel, ...) and ``plc.stop`` / ``plc.slow`` by ``runtime:<line>`` (a rule). One alarm per row
  (``key = audit:<audit_id>``), latched: it stays until a supervisor clears it.
* **Condition alarms** come from the readiness checks (``ApiDeps.extra_checks``: ``plc:``, ``camera:``,
  ``model:``, ``broker``), the PLC link of each line's controller, the line's thresholds in
  ``line_targets`` (reject rate over a window, kWh in the last hour), the Sparkplug host state ingest keeps
  (``sparkplug_nodes``: an edge node or device of the line's group that is stale or dead,
  ``cond:sparkplug:<group>/<node>[/<device>]``) and the dead-letter quota (``cond:dead_letter:<line>``, on every
  line: the table is shared, so every line's bad messages stop being kept). One open alarm per condition
  (``key = cond:<name>``); the API clears it when the condition goes.

The API brings the ``alarms`` table up to date whenever alarms are read (``GET /api/alarms``) and, while a console
listens on the live stream, in the background (``AlarmWatch``), which pushes each change (raised, acknowledged,
cleared) to the consoles as an ``alarm`` event; all under an advisory lock so two readers do not raise one alarm
twice. Acknowledging (``alarm_acks``) and
clearing need a supervisor and are audited (``alarm.ack``, ``alarm.clear``) with the person's note.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from psycopg.rows import dict_row
from psycopg_pool import PoolTimeout
from starlette.concurrency import run_in_threadpool

from line_agent.api.auth import ErrorOut, Principal, Role, guarded, principal, unprocessable
from line_agent.api.control import check_line, line_filter, read_state, resolve_line
from line_agent.api.db import HasApp, audit, deps_of, pool_of
from line_agent.api.deps import ApiDeps
from line_agent.api.schemas import AlarmNoteIn, AlarmOut, AlarmPage, Ident, IsoTime, TargetsIn, TargetsOut

log = logging.getLogger(__name__)
router = APIRouter()

_LOCK = 7242015  # pg advisory lock: one alarm evaluation at a time per database
# Event alarms: audit action -> (kind, severity, title). Any other line.* is a medium "line event".
EVENTS: dict[str, tuple[str, str, str]] = {
    "line.estop": ("estop", "critical", "Emergency stop"),
    "line.safe_state": ("safe_state", "critical", "PLC in its safe state"),
    "line.guard_door": ("guard_door", "high", "Guard door opened"),
    "line.stopped_at_plc": ("stopped_at_plc", "medium", "Line stopped at the PLC"),
    "plc.stop": ("rule_stop", "high", "Automatic stop by a rule"),
    "plc.slow": ("rule_slow", "low", "Automatic slow-down by a rule"),
}
#: The audit rows that raise an event alarm (any line.*, and a rule's own successful stop or slow-down), as SQL
#: over audit_log: used by sync_alarms to raise them and by AlarmWatch to know when to.
RAISES_SQL = ("(action LIKE 'line.%%' OR (action IN ('plc.stop', 'plc.slow') AND actor LIKE 'runtime:%%'"
              " AND result = 'ok'))")
SEVERITY_ORDER = "CASE a.severity WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'medium' THEN 2 ELSE 3 END"
TARGET_COLS = ("throughput_ppm", "throughput_amber", "throughput_red", "reject_amber", "reject_red",
               "reject_window_min", "reject_min_parts", "energy_kwh_h_max")
DEFAULT_TARGETS: dict[str, Any] = {"throughput_ppm": None, "throughput_amber": 0.9, "throughput_red": 0.75,
                                   "reject_amber": 0.05, "reject_red": 0.10, "reject_window_min": 15.0,
                                   "reject_min_parts": 20, "energy_kwh_h_max": None}
AlarmId = Annotated[int, Path(ge=1, le=2**63 - 1)]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such alarm."},
    409: {"model": ErrorOut, "description": "Already acknowledged / cleared, or its condition is still present."},
}


@dataclass(frozen=True, slots=True)
class Condition:
    key: str
    line: str
    kind: str
    severity: str
    title: str
    reason: str
    source: str


# ---- what is wrong now ----------------------------------------------------------------------------
def _check_condition(name: str, value: str, lines: list[str]) -> Condition:
    """A failing readiness check (``plc:<line>``, ``camera:<line>/<cam>``, ``model:<line>/<cam>``, ``broker``)."""
    kind, _, rest = name.partition(":")
    line = rest.split("/", 1)[0] if rest else ""
    if line not in lines:
        line = lines[0]
    titles = {"plc": ("plc_link", "critical", "PLC link down"), "camera": ("camera", "high", "Camera without frames"),
              "model": ("model", "high", "Model not loaded"), "broker": ("broker", "medium", "MQTT broker unreachable")}
    k, sev, title = titles.get(kind, (kind or "check", "medium", f"Check failed: {name}"))
    if kind == "camera":
        title = f"Camera {rest.split('/', 1)[-1]}: no frames"
    elif kind == "model":
        title = f"Model of {rest.split('/', 1)[-1]} not loaded"
    return Condition(f"cond:{name}", line, k, sev, title, str(value), "readiness")


async def current_conditions(request: HasApp, deps: ApiDeps) -> list[Condition]:
    out: dict[str, Condition] = {}
    if deps.extra_checks is not None:
        try:
            checks = dict(deps.extra_checks())
        except Exception as exc:  # a failing probe is an alarm of its own, never a 500
            checks = {"runtime": f"error: {type(exc).__name__}"}
        for name, value in checks.items():
            if not str(value).startswith("ok"):
                c = _check_condition(name, str(value), deps.lines)
                out[c.key] = c
    targets = await _targets(request, deps.lines)
    for line in deps.lines:
        if deps.controller_for(line) is not None and f"cond:plc:{line}" not in out:
            st = await read_state(deps, line)
            if st.state == "unknown":
                out[f"cond:plc:{line}"] = Condition(f"cond:plc:{line}", line, "plc_link", "critical",
                                                    "PLC link down", st.reason or "line state unknown", f"plc:{line}")
        t = targets[line]
        rate = await _reject_rate(request, line, float(t["reject_window_min"]))
        if rate is not None and rate[0] >= int(t["reject_min_parts"]) and rate[0] > 0:
            parts, bad = rate
            r = bad / parts
            if r >= float(t["reject_red"]):
                sev, lim = "high", float(t["reject_red"])
            elif r >= float(t["reject_amber"]):
                sev, lim = "medium", float(t["reject_amber"])
            else:
                sev = ""
            if sev:
                out[f"cond:reject_rate:{line}"] = Condition(
                    f"cond:reject_rate:{line}", line, "reject_rate", sev, "Reject rate above threshold",
                    f"{r * 100:.1f} % of {parts} parts in the last {float(t['reject_window_min']):g} min rejected "
                    f"(threshold {lim * 100:g} %)", "threshold")
        if t["energy_kwh_h_max"] is not None:
            kwh = await _kwh_last_hour(request, deps, line)
            if kwh is not None and kwh > float(t["energy_kwh_h_max"]):
                out[f"cond:energy:{line}"] = Condition(
                    f"cond:energy:{line}", line, "energy", "medium", "Energy above threshold",
                    f"{kwh:.2f} kWh in the last hour (threshold {float(t['energy_kwh_h_max']):g} kWh)", "threshold")
    for c in await _sparkplug_conditions(request, deps):
        out[c.key] = c
    for c in await _dead_letter_conditions(request, deps):
        out[c.key] = c
    return list(out.values())


def fmt_silence(s: float) -> str:
    """A silence for a title or reason: coarse past two minutes, so a pushed alarm changes once a minute at most."""
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s // 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _utc(t: datetime | None) -> str:
    return "never" if t is None else t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def _sparkplug_conditions(request: HasApp, deps: ApiDeps) -> list[Condition]:
    """One alarm per Sparkplug edge node (its devices named in it) or per device of a live node, of a group this
    API serves as a line, that is ``dead`` (high) or ``stale`` (medium): line_agent/store/nodes.py ``list_nodes``,
    the same status as ``GET /api/nodes``."""
    from line_agent.store.nodes import list_nodes

    stale_s = deps.sparkplug_stale_after_s

    def run() -> list[Any]:
        with request.app.state.sync_pool.connection() as conn:
            return [n for n in list_nodes(conn, stale_after_s=stale_s) if n.line in deps.lines]

    try:
        found = await run_in_threadpool(run)
    except psycopg.Error:
        log.exception("Sparkplug node check failed")
        return []
    bad = {(n.group_id, n.edge_node, n.device): n for n in found if n.status in ("dead", "stale")}
    out: list[Condition] = []
    for (group, node, device), n in bad.items():
        parent = bad.get((group, node, ""))
        if device and parent is not None and parent.status == n.status:
            continue  # said in its node's alarm
        what = f"Sparkplug {'device' if device else 'node'} {group}/{node}{'/' + device if device else ''}"
        with_it = sorted(d for (g, e, d), m in bad.items() if not device and d and g == group and e == node
                         and m.status == n.status)
        tail = f"; its device{'s' if len(with_it) > 1 else ''} {', '.join(with_it)} with it" if with_it else ""
        if n.status == "dead":
            since = n.death_at
            title = f"{what} dead since {_utc(since)}" if since else f"{what} dead"
            why = ("its node died (NDEATH)" if device and n.death_at is None else
                   "DDEATH received" if device else "NDEATH received (or its broker connection was lost)")
            reason = (f"{why}; last message {_utc(n.last_seen)}; its data is missing until it is born again"
                      f" (ingest asks for a rebirth){tail}")
            sev = "high"
        else:
            silent = n.silent_s
            title = f"{what} silent {fmt_silence(silent)}" if silent is not None else f"{what} never heard from"
            reason = (f"born, not dead, but no message since {_utc(n.last_seen)} (stale after "
                      f"{fmt_silence(stale_s)}){tail}")
            sev = "medium"
        key = f"cond:sparkplug:{group}/{node}{'/' + device if device else ''}"
        out.append(Condition(key, n.line, "sparkplug_" + n.status, sev, title, reason, f"sparkplug:{group}/{node}"))
    return out


#: The dead-letter alarm: medium from this share of the quota used; high when full or when bad messages were
#: dropped within DEAD_LETTER_DROP_WINDOW_S (the alarm clears itself that long after the last drop).
DEAD_LETTER_NEAR = 0.9
DEAD_LETTER_DROP_WINDOW_S = 900.0


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB"


async def _dead_letter_conditions(request: HasApp, deps: ApiDeps) -> list[Condition]:
    """The dead_letter table near or at its quota, or bad messages dropped for it lately: one alarm per line
    (the table and quota are shared by every line's ingest). The bytes are the writer's own estimate
    (``DEAD_LETTER_BYTES_SQL``); the quota the one the workers report enforcing, else ``deps``'."""
    from line_agent.ingest.writer import DEAD_LETTER_BYTES_SQL, DEAD_LETTER_ROW_OVERHEAD

    async with pool_of(request).connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT quota_bytes, dropped, last_dropped_at,"
                          " extract(epoch FROM now() - last_dropped_at)::float8 AS ago FROM dead_letter_quota")
        q = await cur.fetchone()
        quota = int(q["quota_bytes"]) if q is not None else deps.dead_letter_quota_bytes
        if quota <= 0:
            return []
        await cur.execute(f"SELECT ({DEAD_LETTER_BYTES_SQL})::float8 AS used", (DEAD_LETTER_ROW_OVERHEAD,))
        row = await cur.fetchone()
    used = float(row["used"]) if row else 0.0
    recent = q is not None and q["ago"] is not None and float(q["ago"]) <= DEAD_LETTER_DROP_WINDOW_S
    share = used / quota
    if not recent and share < DEAD_LETTER_NEAR:
        return []
    reason = f"dead_letter holds ~{_mib(used)} of its {_mib(quota)} quota ({share * 100:.0f} %)"
    if q is not None and int(q["dropped"]):
        reason += (f"; {int(q['dropped'])} bad message(s) not stored since the quota was full, the last at "
                   f"{_utc(q['last_dropped_at'])} (lineguard_dead_letters_dropped_total)")
    reason += "; free room by deleting dead letters already looked at (docs/MQTT.md, Quota)"
    if recent or share >= 1.0:
        sev, title = "high", "Dead-letter storage full: bad messages are not being kept"
    else:
        sev, title = "medium", "Dead-letter storage near its quota"
    return [Condition(f"cond:dead_letter:{line}", line, "dead_letter_quota", sev, title, reason, "ingest")
            for line in deps.lines]


async def _reject_rate(request: HasApp, line: str, window_min: float) -> tuple[int, int] | None:
    async with pool_of(request).connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT count(*) AS parts, count(*) FILTER (WHERE coalesce(override, decision) = 'reject') AS bad"
            " FROM inspections WHERE line = %s AND ts >= now() - make_interval(secs => %s)",
            (line, window_min * 60))
        row = await cur.fetchone()
    return None if row is None else (int(row["parts"]), int(row["bad"]))


async def _kwh_last_hour(request: HasApp, deps: ApiDeps, line: str) -> float | None:
    from line_agent.store import queries

    end = datetime.now(UTC)
    start = end - timedelta(hours=1)

    def run() -> float:
        with request.app.state.sync_pool.connection() as conn:
            return sum(e.kwh for e in queries.energy(conn, line, start, end, 3600, metric=deps.energy_metric,
                                                     source=deps.energy_source, unit_w=deps.energy_unit_w))

    try:
        return await run_in_threadpool(run)
    except psycopg.Error:
        log.exception("energy threshold check failed for %s", line)
        return None


# ---- bringing the table up to date ---------------------------------------------------------------
async def sync_alarms(request: HasApp, conditions: bool = True) -> None:
    """Raise event alarms from new audit rows; with ``conditions``, open / update / clear condition alarms too."""
    deps = deps_of(request)
    # Outside the lock: a PLC read may take seconds.
    conds = await current_conditions(request, deps) if conditions else []
    async with pool_of(request).connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        cur = conn.cursor(row_factory=dict_row)
        # First run: look back a day, not over the whole history.
        await cur.execute(
            "INSERT INTO alarm_cursor (id, last_audit_id) VALUES (1, coalesce((SELECT max(audit_id) FROM audit_log"
            " WHERE ts < now() - interval '24 hours'), 0)) ON CONFLICT (id) DO NOTHING")
        await cur.execute("SELECT last_audit_id FROM alarm_cursor WHERE id = 1")
        row = await cur.fetchone()
        last = int(row["last_audit_id"]) if row else 0
        await cur.execute(
            "SELECT audit_id, ts, actor, action, target, result, detail FROM audit_log WHERE audit_id > %s"
            f" AND {RAISES_SQL} ORDER BY audit_id LIMIT 2000", (last,))
        for a in await cur.fetchall():
            kind, sev, title = EVENTS.get(a["action"], ("line_event", "medium", f"Line event: {a['action']}"))
            detail = a["detail"] if isinstance(a["detail"], dict) else {}
            line = str(detail.get("line") or a["target"] or deps.lines[0])
            await cur.execute(
                "INSERT INTO alarms (key, line, kind, severity, title, reason, source, audit_id, latched, raised_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, true, %s)"
                " ON CONFLICT (audit_id) WHERE audit_id IS NOT NULL DO NOTHING",
                (f"audit:{a['audit_id']}", line, kind, sev, title, str(detail.get("reason") or ""), a["actor"],
                 a["audit_id"], a["ts"]))
        # Rows of the last seconds may still be committing with lower ids: read them again next time.
        await cur.execute(
            "UPDATE alarm_cursor SET last_audit_id = greatest(last_audit_id, coalesce((SELECT max(audit_id)"
            " FROM audit_log WHERE audit_id > %s AND ts < now() - interval '10 seconds'), 0)) WHERE id = 1",
            (last,))
        if not conditions:
            return
        for c in conds:
            await cur.execute(
                "INSERT INTO alarms (key, line, kind, severity, title, reason, source, latched)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, false)"
                " ON CONFLICT (key) WHERE cleared_at IS NULL DO UPDATE SET kind = EXCLUDED.kind,"
                " severity = EXCLUDED.severity, title = EXCLUDED.title, reason = EXCLUDED.reason",
                (c.key, c.line, c.kind, c.severity, c.title, c.reason, c.source))
        await cur.execute(
            "UPDATE alarms SET cleared_at = now(), cleared_by = 'condition cleared' WHERE NOT latched"
            " AND cleared_at IS NULL AND NOT (key = ANY(%s))", ([c.key for c in conds],))


# ---- routes -------------------------------------------------------------------------------------
_ALARM_SELECT = ("SELECT a.*, a.cleared_at IS NULL AS active, k.ts AS acked_at, k.actor AS acked_by,"
                 " k.note AS ack_note FROM alarms a LEFT JOIN alarm_acks k USING (alarm_id)")


async def alarm_page(src: HasApp, lines: list[str] | None, state: Literal["active", "all"] = "active",
                     since: datetime | None = None, limit: int = 100, offset: int = 0) -> AlarmPage:
    """A page of alarms of ``lines`` (None: every line) with the counts; brings the table up to date first."""
    await sync_alarms(src)
    where = ["(%(lines)s::text[] IS NULL OR a.line = ANY(%(lines)s))"]
    if state == "active":
        where.append("(a.cleared_at IS NULL OR k.alarm_id IS NULL)")
        order = f"a.cleared_at IS NOT NULL, {SEVERITY_ORDER}, a.raised_at DESC"
    else:
        where.append("(%(since)s::timestamptz IS NULL OR a.raised_at >= %(since)s)")
        order = "a.raised_at DESC, a.alarm_id DESC"
    p = {"lines": lines, "since": since, "limit": limit, "offset": offset}
    mine = "(%(lines)s::text[] IS NULL OR a.line = ANY(%(lines)s))"
    async with pool_of(src).connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(f"{_ALARM_SELECT} WHERE {' AND '.join(where)} ORDER BY {order}"
                          " LIMIT %(limit)s OFFSET %(offset)s", p)
        rows = await cur.fetchall()
        await cur.execute(
            "SELECT count(*) FILTER (WHERE " + " AND ".join(where) + ") AS total,"
            f" count(*) FILTER (WHERE a.cleared_at IS NULL AND {mine}) AS active,"
            f" count(*) FILTER (WHERE k.alarm_id IS NULL AND {mine}) AS unacked"
            " FROM alarms a LEFT JOIN alarm_acks k USING (alarm_id)", p)
        n = await cur.fetchone()
    assert n is not None
    return AlarmPage(items=[AlarmOut.model_validate(r) for r in rows], total=int(n["total"]),
                     active=int(n["active"]), unacked=int(n["unacked"]))


@router.get("/api/alarms", response_model=AlarmPage, tags=["alarms"], summary="Alarms",
            description="`state=active` (default): alarms not yet both cleared and acknowledged, most severe first. "
                        "`state=all`: the history, newest first (`since` for chart markers). Reading brings the "
                        "alarms up to date with the audit trail, the readiness checks and the line's thresholds. "
                        "A token limited to lines sees only its lines' alarms. The console gets changes pushed on "
                        "`GET /api/live/events` (`alarms`, then `alarm`) and reads this only while that is down.",
            **guarded(Role.viewer))
async def list_alarms(request: Request, line: Ident | None = None,
                      state: Literal["active", "all"] = "active",
                      since: Annotated[IsoTime | None, Query(description="Raised at or after (history).")] = None,
                      limit: Annotated[int, Query(ge=1, le=500)] = 100,
                      offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
                      who: Principal = Depends(principal)) -> AlarmPage:
    deps = deps_of(request)
    if line is not None:
        line = resolve_line(deps, line, who)
    try:
        t = None if since is None else datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError as exc:
        raise unprocessable(("query", "since"), f"not a time: {exc}") from None
    t = t if t is None or t.tzinfo else t.replace(tzinfo=UTC)
    return await alarm_page(request, line_filter(who, line), state, t, limit, offset)


async def _one(cur: psycopg.AsyncCursor[dict[str, Any]], alarm_id: int) -> dict[str, Any]:
    await cur.execute(f"{_ALARM_SELECT} WHERE a.alarm_id = %s", (alarm_id,))
    row = await cur.fetchone()
    if row is None:
        raise HTTPException(404, f"no alarm {alarm_id}")
    return row


@router.post("/api/alarms/{alarm_id}/ack", response_model=AlarmOut, tags=["alarms"], summary="Acknowledge an alarm",
             description="A supervisor says they have seen it, with a note. Audited as `alarm.ack`.",
             **guarded(Role.supervisor, _NOT_FOUND))
async def ack_alarm(request: Request, alarm_id: AlarmId, body: AlarmNoteIn,
                    who: Principal = Depends(principal)) -> AlarmOut:
    async with pool_of(request).connection() as conn, conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT alarm_id FROM alarms WHERE alarm_id = %s FOR UPDATE", (alarm_id,))
        before = await _one(cur, alarm_id)
        check_line(who, str(before["line"]), f"alarm {alarm_id}")
        if before["acked_at"] is not None:
            raise HTTPException(409, f"alarm {alarm_id} was already acknowledged by {before['acked_by']}")
        await cur.execute("INSERT INTO alarm_acks (alarm_id, actor, role, note) VALUES (%s, %s, %s, %s)",
                          (alarm_id, who.name, who.role.value, body.note))
        after = await _one(cur, alarm_id)
        await audit(conn, who, "alarm.ack", f"alarm:{alarm_id}", {"acked": False}, {"acked": True}, "ok",
                    {"line": before["line"], "alarm": before["title"], "severity": before["severity"],
                     "reason": body.note, "note": body.note})
    watch_of(request).kick()
    return AlarmOut.model_validate(after)


@router.post("/api/alarms/{alarm_id}/clear", response_model=AlarmOut, tags=["alarms"], summary="Clear an alarm",
             description="A supervisor clears a latched (event) alarm once its cause is dealt with; a condition alarm "
                         "clears itself when the condition goes (409 while it lasts). Audited as `alarm.clear`.",
             **guarded(Role.supervisor, _NOT_FOUND))
async def clear_alarm(request: Request, alarm_id: AlarmId, body: AlarmNoteIn,
                      who: Principal = Depends(principal)) -> AlarmOut:
    async with pool_of(request).connection() as conn, conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT alarm_id FROM alarms WHERE alarm_id = %s FOR UPDATE", (alarm_id,))
        before = await _one(cur, alarm_id)
        check_line(who, str(before["line"]), f"alarm {alarm_id}")
        if before["cleared_at"] is not None:
            raise HTTPException(409, f"alarm {alarm_id} is already cleared")
        if not before["latched"]:
            raise HTTPException(409, "the condition is still present; the alarm clears itself when it goes")
        await cur.execute("UPDATE alarms SET cleared_at = now(), cleared_by = %s WHERE alarm_id = %s",
                          (who.name, alarm_id))
        after = await _one(cur, alarm_id)
        await audit(conn, who, "alarm.clear", f"alarm:{alarm_id}", {"active": True}, {"active": False}, "ok",
                    {"line": before["line"], "alarm": before["title"], "reason": body.note, "note": body.note})
    watch_of(request).kick()
    return AlarmOut.model_validate(after)


async def _targets(request: HasApp, lines: list[str]) -> dict[str, dict[str, Any]]:
    async with pool_of(request).connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT * FROM line_targets WHERE line = ANY(%s)", (lines,))
        rows = {r["line"]: r for r in await cur.fetchall()}
    return {line: rows.get(line) or {"line": line, **DEFAULT_TARGETS, "updated_at": None, "updated_by": ""}
            for line in lines}


@router.get("/api/targets", response_model=TargetsOut, tags=["alarms"], summary="A line's targets and thresholds",
            description="Throughput target, amber / red thresholds (console colours) and the alarm thresholds.",
            **guarded(Role.viewer))
async def get_targets(request: Request, line: Ident | None = None,
                      who: Principal = Depends(principal)) -> TargetsOut:
    line_ = resolve_line(deps_of(request), line, who)
    return TargetsOut.model_validate((await _targets(request, [line_]))[line_])


@router.put("/api/targets", response_model=TargetsOut, tags=["alarms"], summary="Set a line's targets",
            description="Supervisor; audited as `targets.set` with the values before and after.",
            **guarded(Role.supervisor))
async def put_targets(request: Request, body: TargetsIn, who: Principal = Depends(principal)) -> TargetsOut:
    line = resolve_line(deps_of(request), body.line, who)
    before = (await _targets(request, [line]))[line]
    vals = [getattr(body, c) for c in TARGET_COLS]
    cols = ", ".join(TARGET_COLS)
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in TARGET_COLS)
    marks = ", ".join(["%s"] * len(vals))
    async with pool_of(request).connection() as conn, conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"INSERT INTO line_targets (line, {cols}, updated_at, updated_by) VALUES (%s, {marks}, now(), %s)"
            f" ON CONFLICT (line) DO UPDATE SET {sets}, updated_at = now(), updated_by = EXCLUDED.updated_by"
            " RETURNING *", (line, *vals, who.name))
        row = await cur.fetchone()
        assert row is not None
        await audit(conn, who, "targets.set", line, {c: before[c] for c in TARGET_COLS},
                    {c: row[c] for c in TARGET_COLS}, "ok", {"line": line})
    return TargetsOut.model_validate(row)


# ---- pushing changes to the console ----------------------------------------------------------------
PUSH_POLL_S = 0.5  # how often the watcher looks for new audit rows that raise an alarm (a primary-key range)
CONDITIONS_S = 3.0  # how often it evaluates the conditions (readiness checks, PLC link, thresholds)


class AlarmWatch:
    """Keeps the alarms table current while a console listens and publishes every change on the live hub.

    The event is ``alarm``: ``{"line", "change": "raised" | "acknowledged" | "cleared" | "updated", "alarm":
    AlarmOut}``, not kept by the hub (a console that connects gets the whole list first, as one ``alarms`` event
    on ``GET /api/live/events``). New audit rows that raise an alarm (a rule stop, a safe state ...) are looked
    for every ``PUSH_POLL_S``; the conditions every ``CONDITIONS_S``; an acknowledgement or a clear through the
    API wakes it at once (``kick``). Nobody listening (``streams`` 0): it does nothing."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.streams = 0
        self._kick: asyncio.Event | None = None  # made in run(): an Event belongs to the loop that serves
        self._known: dict[int, tuple[Any, ...]] | None = None
        self._last_audit: int | None = None
        self._last_full = -1e9
        self._failing = False

    def kick(self) -> None:
        """Look now (an acknowledgement or a clear just happened, or a console connected)."""
        if self._kick is not None:
            self._kick.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        kick = self._kick = asyncio.Event()
        self._known, self._last_audit, self._last_full = None, None, -1e9
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(kick.wait(), PUSH_POLL_S)
            kicked = kick.is_set()
            kick.clear()
            if self.streams <= 0:
                self._known, self._last_audit = None, None  # start over when a console listens again
                continue
            try:
                full = loop.time() - self._last_full >= CONDITIONS_S
                events = await self._new_events()
                if full or events:
                    await sync_alarms(self, conditions=full)
                    if full:
                        self._last_full = loop.time()
                if full or events or kicked:
                    await self._publish_changes()
                if self._failing:
                    log.info("alarm watcher: database back")
                self._failing = False
            except (psycopg.Error, PoolTimeout) as exc:
                # The consoles see their stream stay up without alarms news only as long as this lasts; say so once.
                if not self._failing:
                    log.warning("alarm watcher: cannot read alarms (%s); retrying", type(exc).__name__)
                self._failing = True
                await asyncio.sleep(2.0)
            except Exception:  # anything else is a bug: log it and keep watching, never die silently
                log.exception("alarm watcher failed; retrying")
                await asyncio.sleep(2.0)

    async def _new_events(self) -> bool:
        """Did audit rows that raise an alarm arrive since the last look?"""
        async with pool_of(self).connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"SELECT max(audit_id) AS n, coalesce(bool_or({RAISES_SQL}), false) AS hit"
                              " FROM audit_log WHERE audit_id > %s", (self._last_audit or 0,))
            row = await cur.fetchone()
        first = self._last_audit is None
        if row is not None and row["n"] is not None:
            self._last_audit = int(row["n"])
        elif first:
            self._last_audit = 0
        return first or bool(row and row["hit"])

    async def _publish_changes(self) -> None:
        known = self._known
        async with pool_of(self).connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"{_ALARM_SELECT} WHERE a.cleared_at IS NULL OR k.alarm_id IS NULL"
                              " OR a.alarm_id = ANY(%s) ORDER BY a.alarm_id LIMIT 2000", (list(known or ()),))
            rows = await cur.fetchall()
        hub = deps_of(self).hub
        now: dict[int, tuple[Any, ...]] = {}
        for r in rows:
            a = AlarmOut.model_validate(r)
            sig = (a.acked_at, a.cleared_at, a.severity, a.title, a.reason)
            listed = a.cleared_at is None or a.acked_at is None
            if listed:
                now[a.alarm_id] = sig
            old = None if known is None else known.get(a.alarm_id)
            if old == sig or (old is None and not listed):
                continue
            if old is None:
                change = "raised"
            elif old[0] is None and a.acked_at is not None:
                change = "acknowledged"
            elif old[1] is None and a.cleared_at is not None:
                change = "cleared"
            else:
                change = "updated"
            hub.publish("alarm", {"line": a.line, "change": change, "alarm": a.model_dump(mode="json")},
                        retain=False)
        self._known = now


def watch_of(request: HasApp) -> AlarmWatch:
    watch: AlarmWatch = request.app.state.alarm_watch
    return watch
