"""The line agent: pick tools, narrate, verify, regenerate once, fall back to the template, store.

``summarize()`` is the one entry point used by the CLI, the API ("summarize on demand"), the
scheduler and the alarm trigger. It never raises for bad data or a failing backend: every outcome
(no data, timeout, invalid JSON, unsupported claims) is a stored ``summaries`` row with a verdict.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from line_agent.agent.tools import ALWAYS, FIXED_PLAN, TOOLS, ToolConfig, run_tools, vocabulary
from line_agent.store.migrate import migrate
from llm_ops.accounting import LLM_COST, Ledger
from llm_ops.backends import Backend, BackendError, Completion, TemplateBackend, make_backend
from llm_ops.facts import Fact, ToolResult, Window, fmt_value
from llm_ops.narrator import narrate
from llm_ops.verify import Verdict, fact_mentioned, summary_texts, verify_summary

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Any]  # (topic, payload) -> anything; e.g. paho's client.publish

SUMMARY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "headline": {"type": "string"},
        "findings": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"text": {"type": "string"}, "evidence": {"type": "array", "items": {"type": "string"}}},
                "required": ["text", "evidence"],
            },
        },
        "checks": {"type": "array", "items": {"type": "string"}},
        "prose": {"type": "string"},
    },
    "required": ["headline", "findings", "checks", "prose"],
}

_migrated: set[str] = set()


def ensure_schema(url: str) -> None:
    """Apply migrations once per process and database (cheap after the first call)."""
    if url not in _migrated:
        migrate(url)
        _migrated.add(url)


def prompt(name: str) -> str:
    return (resources.files("llm_ops") / "prompts" / name).read_text(encoding="utf-8")


_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_since(since: str, now: datetime | None = None) -> tuple[datetime, datetime]:
    """'8h', '30m', '2d', '1w' or an ISO start time -> (start, now). Raises ValueError naming the problem."""
    now = now or datetime.now(UTC)
    m = _SINCE.match(since)
    if m:
        mult = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return now - timedelta(seconds=float(m.group(1)) * mult), now
    try:
        start = datetime.fromisoformat(since)
    except ValueError:
        raise ValueError(f"--since {since!r}: use a duration like 8h, 30m, 2d or an ISO time") from None
    return (start if start.tzinfo else start.replace(tzinfo=UTC)), now


class UnknownLineError(ValueError):
    """A line neither seen in the store nor configured; the message names the known ones."""


_LINES_SQL = """
WITH RECURSIVE t AS (
    SELECT min(line) AS l FROM {table}
    UNION ALL SELECT (SELECT min(line) FROM {table} WHERE line > t.l) FROM t WHERE t.l IS NOT NULL)
