"""End-to-end summaries: stored verdicts for good runs, wrong numbers, bad JSON, timeouts, no data."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from line_agent.agent import get_summary, summarize
from line_agent.agent.core import UnknownLineError
from line_agent.agent.scenarios import Scenario
from llm_ops.backends import Completion, FallbackChain, Message, OpenAICompatBackend
from llm_ops.narrator import narrate_from_prompt


@dataclass
class ScriptedBackend:
    """Fault injection: answers with the template's JSON, corrupted per call as scripted."""

    script: list[str]  # per call: "ok" | "wrong_number" | "wrong_name" | "invalid_json"
    name: str = "scripted"
    model: str = "scripted-model"
    supports_tools: bool = False
    is_model: bool = True
    calls: int = 0
    prompts: list[str] = field(default_factory=list)

    def complete(self, messages: Sequence[Message], *, max_tokens: int = 512, temperature: float = 0.2,
                 json_schema: dict[str, Any] | None = None, tools: list[dict[str, Any]] | None = None) -> Completion:
        mode = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        self.prompts.append(str(messages[-1]["content"]))
        text = narrate_from_prompt(str(messages[1]["content"]))
        if mode == "wrong_number":
            text = re.sub(r"\d+\.\d kWh", "987.6 kWh", text, count=2)
        elif mode == "wrong_name":
            text = text.replace("M2", "M9")
        elif mode == "terse":
            text = json.dumps({"headline": "3 faults on the line.", "findings": [], "checks": [],
                               "prose": "There were 3 faults."})
        elif mode == "invalid_json":
            text = "Sure! Here is the summary: {headline: M2"
        return Completion(text=text, backend=self.name, model=self.model, tokens_in=1000, tokens_out=200,
                          latency_ms=5.0)


def stored(url: str, summary_id: int | None) -> dict[str, Any]:
    assert summary_id is not None
    row = get_summary(url, summary_id)
    assert row is not None
    return row


def test_template_summary_en_zh_stored(scenario_db: tuple[str, dict[str, Scenario]]) -> None:
    url, scen = scenario_db
    s = scen["fault_burst"]
    en = summarize(url, s.line, start=s.start, end=s.end, lang="en")
    assert en.verdict == "template" and en.detail["template_verification"]["ok"]
    assert "M2: 2 TWF faults, 35.0 min downtime." in en.prose
    assert en.summary["findings"] and all(f["evidence"] for f in en.summary["findings"])
    assert any("M2" in c for c in en.summary["checks"])
    zh = summarize(url, s.line, start=s.start, end=s.end, lang="zh")
    assert "M2 发生 2 次 TWF 故障，停机 35.0 分钟。" in zh.prose
    row = stored(url, zh.summary_id)
    assert row["lang"] == "zh" and row["verdict"] == "template" and row["prose"] == zh.prose
    assert row["summary"]["headline"] == zh.headline and len(row["facts"]) == len(zh.facts)


def test_wrong_number_caught_then_regenerated(scenario_db: tuple[str, dict[str, Scenario]]) -> None:
    url, scen = scenario_db
    s = scen["fault_burst"]
    be = ScriptedBackend(["wrong_number", "ok"])
    r = summarize(url, s.line, start=s.start, end=s.end, backend=be)
    assert r.verdict == "regenerated" and be.calls == 2
    first = r.detail["attempts"][0]
    assert first["outcome"] == "unsupported" and "987.6 kWh" in first["verification"]["unsupported_numbers"]
    assert "987.6 kWh" in be.prompts[1]  # the regeneration prompt names the rejected claim
    assert "987.6" not in r.prose and r.backend == "scripted"
    with psycopg.connect(url) as conn:
        calls = conn.execute("SELECT purpose, ok, error, tokens_in FROM llm_calls WHERE summary_id = %s"
                             " ORDER BY call_id", (r.summary_id,)).fetchall()
    assert [c[0] for c in calls] == ["narrate", "regenerate"]
    assert calls[0][2].startswith("unsupported claims") and calls[1][2] == ""
    assert r.tokens_in == 2000


