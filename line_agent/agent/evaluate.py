"""``lineguard agent eval``: run every scenario through a backend and score the stored summaries.

Scores per summary:
* fact coverage: share of the scenario's key facts whose names, value (at the precision written)
  and time appear in the summary text;
* number accuracy: share of numbers in the text supported by tool facts that agree with the ground
  truth (a tool fact contradicting the ground truth supports nothing);
* names accuracy: share of machine/fault/defect names in the text that exist in the scenario;
* latency, tokens in/out, cost (from the accounting of that summary).
"""

from __future__ import annotations

import re
import statistics
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from line_agent.agent.core import SummaryResult, summarize
from line_agent.agent.scenarios import KeyFact, Scenario, all_scenarios, load_front_door
from line_agent.store.migrate import migrate
from llm_ops.backends import Backend, make_backend
from llm_ops.facts import Fact
from llm_ops.verify import _L, _R, Claim, extract_numbers, find_names, number_supported, summary_texts


@dataclass
class ScenarioScore:
    scenario: str
    backend: str
    lang: str
    verdict: str
    coverage: float
    covered: int
    key_facts: int
    numbers: int
    numbers_ok: int
    names: int
    names_ok: int
    latency_ms: float
    tokens_in: int
    tokens_out: int
    cost_usd: float
    missing: list[str] = field(default_factory=list)
    wrong_numbers: list[str] = field(default_factory=list)
    wrong_names: list[str] = field(default_factory=list)


def _family(unit: str) -> str:
    return "s" if unit == "h" else unit


def _has_name(text: str, name: str) -> bool:
    return re.search(_L + re.escape(name) + _R, text, flags=re.IGNORECASE) is not None


def fact_covered(text: str, kf: KeyFact, claims: list[Claim]) -> bool:
    if not all(_has_name(text, n) for n in kf.names):
        return False
    if kf.time is not None and kf.time not in text:
        return False
    if kf.value is not None:
        by = {_family(kf.unit): [kf.value]}
        return any(number_supported(c, by) for c in claims)
    return True


def _agrees(f: Fact, truth: list[KeyFact]) -> bool:
    for kf in truth:
        if kf.kind == f.kind and tuple(kf.names) == tuple(f.names) and kf.value is not None:
            return abs(kf.value - f.value) <= max(0.011, abs(kf.value) * 1e-6)
    return True


def score(s: Scenario, r: SummaryResult) -> ScenarioScore:
    text = "\n".join(summary_texts(r.summary))
    vocab = s.entities | {n for f in r.facts for n in f.names}
    claims = extract_numbers(text, vocab)
    covered = [kf for kf in s.key_facts if fact_covered(text, kf, claims)]
    trusted = [f for f in r.facts if _agrees(f, s.key_facts)]
    by: dict[str, list[float]] = {}
    for f in trusted:
        by.setdefault(_family(f.unit), []).append(f.value * 3600 if f.unit == "h" else f.value)
    by.setdefault("s", []).append(r.window.hours * 3600)
    wrong_numbers = [c.text for c in claims if not number_supported(c, by)]
    names = find_names(text, vocab)
    wrong_names = [n for n in names if n.lower() not in {e.lower() for e in s.entities}]
    n_kf = len(s.key_facts)
    return ScenarioScore(
        scenario=s.name, backend=r.backend or "-", lang=r.lang, verdict=r.verdict,
        coverage=len(covered) / n_kf if n_kf else 1.0, covered=len(covered), key_facts=n_kf,
        numbers=len(claims), numbers_ok=len(claims) - len(wrong_numbers), names=len(names),
        names_ok=len(names) - len(wrong_names), latency_ms=r.latency_ms, tokens_in=r.tokens_in,
        tokens_out=r.tokens_out, cost_usd=r.cost_usd,
        missing=[f"{kf.kind}{list(kf.names)}={kf.value}{kf.unit}" for kf in s.key_facts if kf not in covered],
        wrong_numbers=wrong_numbers, wrong_names=wrong_names,
    )