SELECT l FROM t WHERE l IS NOT NULL"""


def configured_lines() -> dict[str, Any]:
    """Line id -> LineConfig of the line YAML the deployment names (``LINEGUARD_LINE_CONFIG``), if any."""
    from line_agent.config import ConfigError, load_line_config
    from line_agent.settings import Settings

    try:
        path = Settings().line_config
        if path is None or not path.is_file():
            return {}
        cfg = load_line_config(path)
    except (ConfigError, ValueError, OSError) as exc:
        log.warning("line config not read: %s", exc)
        return {}
    return {cfg.line: cfg}


def known_lines(conn: psycopg.Connection, configured: set[str] | None = None) -> list[str]:
    """Lines seen in the store (telemetry, events, inspections, the line's own audit rows) or configured."""
    out = set(configured if configured is not None else configured_lines())
    for table in ("telemetry", "events", "inspections"):
        out.update(str(r[0]) for r in conn.execute(_LINES_SQL.format(table=table)).fetchall())
    out.update(str(r[0]) for r in conn.execute(
        "SELECT DISTINCT detail->>'line' FROM audit_log WHERE action LIKE 'plc.%%' OR action LIKE 'line.%%'"
    ).fetchall() if r[0])
    return sorted(out)


def tool_config_for(line: str, configs: dict[str, Any] | None = None) -> ToolConfig:
    """The line's meters, time zone and shift calendar from its YAML; defaults (the contract, UTC, A/B/C)."""
    from line_agent.settings import Settings

    try:
        stale = float(Settings().sparkplug_stale_s)
    except ValueError:  # a bad LINEGUARD_* elsewhere: the default, the summary still runs
        stale = ToolConfig.sparkplug_stale_s
    cfg = (configs if configs is not None else configured_lines()).get(line)
    if cfg is None:
        return ToolConfig(sparkplug_stale_s=stale)
    return ToolConfig(meters=cfg.meters, timezone=cfg.timezone, shifts=tuple(cfg.shifts), sparkplug_stale_s=stale)


def resolve_window(*, since: str | None = None, start: datetime | None = None, end: datetime | None = None,
                   shift: str | None = None, day: date | None = None, cfg: ToolConfig | None = None,
                   now: datetime | None = None) -> tuple[datetime, datetime]:
    """[start, end) of a summary: a shift of a day (``shift`` + ``day``, the line's calendar and zone), an
    explicit ``start``/``end`` (end defaults to now), or the last ``since``. Raises ValueError naming the problem."""
    from line_agent.meters import ShiftError, shift_window

    cfg = cfg or ToolConfig()
    if shift is not None or day is not None:
        if shift is None or day is None:
            raise ValueError("--shift and --date go together (a shift of one day)")
        if start is not None or end is not None:
            raise ValueError("give a shift and date, or --from/--to, not both")
        try:
            return shift_window(cfg.shifts, shift, day, cfg.timezone)
        except ShiftError as exc:
            raise ValueError(str(exc)) from None
    if start is None:
        s, default_end = parse_since(since or "8h", end or now)
        return s, end or default_end
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    if end is not None and end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    return start, end or now or datetime.now(UTC)


@dataclass
class SummaryResult:
    summary_id: int | None
    line: str
    window: Window
    trigger: str
    lang: str
    verdict: str
    backend: str
    model: str
    headline: str
    summary: dict[str, Any]
    prose: str
    facts: list[Fact]
    detail: dict[str, Any] = field(default_factory=dict)
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0
    cost_usd: float = 0.0
    published: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "summary_id": self.summary_id, "line": self.line, "window": self.window.to_json(),
            "trigger": self.trigger, "lang": self.lang, "verdict": self.verdict, "backend": self.backend,
            "model": self.model, "headline": self.headline, "summary": self.summary, "prose": self.prose,
            "facts": [f.to_json() for f in self.facts], "detail": self.detail, "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out, "latency_ms": round(self.latency_ms, 1),
            "cost_usd": self.cost_usd, "published": self.published,
        }


def _prompt_facts(facts: list[Fact], lang: str, limit: int = 40) -> list[dict[str, Any]]:
    """Facts for the prompt: key facts first, per-interval detail last; each with its display string."""
    ordered = sorted(facts, key=lambda f: (not f.key, f.kind == "energy_interval"))[:limit]
    out = []
    for f in ordered:
        d = {"id": f.id, "kind": f.kind, "value": f.value, "unit": f.unit, "names": list(f.names),
             "label": f.label, "display": fmt_value(f.value, f.unit, lang), "key": f.key}
        if f.at:
            d["at"] = f.at
        if f.kind in ("anomaly", "cause", "data_gap"):
            d["extra"] = f.extra
        out.append(d)
    return out


def build_messages(w: Window, facts: list[Fact], lang: str, alert: bool = False) -> list[dict[str, Any]]:
    block = {"line": w.line, "lang": lang, "alert": alert, "window": w.to_json(), "facts": _prompt_facts(facts, lang)}
    user = prompt("user.txt").format(
        line=w.line, start=w.start.isoformat(), end=w.end.isoformat(), hours=f"{w.hours:g}", lang=lang,
        alert_note=" Write a short alert: headline and at most 3 findings." if alert else "",
        facts_json=json.dumps(block, ensure_ascii=False),
    )
    return [{"role": "system", "content": prompt(f"system_{lang}.txt")}, {"role": "user", "content": user}]