def test_wrong_twice_falls_back_to_template(scenario_db: tuple[str, dict[str, Scenario]]) -> None:
    url, scen = scenario_db
    s = scen["fault_burst"]
    be = ScriptedBackend(["wrong_name", "wrong_number"])
    r = summarize(url, s.line, start=s.start, end=s.end, backend=be)
    assert r.verdict == "fallback_template" and be.calls == 2 and r.backend == "template"
    assert r.detail["attempts"][0]["verification"]["unsupported_names"][0] == "M9"
    assert "M9" not in r.prose and "987.6" not in r.prose
    row = stored(url, r.summary_id)
    assert row["verdict"] == "fallback_template" and len(row["verdict_detail"]["attempts"]) == 2


def test_invalid_json_gives_clear_stored_outcome(scenario_db: tuple[str, dict[str, Scenario]]) -> None:
    url, scen = scenario_db
    s = scen["steady"]
    r = summarize(url, s.line, start=s.start, end=s.end, backend=ScriptedBackend(["invalid_json"]))
    assert r.verdict == "fallback_template"
    assert [a["outcome"] for a in r.detail["attempts"]] == ["invalid_json", "invalid_json"]
    assert "invalid JSON" in r.detail["attempts"][0]["error"]
    assert stored(url, r.summary_id)["prose"] == r.prose


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A real TCP server on loopback that accepts connections and never answers (a hung backend)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
                conns.append(c)
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    for c in conns:
        c.close()
    srv.close()


def test_backend_timeout_gives_clear_stored_outcome(scenario_db: tuple[str, dict[str, Scenario]],
                                                    silent_server: int) -> None:
    url, scen = scenario_db
    s = scen["steady"]
    be = OpenAICompatBackend(f"http://127.0.0.1:{silent_server}/v1", timeout_s=0.3, retries=1, backoff_s=0.05)
    r = summarize(url, s.line, start=s.start, end=s.end, backend=be)
    assert r.verdict == "fallback_template"
    assert r.detail["attempts"][0]["outcome"] == "timeout"
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT ok, error, backend FROM llm_calls WHERE summary_id = %s",
                           (r.summary_id,)).fetchone()
    assert row is not None and row[0] is False and "timeout" in row[1] and row[2] == "openai"
    # A chain moves on to the next backend instead: the model answers, the timeout is still accounted.
    chain = FallbackChain([be, ScriptedBackend(["ok"])])
    r2 = summarize(url, s.line, start=s.start, end=s.end, backend=chain)
    assert r2.verdict == "verified" and r2.backend == "scripted"
    with psycopg.connect(url) as conn:
        oks = [x[0] for x in conn.execute("SELECT ok FROM llm_calls WHERE summary_id = %s ORDER BY call_id",
                                          (r2.summary_id,))]
    assert oks == [False, True]


def test_line_without_data_and_empty_window(scenario_db: tuple[str, dict[str, Scenario]]) -> None:
    url, scen = scenario_db
    s = scen["steady"]
    with pytest.raises(UnknownLineError, match=r"unknown line 'NOPE'; known lines .*L1, L2"):
        summarize(url, "NOPE", start=s.start, end=s.end, backend=ScriptedBackend(["ok"]))
    long_ago = (s.start - timedelta(days=400), s.end - timedelta(days=400))
    r = summarize(url, s.line, start=long_ago[0], end=long_ago[1], backend=ScriptedBackend(["ok"]))
    assert r.verdict == "no_data" and "no data" in r.headline and r.detail["reason"].startswith("no data")
    assert stored(url, r.summary_id)["verdict"] == "no_data"
    e = summarize(url, s.line, start=s.end, end=s.end)
    assert e.verdict == "no_data" and e.detail["reason"].startswith("empty window")
    z = summarize(url, s.line, start=long_ago[0], end=long_ago[1], lang="zh")
    assert "无数据" in z.prose
    with pytest.raises(ValueError, match="before its start"):
        summarize(url, s.line, start=s.end, end=s.start)
    with pytest.raises(ValueError, match="lang"):
        summarize(url, s.line, start=s.start, end=s.end, lang="fr")
    with pytest.raises(ValueError, match="--since"):
        summarize(url, s.line, since="yesterday-ish")


