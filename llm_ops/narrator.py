"""The built-in template narrator: a structured summary and prose in English or Chinese from facts alone.

Every number it writes is a fact formatted by ``fmt_value``, so its output always verifies. It is the
default backend (nothing to configure) and the last fallback after a model fails verification.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llm_ops.facts import Fact, fmt_value

_FACTS_BLOCK = re.compile(r"<facts>(.*?)</facts>", re.DOTALL)


def _by_kind(facts: list[Fact], kind: str) -> list[Fact]:
    return [f for f in facts if f.kind == kind]


def _one(facts: list[Fact], kind: str) -> Fact | None:
    found = _by_kind(facts, kind)
    return found[0] if found else None


def _v(f: Fact, lang: str) -> str:
    return fmt_value(f.value, f.unit, lang)


def narrate(facts: list[Fact], lang: str = "en", line: str = "", hours: float | None = None,
            alert: bool = False) -> dict[str, Any]:
    """Summary dict: headline, findings (text + evidence fact ids), checks, prose."""
    zh = lang == "zh"
    findings: list[dict[str, Any]] = []
    checks: list[str] = []

    def add(text: str, *evidence: Fact) -> None:
        findings.append({"text": text, "evidence": [e.id for e in evidence]})

    # Faults and downtime: total, then each machine/code pair (they are ranked by downtime).
    total = _one(facts, "fault_total")
    down = _one(facts, "downtime_total")
    if total is not None and total.value > 0:
        dt = f"，停机 {_v(down, lang)}" if zh and down else (f", {_v(down, lang)} downtime" if down else "")
        add((f"共 {_v(total, lang)} 次故障{dt}。" if zh else f"{_v(total, lang)} faults{dt}."),
            *(x for x in (total, down) if x))
    pairs = _by_kind(facts, "fault_count")
    downs = {f.names: f for f in _by_kind(facts, "downtime")}
    for f in pairs[:5]:
        dev, code = f.names[0], f.names[1]
        d = downs.get(f.names)
        if zh:
            extra = f"，停机 {_v(d, lang)}" if d else ""
            add(f"{dev} 发生 {_v(f, lang)} 次 {code} 故障{extra}。", *(x for x in (f, d) if x))
        else:
            extra = f", {_v(d, lang)} downtime" if d else ""
            noun = "fault" if round(f.value) == 1 else "faults"
            add(f"{dev}: {_v(f, lang)} {code} {noun}{extra}.", *(x for x in (f, d) if x))
    if pairs:
        top = pairs[0]
        checks.append(
            f"检查 {top.names[0]} 的 {top.names[1]} 故障根因。" if zh
            else f"Inspect {top.names[0]} for the root cause of {top.names[1]}."
        )

    # The line's own stops (audit log): count, stopped time, planned apart, by cause.
    stops = _one(facts, "stop_total")
    if stops is not None and stops.value > 0:
        stopped, unpl, plan = (_one(facts, k) for k in ("stopped_total", "stopped_unplanned", "stopped_planned"))
        if zh:
            s = f"产线停机 {_v(stops, lang)} 次"
            s += f"，共 {_v(stopped, lang)}" if stopped else ""
            s += f"（非计划 {_v(unpl, lang)}" if unpl else ""
            s += f"，计划 {_v(plan, lang)}）" if plan else ("）" if unpl else "")
        else:
            # "stops", not "times": "3 times" reads as a ratio (3x) to the number check.
            s = f"Line stops: {_v(stops, lang)}"
            s += f", {_v(stopped, lang)} in all" if stopped else ""
            s += f" ({_v(unpl, lang)} unplanned" if unpl else ""
            s += f", {_v(plan, lang)} planned)" if plan else (")" if unpl else "")
        add(s + ("。" if zh else "."), *(x for x in (stops, stopped, unpl, plan) if x))
        names = {"rule": ("规则", "the burst rule"), "person": ("人员", "a person"), "estop": ("急停", "e-stop"),
                 "safe_state": ("安全状态", "PLC safe state"), "guard_door": ("防护门", "guard door"),
                 "panel": ("面板", "the PLC panel")}
        times = {f.id.removesuffix(".time"): f for f in _by_kind(facts, "stop_cause_time")}
        for sc in _by_kind(facts, "stop_cause"):
            cause = str(sc.extra.get("cause", ""))
            label = names.get(cause, (cause, cause))
            t = times.get(sc.id)
            if zh:
                add(f"{label[0]}停机 {_v(sc, lang)} 次" + (f"，{_v(t, lang)}" if t else "") + "。",
                    *(x for x in (sc, t) if x))
            else:
                add(f"Stops by {label[1]}: {_v(sc, lang)}" + (f", {_v(t, lang)}" if t else "") + ".",
                    *(x for x in (sc, t) if x))
    slow = _one(facts, "slow_total")
    if slow is not None and slow.value > 0:
        add((f"降速运行 {_v(slow, lang)}。" if zh else f"Line ran slowed for {_v(slow, lang)}."), slow)

    # Energy.
    energy = _one(facts, "energy_total")
    per_part = _one(facts, "energy_per_part")
    base = _one(facts, "energy_per_part_baseline")
    delta = _one(facts, "energy_per_part_delta")
    if energy is not None:
        if zh:
            s = f"能耗 {_v(energy, lang)}"
            if per_part:
                s += f"，每件合格品 {_v(per_part, lang)}"
            if base and delta and abs(delta.value) < 0.05:
                s += f"（与基线 {_v(base, lang)} 持平）"
            elif base and delta:
                s += f"（基线 {_v(base, lang)}，{'高' if delta.value > 0 else '低'} {_v(delta, lang).lstrip('-')}）"
            add(s + "。", *(x for x in (energy, per_part, base, delta) if x))
        else:
            s = f"Energy {_v(energy, lang)}"
            if per_part:
                s += f"; {_v(per_part, lang)} for good parts"
            if base and delta and abs(delta.value) < 0.05:
                s += f" (at the {_v(base, lang)} baseline)"
            elif base and delta:
                word = "above" if delta.value > 0 else "below"
                s += f" ({_v(delta, lang).lstrip('-')} {word} the {_v(base, lang)} baseline)"
            add(s + ".", *(x for x in (energy, per_part, base, delta) if x))
    peak = _one(facts, "energy_peak")
    if peak is not None and peak.at:
        when = f"{peak.at[:10]} {peak.at[11:16]}"
        add((f"一刻钟最大需量 {_v(peak, lang)}，{when} 起。" if zh
             else f"Peak quarter-hour demand {_v(peak, lang)} from {when}."), peak)
    idle = _one(facts, "waste_idle")
    if idle is not None and idle.value > 0:
        dev = f" ({', '.join(idle.names)})" if idle.names else ""
        add((f"停机或空闲时耗电 {_v(idle, lang)}{dev}。" if zh
             else f"{_v(idle, lang)} drawn while stopped or idle{dev}."), idle)
        checks.append("检查停机时未关闭的设备。" if zh else "Check which loads stay on while the line is stopped.")
    excess = _one(facts, "waste_vs_best")
    best = _one(facts, "energy_per_part_best")
    if excess is not None and best is not None and excess.value > 0:
        add((f"对比最佳班次（{_v(best, lang)}），多耗 {_v(excess, lang)}。" if zh
             else f"{_v(excess, lang)} more than at the best recent shift's {_v(best, lang)}."), excess, best)

    # Quality.
    inspected = _one(facts, "inspected")
    reject = _one(facts, "reject_rate")
    if inspected is not None and inspected.value > 0:
        good = _one(facts, "good_parts")
        if zh:
            s = f"检测 {_v(inspected, lang)} 件"
            if good:
                s += f"，合格 {_v(good, lang)} 件"
            if reject:
                s += f"，不良率 {_v(reject, lang)}"
        else:
            s = f"{_v(inspected, lang)} parts inspected"
            if good:
                s += f", {_v(good, lang)} good"
            if reject:
                s += f", reject rate {_v(reject, lang)}"
        add(s + ("。" if zh else "."), *(x for x in (inspected, good, reject) if x))
    counts = {f.names: f for f in _by_kind(facts, "defect_count")}
    for rate in _by_kind(facts, "defect_rate")[:4]:
        c = counts.get(rate.names)
        cls = rate.names[0]
        if zh:
            add(f"缺陷 {cls}：{_v(c, lang) + ' 个，' if c else ''}占 {_v(rate, lang)}。", *(x for x in (rate, c) if x))
        else:
            add(f"Defect {cls}: {_v(c, lang) + ', ' if c else ''}{_v(rate, lang)} of parts.",
                *(x for x in (rate, c) if x))

    # Anomalies and candidate causes.
    for a in _by_kind(facts, "anomaly")[:3]:
        what = a.extra.get("metric", "")
        at = f"{a.at[:10]} {a.at[11:16]}" if a.at else ""  # with the date: a window may span days or years
        if zh:
            add(f"异常：{at} 起 {'能耗' if what == 'energy' else '不良率'}偏离基线（z={a.value:.1f}）。", a)
        else:
            add(f"Anomaly: {'energy' if what == 'energy' else 'defect rate'} at {at} far from baseline "
                f"(z={a.value:.1f}).", a)
    for c in _by_kind(facts, "cause")[:3]:
        if len(c.names) >= 3:
            dev, code, cls = c.names[0], c.names[1], c.names[2]
            if zh:
                add(f"可能原因：{dev} 的 {code} 故障后 {cls} 缺陷率升至 {c.value:.1f}倍。", c)
                checks.append(f"{dev} 故障恢复后先抽检 {cls}。")
            else:
                add(f"Candidate cause: {cls} defects ran {c.value:.1f}x higher after {code} faults on {dev}.", c)
                checks.append(f"After a {code} fault on {dev}, check the next parts for {cls}.")
        elif c.kind == "cause" and c.extra.get("type") == "rework_energy":
            add((f"返工期间功率为平时的 {c.value:.1f}倍。" if zh
                 else f"Power during rework ran {c.value:.1f}x the usual level."), c)

    # Data completeness (line_agent/agent/tools.py source_gaps, from the Sparkplug host state): first, since
    # every figure above it lacks that source's data for that time.
    gap_findings: list[dict[str, Any]] = []
    for g in _by_kind(facts, "data_gap"):
        src = str(g.extra.get("source", "/".join(g.names)))
        kind = str(g.extra.get("kind", "edge node"))
        ga, gb = str(g.extra.get("start", g.at or "")), str(g.extra.get("end", ""))
        when_a = f"{ga[:10]} {ga[11:16]}"
        when_b = gb[11:16] if gb[:10] == ga[:10] else f"{gb[:10]} {gb[11:16]}"
        dead = g.extra.get("cause") == "dead"
        still = bool(g.extra.get("still"))
        if zh:
            who = "设备" if kind == "device" else "边缘节点"
            why = ("离线（死亡）" if dead else "无消息") + ("，至今仍未恢复" if still else "")
            text = f"{who} {src} 的数据自 {when_a} 至 {when_b} UTC 缺失（{_v(g, lang)}；{why}）。"
            checks.append(f"检查 {src} 的连接与电源。")
        else:
            why = (f"{kind} dead" if dead else f"{kind} silent") + (", still now" if still else "")
            text = f"Data from {kind} {src} is missing from {when_a} to {when_b} UTC ({_v(g, lang)}; {why})."
            checks.append(f"Check the link and power of {src}; the figures here lack its data.")
        gap_findings.append({"text": text, "evidence": [g.id]})
    findings[:0] = gap_findings

    if not findings:
        headline = "窗口内没有数据。" if zh else "No data in this window."
    else:
        headline = (f"{line} 告警：" if alert and zh else f"{line} alert: " if alert else
                    f"{line} 班次摘要：" if zh else f"{line} summary: ") + findings[0]["text"]
    prose = ("\n".join(f["text"] for f in findings)) if findings else headline
    return {"headline": headline, "findings": findings, "checks": checks, "prose": prose}


def narrate_from_prompt(prompt: str) -> str:
    """The TemplateBackend entry: read the ``<facts>`` JSON block of a prompt, answer JSON."""
    m = _FACTS_BLOCK.search(prompt)
    if not m:
        return json.dumps({"headline": "", "findings": [], "checks": [], "prose": ""})
    block = json.loads(m.group(1))
    facts = [Fact.from_json(f) for f in block.get("facts", [])]
    out = narrate(facts, lang=block.get("lang", "en"), line=block.get("line", ""),
                  alert=bool(block.get("alert", False)))
    return json.dumps(out, ensure_ascii=False)