def parse_summary(text: str) -> dict[str, Any]:
    """The model's JSON summary, checked against the schema's shape. Raises ValueError naming the problem."""
    text = text.strip()
    if text.startswith("```"):
        text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at char {exc.pos}): {text[:120]!r}") from None
    if not isinstance(data, dict):
        raise ValueError("JSON is not an object")
    for key, typ in (("headline", str), ("findings", list), ("checks", list), ("prose", str)):
        if not isinstance(data.get(key), typ):
            raise ValueError(f"field {key!r} missing or not a {typ.__name__}")
    findings = []
    for f in data["findings"]:
        if isinstance(f, str):
            f = {"text": f, "evidence": []}
        if not isinstance(f, dict) or not isinstance(f.get("text"), str):
            raise ValueError("a finding has no text")
        findings.append({"text": f["text"], "evidence": [e for e in f.get("evidence") or [] if isinstance(e, str)]})
    checks = [c if isinstance(c, str) else str(c.get("text", "")) for c in data["checks"] if isinstance(c, str | dict)]
    if not data["prose"].strip() and not data["headline"].strip():
        raise ValueError("empty summary")
    return {"headline": data["headline"], "findings": findings, "checks": checks, "prose": data["prose"]}


def plan_tools(backend: Backend, w: Window, ledger: Ledger) -> tuple[list[str], str]:
    """Tool names to run and how they were chosen: 'function_calling' or 'fixed'."""
    if not backend.supports_tools:
        return list(FIXED_PLAN), "fixed"
    messages = [{"role": "user", "content": prompt("plan.txt").format(
        line=w.line, start=w.start.isoformat(), end=w.end.isoformat())}]
    try:
        out = backend.complete(messages, max_tokens=256, temperature=0.0,
                               tools=[t.openai_schema() for t in TOOLS.values()])
    except BackendError as exc:
        ledger.record_error(exc, "plan")
        return list(FIXED_PLAN), "fixed"
    ledger.record(out, "plan")
    chosen = list(dict.fromkeys(c.name for c in out.tool_calls if c.name in TOOLS))
    if not chosen:
        return list(FIXED_PLAN), "fixed"
    return chosen, "function_calling"


def _has_data(results: list[ToolResult]) -> bool:
    for r in results:
        for f in r.facts:
            if f.kind in ("fault_total", "waste_idle") and f.value == 0:
                continue
            return True
    return False


def narrate_verified(
    backend: Backend, w: Window, facts: list[Fact], vocab: set[str], lang: str, ledger: Ledger,
    alert: bool = False, max_tokens: int = 384,
) -> tuple[dict[str, Any], str, str, str, dict[str, Any]]:
    """(summary, verdict, backend name, model, detail): model text if it verifies (once regenerated at
    most), otherwise the template narrator's."""
    detail: dict[str, Any] = {"attempts": []}
    if backend.is_model:
        messages = build_messages(w, facts, lang, alert)
        for attempt in (1, 2):
            purpose = "narrate" if attempt == 1 else "regenerate"
            try:
                out: Completion = backend.complete(messages, max_tokens=max_tokens, temperature=0.2,
                                                   json_schema=SUMMARY_SCHEMA)
            except BackendError as exc:
                ledger.record_error(exc, purpose)
                detail["attempts"].append({"attempt": attempt, "outcome": exc.kind, "error": str(exc)[:300]})
                break  # the chain already retried; a second call would wait as long again
            ledger.record(out, purpose)
            try:
                summary = parse_summary(out.text)
            except ValueError as exc:
                ledger.mark_last_failed(f"invalid_json: {exc}")
                detail["attempts"].append({"attempt": attempt, "outcome": "invalid_json", "error": str(exc)[:300],
                                           "backend": out.backend})
                messages = [*messages[:2], {"role": "assistant", "content": out.text[:2000]},
                            {"role": "user", "content": prompt("regenerate.txt").format(reason=str(exc)[:300])}]
                continue
            verdict: Verdict = verify_summary(summary, facts, window=w, vocabulary=vocab)
            detail["attempts"].append({"attempt": attempt, "outcome": "verified" if verdict.ok else "unsupported",
                                       "verification": verdict.to_json(), "backend": out.backend})
            if verdict.ok:
                summary = _complete_key_facts(summary, facts, w, lang, alert, detail)
                return summary, ("verified" if attempt == 1 else "regenerated"), out.backend, out.model, detail
            ledger.mark_last_failed("unsupported claims: " + verdict.feedback())
            detail.setdefault("rejected_text", []).append(summary.get("prose", "")[:1000])
            messages = [*messages[:2], {"role": "assistant", "content": out.text[:2000]},
                        {"role": "user", "content": prompt("regenerate.txt").format(reason=verdict.feedback())}]
    summary = narrate(facts, lang=lang, line=w.line, alert=alert)
    tb = TemplateBackend()
    final = verify_summary(summary, facts, window=w, vocabulary=vocab)
    detail["template_verification"] = final.to_json()
    return summary, ("fallback_template" if backend.is_model else "template"), tb.name, tb.model, detail


