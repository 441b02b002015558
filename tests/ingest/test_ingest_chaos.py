"""``lineguard bench chaos`` machinery on a tiny scenario: the hostile corpus (fuzzed Sparkplug protobufs,
malformed JSON) through 2 real worker processes and a real broker, every message accounted for."""

from __future__ import annotations

import random
from pathlib import Path

from line_agent.ingest.chaos import Expect, Scenario, fuzz, markdown, run_scenario, sparkplug_corpus
from line_agent.ingest.sparkplug import SparkplugDecoder


def test_fuzzed_sparkplug_corpus_is_hostile_but_never_raises() -> None:
    rng = random.Random(7)
    corpus = sparkplug_corpus("FZ", 2, 40, rng)
    assert len({p for _, p in corpus}) > 0.9 * len(corpus)  # the damage differs message to message
    assert fuzz(b"\x08\x01\x12\x04abcd", random.Random(1)) != b"\x08\x01\x12\x04abcd"
    e = Expect()
    sent = [e.of(t, p, good=False) for t, p in corpus]  # the decoder itself must never raise
    dead = sum(1 for s in sent if s.dead_digest)
    stored = sum(1 for s in sent if s.telemetry or s.events)
    assert dead > 20 and stored > 20  # both outcomes occur
    assert isinstance(e.sparkplug, SparkplugDecoder)


def test_hostile_scenario_loses_nothing(pg_url: str, tmp_path: Path) -> None:
    sc = Scenario("hostile", "hostile", workers=2, points=2000, per_message=100, cells=8, edge_nodes=2,
                  seconds=1.5)
    r = run_scenario(sc, pg_url, tmp_path)
    assert r["lost"] == 0 and r["duplicated"] == 0 and r["points_lost"] == 0
    assert r["dead_lettered"] > 0 and r["points_stored"] == r["points_published"] > 2000
    assert "| hostile | slices | 2 |" in markdown([r])
