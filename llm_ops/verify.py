"""Check every number and every machine/fault/defect name in generated text against tool facts.

A number is supported when some fact, written in the claim's unit and rounded to the claim's
precision, equals it: "1.5 h", "90 min" and "5400 s" all support a 5400 s downtime; "12.5%" a
12.46 % rate; "1,234 kWh" a 1234.4 kWh total; "1234 Wh" a 1.234 kWh one. Signs may be dropped
("down 12%" for -12 %). Times of day and dates must be the window's or a fact's. Chinese units
(小时, 分钟, 秒, 千瓦时/度, 倍) and small Chinese numerals with a counter (三次) are read too.

A name is supported when a fact carries it (or it is the line's id). Known names come from the
vocabulary (every device, code and defect class the store knows) plus anything shaped like a
machine id (letters then digits: M7, press-2), so a model cannot mention a machine that the facts
do not.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from llm_ops.facts import Fact, Window

# Where a name or an id-like token may start/end: not inside an ASCII word. Chinese characters
# count as \w for re's \b, so "M2的" would have no boundary; these look-arounds handle it.
_L = r"(?<![A-Za-z0-9_\-])"
_R = r"(?![A-Za-z0-9_])"

_ISO = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?")
_CLOCK = re.compile(r"(?<![\d.:])(\d{1,2}):(\d{2})(?::\d{2})?(?![\d:])")
_IDENT = re.compile(_L + r"([A-Za-z][A-Za-z_]*-?\d+[A-Za-z0-9_\-]*)" + _R)
# Clause boundaries: sentence ends (not decimal points), commas (not digit grouping), semicolons,
# and brackets, in English and Chinese.
_CLAUSE = re.compile(r"(?<!\d)\.(?!\d)|,(?!\d{3})|[;。；！？!?\n，、()（）]")
_LIST_MARK = re.compile(r"(?m)^\s*(?:\d{1,2}[.)、]|[-*•])\s+")
_NUM = re.compile(
    r"(?<![\w.])([-+−]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[-+−]?\d+(?:\.\d+)?)"
    r"\s*(%|percent|per cent|个百分点|kWh/part|kWh/件|kwh|kWh|MWh|Wh|千瓦时|度|kW|千瓦|hours?|hrs?|h|小时|"
    r"minutes?|mins?|min|分钟|seconds?|secs?|s|秒|x|×|倍|times)?(?![A-Za-z])"
)
_ZH_DIGITS = {"零": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_ZH_NUM = re.compile(r"([零一二两三四五六七八九十]{1,3})(?=[次台个起项类种件条]|小时|分钟)")

_UNIT_FAMILY: dict[str, tuple[str, float]] = {
    # claim unit -> (fact unit family, factor: claim value * factor = value in fact unit)
    "%": ("%", 1.0), "percent": ("%", 1.0), "per cent": ("%", 1.0), "个百分点": ("%", 1.0),
    "kwh": ("kWh", 1.0), "千瓦时": ("kWh", 1.0), "度": ("kWh", 1.0), "mwh": ("kWh", 1000.0),
    "wh": ("kWh", 0.001),
    "kwh/part": ("kWh/part", 1.0), "kwh/件": ("kWh/part", 1.0),
    "kw": ("kW", 1.0), "千瓦": ("kW", 1.0),
    "h": ("s", 3600.0), "hour": ("s", 3600.0), "hours": ("s", 3600.0), "hr": ("s", 3600.0),
    "hrs": ("s", 3600.0), "小时": ("s", 3600.0),
    "min": ("s", 60.0), "mins": ("s", 60.0), "minute": ("s", 60.0), "minutes": ("s", 60.0), "分钟": ("s", 60.0),
    "s": ("s", 1.0), "sec": ("s", 1.0), "secs": ("s", 1.0), "second": ("s", 1.0), "seconds": ("s", 1.0),
    "秒": ("s", 1.0),
    "x": ("x", 1.0), "×": ("x", 1.0), "倍": ("x", 1.0), "times": ("x", 1.0),
}

# Standard failure-mode codes (AI4I) are always "known names", even when the store has none yet.
STANDARD_CODES = ("TWF", "HDF", "PWF", "OSF", "RNF")


@dataclass
class Claim:
    text: str
    value: float
    decimals: int
    unit: str  # normalised claim unit key ('' when none)


@dataclass
class Verdict:
    ok: bool
    numbers_checked: int = 0
    names_checked: int = 0
    unsupported_numbers: list[str] = field(default_factory=list)
    unsupported_names: list[str] = field(default_factory=list)
    unsupported_times: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "numbers_checked": self.numbers_checked, "names_checked": self.names_checked,
            "unsupported_numbers": self.unsupported_numbers, "unsupported_names": self.unsupported_names,
            "unsupported_times": self.unsupported_times,
        }

    def feedback(self) -> str:
        """What to tell the model when asking it to regenerate."""
        bad = self.unsupported_numbers + self.unsupported_names + self.unsupported_times
        return "These claims are not supported by the facts; use only the given values and names: " + ", ".join(
            repr(b) for b in bad
        )


def _zh_numeral(s: str) -> int:
    if s == "十":
        return 10
    if "十" in s:
        tens, _, ones = s.partition("十")
        return (_ZH_DIGITS.get(tens, 1) if tens else 1) * 10 + (_ZH_DIGITS.get(ones, 0) if ones else 0)
    return _ZH_DIGITS.get(s, 0)


def _strip(text: str, names: Iterable[str]) -> str:
    """Remove what is not a numeric claim: names containing digits, ids, list markers."""
    for name in sorted(names, key=len, reverse=True):
        if any(ch.isdigit() for ch in name):
            text = re.sub(_L + re.escape(name) + _R, " ", text)
    text = _IDENT.sub(" ", text)
    return _LIST_MARK.sub(" ", text)


def extract_numbers(text: str, names: Iterable[str] = ()) -> list[Claim]:
    """Numeric claims in ``text`` (ISO dates/times and clock times removed first)."""
    text = _ISO.sub(" ", text)
    text = _CLOCK.sub(" ", text)
    text = _strip(text, names)
    claims: list[Claim] = []
    for m in _NUM.finditer(text):
        raw = m.group(1).replace(",", "").replace("−", "-")
        decimals = len(raw.split(".")[1]) if "." in raw else 0
        unit = (m.group(2) or "").lower()
        claims.append(Claim(text=m.group(0).strip(), value=float(raw), decimals=decimals, unit=unit))
    for m in _ZH_NUM.finditer(text):
        claims.append(Claim(text=m.group(0), value=float(_zh_numeral(m.group(1))), decimals=0, unit=""))
    return claims


def _candidates(facts: Iterable[Fact], window: Window | None) -> dict[str, list[float]]:
    """Fact values grouped by unit family, plus the window length."""
    by: dict[str, list[float]] = {}
    for f in facts:
        fam = "s" if f.unit == "h" else f.unit
        val = f.value * 3600.0 if f.unit == "h" else f.value
        by.setdefault(fam, []).append(val)
    if window is not None:
        by.setdefault("s", []).append(window.hours * 3600.0)
    return by


def _matches(claim_value: float, decimals: int, fact_value: float) -> bool:
    tol = 0.5 * 10 ** (-decimals) + 1e-9
    return abs(abs(claim_value) - abs(round(fact_value, decimals))) <= tol or abs(
        abs(claim_value) - abs(fact_value)
    ) <= tol


def number_supported(claim: Claim, by_unit: dict[str, list[float]]) -> bool:
    if claim.unit:
        fam, factor = _UNIT_FAMILY.get(claim.unit, ("", 1.0))
        # Convert each fact value into the claim's unit and compare at the claim's precision.
        return any(_matches(claim.value, claim.decimals, v / factor) for v in by_unit.get(fam, []))
    # A bare number may be any fact in its own unit, or a duration in min/h.
    for fam, values in by_unit.items():
        for v in values:
            if _matches(claim.value, claim.decimals, v):
                return True
            if fam == "s" and any(_matches(claim.value, claim.decimals, v / k) for k in (60.0, 3600.0)):
                return True
    return False


def _allowed_clock(facts: Iterable[Fact], window: Window | None) -> set[str]:
    times: list[datetime] = []
    if window is not None:
        times += [window.start, window.end]
    for f in facts:
        if f.at:
            with contextlib.suppress(ValueError):
                times.append(datetime.fromisoformat(f.at))
        for key in ("start", "end"):
            v = f.extra.get(key)
            if isinstance(v, str):
                with contextlib.suppress(ValueError):
                    times.append(datetime.fromisoformat(v))
    return {f"{t.hour:02d}:{t.minute:02d}" for t in times} | {f"{t.hour}:{t.minute:02d}" for t in times}


def find_names(text: str, vocabulary: Iterable[str]) -> list[str]:
    """Known names and id-like tokens mentioned in ``text``."""
    found: list[str] = []
    for name in sorted(set(vocabulary), key=len, reverse=True):
        if not name:
            continue
        if re.search(_L + re.escape(name) + _R, text, flags=re.IGNORECASE):
            found.append(name)
    # Id-shaped tokens (M7, press-2) are names even when not in the vocabulary.
    masked = _ISO.sub(" ", text)
    for m in _IDENT.finditer(masked):
        tok = m.group(1)
        if not any(tok.lower() == f.lower() for f in found):
            found.append(tok)
    return found


def verify_text(
    text: str,
    facts: list[Fact],
    *,
    window: Window | None = None,
    vocabulary: Iterable[str] = (),
) -> Verdict:
    """Check ``text`` against ``facts``; ``vocabulary`` lists every name that would count as a claim."""
    supported_names = {n.lower() for f in facts for n in f.names}
    if window is not None:
        supported_names.add(window.line.lower())
    vocab = set(vocabulary) | set(STANDARD_CODES) | {n for f in facts for n in f.names}
    if window is not None:
        vocab.add(window.line)
    verdict = Verdict(ok=True)
    names = find_names(text, vocab)
    verdict.names_checked = len(names)
    verdict.unsupported_names = [n for n in names if n.lower() not in supported_names]

    # Numbers are checked clause by clause: in a clause that names machines/codes/classes, only facts
    # about (a subset of) those names, or the window length, can support a number, so "M1 had 2 TWF
    # faults" fails when the 2 belongs to M2. Clauses naming nothing may use any fact.
    for clause in _CLAUSE.split(text):
        if not clause.strip():
            continue
        # The line id names the context of every fact, not a subject of its own.
        named = {n.lower() for n in find_names(clause, vocab)} - ({window.line.lower()} if window else set())
        pool = facts if not named else [f for f in facts if f.names and {n.lower() for n in f.names} <= named]
        by_unit = _candidates(pool, window)
        claims = extract_numbers(clause, vocab)
        verdict.numbers_checked += len(claims)
        verdict.unsupported_numbers += [c.text for c in claims if not number_supported(c, by_unit)]

    clocks = _allowed_clock(facts, window)
    for m in _CLOCK.finditer(_ISO.sub(" ", text)):
        if m.group(0)[:5].rstrip(":") not in clocks and f"{int(m.group(1)):02d}:{m.group(2)}" not in clocks:
            verdict.unsupported_times.append(m.group(0))
    verdict.ok = not (verdict.unsupported_numbers or verdict.unsupported_names or verdict.unsupported_times)
    return verdict


def summary_texts(summary: dict[str, Any]) -> list[str]:
    """Every human-readable string of a structured summary: all of it is verified, not just the prose."""
    out: list[str] = []
    for key in ("headline", "prose"):
        if isinstance(summary.get(key), str):
            out.append(summary[key])
    for f in summary.get("findings") or []:
        if isinstance(f, dict) and isinstance(f.get("text"), str):
            out.append(f["text"])
        elif isinstance(f, str):
            out.append(f)
    for c in summary.get("checks") or []:
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, dict) and isinstance(c.get("text"), str):
            out.append(c["text"])
    return out


def verify_summary(
    summary: dict[str, Any], facts: list[Fact], *, window: Window | None = None, vocabulary: Iterable[str] = ()
) -> Verdict:
    """Verify all strings of a structured summary at once; evidence ids must name real facts."""
    verdict = verify_text("\n".join(summary_texts(summary)), facts, window=window, vocabulary=vocabulary)
    ids = {f.id for f in facts}
    for finding in summary.get("findings") or []:
        if isinstance(finding, dict):
            for ev in finding.get("evidence") or []:
                if isinstance(ev, str) and ev.strip() and ev not in ids:
                    verdict.unsupported_names.append(f"evidence:{ev}")
    verdict.ok = not (verdict.unsupported_numbers or verdict.unsupported_names or verdict.unsupported_times)
    return verdict


def fact_mentioned(text: str, fact: Fact) -> bool:
    """Whether ``text`` states ``fact``: its names, and its value (or its time, for anomalies)."""
    if not all(re.search(_L + re.escape(n) + _R, text, flags=re.IGNORECASE) for n in fact.names):
        return False
    if fact.kind == "anomaly" and fact.at:
        return fact.at[11:16] in text
    if fact.kind == "cause":
        return True  # a cause is its names; the lift is detail
    if fact.kind == "data_gap" and fact.at and fact.at[11:16] in text:
        return True  # a gap is its source and when it began; its length is detail
    fam = "s" if fact.unit == "h" else fact.unit
    value = fact.value * 3600.0 if fact.unit == "h" else fact.value
    return any(number_supported(c, {fam: [value]}) for c in extract_numbers(text, fact.names))