def _complete_key_facts(summary: dict[str, Any], facts: list[Fact], w: Window, lang: str, alert: bool,
                        detail: dict[str, Any]) -> dict[str, Any]:
    """Append the template's findings for key facts the model left out, so a terse but correct model
    summary still covers what a supervisor must see. The added text is the template's (verified)."""
    text = "\n".join(summary_texts(summary))
    missing = {f.id for f in facts if f.key and not fact_mentioned(text, f)}
    if not missing:
        return summary
    template = narrate(facts, lang=lang, line=w.line, alert=alert)
    added = [f for f in template["findings"] if missing & set(f["evidence"])]
    if not added:
        return summary
    detail["completed_from_template"] = sorted(missing)
    out = dict(summary)
    out["findings"] = [*summary["findings"], *added]
    out["prose"] = (summary["prose"].rstrip() + "\n" + "\n".join(f["text"] for f in added)).strip()
    return out


def _store(conn: psycopg.Connection, r: SummaryResult, ledger: Ledger) -> int:
    row = conn.execute(
        "INSERT INTO summaries (line, window_start, window_end, trigger, lang, backend, model, verdict,"
        " verdict_detail, headline, summary, prose, facts, tokens_in, tokens_out, latency_ms, cost_usd)"
        " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING summary_id",
        (r.line, r.window.start, r.window.end, r.trigger, r.lang, r.backend, r.model, r.verdict, Jsonb(r.detail),
         r.headline, Jsonb(r.summary), r.prose, Jsonb([f.to_json() for f in r.facts]), r.tokens_in,
         r.tokens_out, r.latency_ms, r.cost_usd),
    ).fetchone()
    assert row is not None
    ledger.flush(conn, int(row[0]))
    return int(row[0])