def test_publish_on_real_broker(scenario_db: tuple[str, dict[str, Scenario]], mqtt_url: str) -> None:
    import paho.mqtt.client as mqtt

    url, scen = scenario_db
    s = scen["energy_waste"]
    from line_agent.mqtt import parse_mqtt_url

    host, port, user, password, _tls = parse_mqtt_url(mqtt_url)
    got: list[bytes] = []
    ready = threading.Event()
    received = threading.Event()
    sub = mqtt.Client()
    sub.on_connect = lambda c, *_: (c.subscribe(f"lineguard/+/{s.line}/agent/#", qos=1), None)[1]
    sub.on_subscribe = lambda *_: ready.set()

    def on_message(_c: Any, _u: Any, m: Any) -> None:
        got.append(bytes(m.payload))
        received.set()

    sub.on_message = on_message
    if user:
        sub.username_pw_set(user, password)
    sub.connect(host, int(port))
    sub.loop_start()
    pub = mqtt.Client()
    if user:
        pub.username_pw_set(user, password)
    pub.connect(host, int(port))
    pub.loop_start()
    try:
        assert ready.wait(10)
        r = summarize(url, s.line, start=s.start, end=s.end,
                      publish=lambda topic, payload: pub.publish(topic, payload, qos=1).wait_for_publish(5))
        assert received.wait(10)
    finally:
        sub.loop_stop()
        pub.loop_stop()
        sub.disconnect()
        pub.disconnect()
    msg = json.loads(got[0])
    assert msg["summary_id"] == r.summary_id and msg["prose"] == r.prose
    assert stored(url, r.summary_id)["published"] is True


def test_publish_failure_keeps_summary(scenario_db: tuple[str, dict[str, Scenario]]) -> None:
    url, scen = scenario_db
    s = scen["steady"]

    def broken(topic: str, payload: bytes) -> None:
        raise ConnectionError("broker down")

    r = summarize(url, s.line, start=s.start, end=s.start + timedelta(hours=1), publish=broken)
    row = stored(url, r.summary_id)
    assert row["published"] is False and "broker down" in row["verdict_detail"]["publish_error"]


def test_terse_correct_model_text_is_completed_with_key_facts(scenario_db: tuple[str, dict[str, Scenario]]) -> None:
    url, scen = scenario_db
    s = scen["fault_burst"]
    r = summarize(url, s.line, start=s.start, end=s.end, backend=ScriptedBackend(["terse"]))
    assert r.verdict == "verified" and r.prose.startswith("There were 3 faults.")
    assert "faults.count.M2.TWF" in r.detail["completed_from_template"]
    assert "M2: 2 TWF faults, 35.0 min downtime." in r.prose


def test_price_table_defaults_and_override(tmp_path: Any) -> None:
    from llm_ops.prices import PriceTable

    t = PriceTable.load()
    assert abs(t.cost("gpt-4o-mini", 1_000_000, 1_000_000) - 0.75) < 1e-9
    assert t.cost("gemma-3-270m-q4_k_m.gguf", 5000, 500) == 0.0 and t.lookup("unknown-model") is None
    f = tmp_path / "prices.json"
    f.write_text(json.dumps({"my-hosted": {"in": 1.0, "out": 2.0}}))
    assert abs(PriceTable.load(f).cost("my-hosted", 1000, 1000) - 0.003) < 1e-12