def _fresh_db(server_url: str) -> str:
    name = f"agent_eval_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def _drop_db(server_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def prepare(server_url: str, shared: Path | None = None, scenarios: list[Scenario] | None = None,
            mqtt_url: str | None = None) -> tuple[str, list[Scenario]]:
    """A fresh database on ``server_url`` holding every scenario (each on its own line id), put there through
    the front door: published per the MQTT contract, stored by an ingest worker (``mqtt_url``; None: a broker
    of our own for the run)."""
    import tempfile

    from line_agent.services import EmbeddedBroker

    url = _fresh_db(server_url)
    migrate(url)
    scenarios = scenarios if scenarios is not None else all_scenarios(shared=shared)
    with tempfile.TemporaryDirectory(prefix="lineguard-eval-") as tmp:
        broker = None
        if mqtt_url is None:
            broker = EmbeddedBroker(Path(tmp) / "broker")
            mqtt_url = broker.start()
        try:
            load_front_door(mqtt_url, url, Path(tmp), scenarios)
        finally:
            if broker is not None:
                broker.stop()
    return url, scenarios


def run_eval(
    server_url: str,
    backends: list[str | Backend],
    *,
    langs: tuple[str, ...] = ("en",),
    shared: Path | None = None,
    scenarios: list[Scenario] | None = None,
    keep_db: bool = False,
    mqtt_url: str | None = None,
) -> list[ScenarioScore]:
    url, scen = prepare(server_url, shared, scenarios, mqtt_url)
    scores: list[ScenarioScore] = []
    try:
        for spec in backends:
            backend = make_backend(spec) if isinstance(spec, str) else spec
            for lang in langs:
                for s in scen:
                    r = summarize(url, s.line, start=s.start, end=s.end, lang=lang, backend=backend,
                                  trigger="eval")
                    sc = score(s, r)
                    sc.backend = f"{backend.name}:{backend.model}"
                    scores.append(sc)
    finally:
        if not keep_db:
            _drop_db(server_url, url)
    return scores


def aggregate(scores: list[ScenarioScore]) -> list[dict[str, Any]]:
    """One row per (backend, lang): the figures docs/benchmarks/agent.md reports."""
    groups: dict[tuple[str, str], list[ScenarioScore]] = {}
    for s in scores:
        groups.setdefault((s.backend, s.lang), []).append(s)
    rows = []
    for (backend, lang), g in groups.items():
        nums = sum(s.numbers for s in g)
        names = sum(s.names for s in g)
        verdicts: dict[str, int] = {}
        for s in g:
            verdicts[s.verdict] = verdicts.get(s.verdict, 0) + 1
        rows.append({
            "backend": backend, "lang": lang, "summaries": len(g),
            "fact_coverage": sum(s.covered for s in g) / max(1, sum(s.key_facts for s in g)),
            "number_accuracy": (sum(s.numbers_ok for s in g) / nums) if nums else 1.0,
            "names_accuracy": (sum(s.names_ok for s in g) / names) if names else 1.0,
            "latency_ms_mean": statistics.fmean(s.latency_ms for s in g),
            "latency_ms_max": max(s.latency_ms for s in g),
            "tokens_in_mean": statistics.fmean(s.tokens_in for s in g),
            "tokens_out_mean": statistics.fmean(s.tokens_out for s in g),
            "cost_usd_per_summary": statistics.fmean(s.cost_usd for s in g),
            "verdicts": verdicts,
        })
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| backend | lang | summaries | fact coverage | number accuracy | names accuracy | latency mean / max (s)"
            " | tokens in / out (mean) | cost / summary (USD) | verdicts |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['lang']} | {r['summaries']} | {r['fact_coverage']:.1%} | {r['number_accuracy']:.1%}"
            f" | {r['names_accuracy']:.1%} | {r['latency_ms_mean'] / 1000:.2f} / {r['latency_ms_max'] / 1000:.2f}"
            f" | {r['tokens_in_mean']:.0f} / {r['tokens_out_mean']:.0f} | {r['cost_usd_per_summary']:.6f}"
            f" | {', '.join(f'{k}: {v}' for k, v in sorted(r['verdicts'].items()))} |"
        )
    return "\n".join(lines)