def summarize(
    url: str,
    line: str,
    *,
    since: str | None = "8h",
    start: datetime | None = None,
    end: datetime | None = None,
    lang: str = "en",
    backend: Backend | str | None = None,
    trigger: str = "on_demand",
    publish: Publish | None = None,
    tools: list[str] | None = None,
    alert: bool = False,
    cfg: ToolConfig | None = None,
    site: str = "site",
    shift: str | None = None,
    day: date | None = None,
    check_line: bool = True,
) -> SummaryResult:
    """Summarise ``line`` over [start, end) (or the last ``since``), store it, optionally publish it.

    ``backend``: a Backend, a spec string (see ``llm_ops.backends.make_backend``) or None for
    ``$LINEGUARD_LLM_BACKEND`` (default: the template narrator, offline). Returns the stored result;
    bad arguments (unknown lang, end before start, bad --since) raise ValueError before anything runs.
    """
    if lang not in ("en", "zh"):
        raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")
    if not line or not line.strip():
        raise ValueError("line must be a non-empty line id")
    configs = configured_lines()
    cfg = cfg or tool_config_for(line, configs)
    start, end = resolve_window(since=since, start=start, end=end, shift=shift, day=day, cfg=cfg)
    if end < start:
        raise ValueError(f"window end {end.isoformat()} is before its start {start.isoformat()}")
    w = Window(line, start, end)
    be: Backend = backend if backend is not None and not isinstance(backend, str) else make_backend(backend)
    ensure_schema(url)
    t0 = time.perf_counter()
    ledger = Ledger(line=line)
    LLM_COST.labels(backend=be.name)  # exported from the first summary on, at $0 until a priced call
    with psycopg.connect(url) as conn:
        if check_line:
            known = known_lines(conn, set(configs))
            if line not in known:
                raise UnknownLineError(f"unknown line {line!r}; known lines (in the store or configured): "
                                       f"{', '.join(known) or 'none'}")
        if start == end:
            results: list[ToolResult] = []
            plan: list[str] = []
            plan_source = "none"
        else:
            plan, plan_source = (tools, "explicit") if tools else plan_tools(be, w, ledger)
            plan = [*plan, *(t for t in ALWAYS if t not in plan)]  # a summary states when its data is incomplete
            results = run_tools(conn, w, plan, cfg)
        facts = [f for r in results for f in r.facts]
        if not _has_data(results):
            why = "empty window (start == end)" if start == end else f"no data for line {line!r} in window"
            zh = lang == "zh"
            headline = (f"{line}：{w.start:%Y-%m-%d %H:%M} 至 {w.end:%Y-%m-%d %H:%M} 无数据。" if zh
                        else f"{line}: no data between {w.start:%Y-%m-%d %H:%M} and {w.end:%Y-%m-%d %H:%M} UTC.")
            summary: dict[str, Any] = {"headline": headline, "findings": [], "checks": [], "prose": headline}
            verdict, bname, model = "no_data", "", ""
            detail: dict[str, Any] = {"reason": why, "notes": [n for r in results for n in r.notes]}
        else:
            vocab = vocabulary(conn, line)
            summary, verdict, bname, model, detail = narrate_verified(be, w, facts, vocab, lang, ledger, alert)
            detail["notes"] = [n for r in results for n in r.notes]
        detail["plan"] = {"source": plan_source, "tools": plan}
        result = SummaryResult(
            summary_id=None, line=line, window=w, trigger=trigger, lang=lang, verdict=verdict, backend=bname,
            model=model, headline=summary["headline"], summary=summary, prose=summary["prose"], facts=facts,
            detail=detail, tokens_in=ledger.tokens_in, tokens_out=ledger.tokens_out,
            latency_ms=(time.perf_counter() - t0) * 1000, cost_usd=ledger.cost_usd,
        )
        with conn.transaction():
            result.summary_id = _store(conn, result, ledger)
        if publish is not None:
            # The JSON convention's shape (docs/MQTT.md); ingest knows these kinds as outbound only.
            topic = f"lineguard/{site}/{line}/agent/{'alert' if alert else 'summary'}"
            payload = json.dumps({k: v for k, v in result.to_json().items() if k != "facts"}, ensure_ascii=False,
                                 default=str)
            try:
                publish(topic, payload.encode("utf-8"))
                result.published = True
                conn.execute("UPDATE summaries SET published = true WHERE summary_id = %s", (result.summary_id,))
            except Exception as exc:  # a broker outage must not lose the stored summary
                log.warning("publishing summary %s failed: %s", result.summary_id, exc)
                conn.execute("UPDATE summaries SET verdict_detail = verdict_detail || %s WHERE summary_id = %s",
                             (Jsonb({"publish_error": str(exc)[:300]}), result.summary_id))
        conn.commit()
    return result


def get_summary(url: str, summary_id: int) -> dict[str, Any] | None:
    """One stored summary as a dict (for the API/console), or None."""
    ensure_schema(url)
    with psycopg.connect(url) as conn:
        cur = conn.execute("SELECT * FROM summaries WHERE summary_id = %s", (summary_id,))
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([d.name for d in cur.description or []], row, strict=True))


def list_summaries(url: str, line: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Latest stored summaries (newest first), without the facts payload."""
    ensure_schema(url)
    with psycopg.connect(url) as conn:
        cur = conn.execute(
            "SELECT summary_id, created_at, line, window_start, window_end, trigger, lang, backend, model,"
            " verdict, headline, prose, summary, tokens_in, tokens_out, latency_ms, cost_usd, published"
            " FROM summaries WHERE (%(line)s::text IS NULL OR line = %(line)s)"
            " ORDER BY summary_id DESC LIMIT %(limit)s",
            {"line": line, "limit": limit},
        )
        cols = [d.name for d in cur.description or []]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
