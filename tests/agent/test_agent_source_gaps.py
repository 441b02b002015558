"""The shift summary says when its data is incomplete: Sparkplug nodes that died (or went silent) during the
window, published through the real Mosquitto into a real ingest worker, named with when their data is missing
by the template narrator, verified, and given to an LLM backend as a fact (line_agent/agent/tools.py
source_gaps)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pysparkplug as spb
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ingest"))
from ingest_support import IngestHarness, Pub, count, wait_for

from line_agent.agent.core import build_messages, summarize
from line_agent.agent.tools import ToolConfig, source_gaps
from line_agent.store.migrate import migrate
from llm_ops.facts import Window

MS = 1_790_000_000_000


def nbirth(bd: int) -> bytes:
    return spb.NBirth(timestamp=MS, seq=0, metrics=(
        spb.Metric(timestamp=MS, name="bdSeq", datatype=spb.DataType.INT64, value=bd),
        spb.Metric(timestamp=MS, name="uptime", alias=50, datatype=spb.DataType.INT64, value=1),
    )).encode(include_dtypes=True)


def ndata(seq: int, k: int) -> bytes:
    ms = MS + 1000 * (k + 1)
    return spb.NData(timestamp=ms, seq=seq, metrics=(
        spb.Metric(timestamp=ms, name=None, alias=50, datatype=spb.DataType.INT64, value=k),)).encode()


def ndeath(bd: int) -> bytes:
    return spb.NDeath(timestamp=MS + 99_000, bd_seq_metric=spb.Metric(
        timestamp=MS + 99_000, name="bdSeq", datatype=spb.DataType.INT64, value=bd)).encode()


@pytest.fixture
def harness(fresh_db: str, mqtt_url: str, tmp_path: Path) -> Iterator[IngestHarness]:
    migrate(fresh_db)
    h = IngestHarness(mqtt_url, fresh_db, tmp_path / "data")
    yield h
    h.stop_all()


def test_summary_names_a_node_that_died_in_the_window(harness: IngestHarness, mqtt_url: str) -> None:
    group = f"L{harness.prefix}"
    url = harness.db_url
    harness.start(sparkplug_filter=f"spBv1.0/{group}/#")
    pub = Pub(mqtt_url)
    try:
        start = datetime.now(UTC) - timedelta(minutes=1)
        for node in ("press", "oven", "mixer"):
            pub.send(f"spBv1.0/{group}/NBIRTH/{node}", nbirth(5))
            pub.send(f"spBv1.0/{group}/NDATA/{node}", ndata(1, 0))
        pub.flush()
        assert wait_for(lambda: count(url, "SELECT count(*) FROM sparkplug_nodes WHERE group_id = %s AND"
                                           " state = 'alive'", (group,)) == 3)
        time.sleep(1.1)
        before_death = datetime.now(UTC)
        time.sleep(1.1)
        pub.send(f"spBv1.0/{group}/NDEATH/press", ndeath(5))  # dead, and still dead at the end
        pub.send(f"spBv1.0/{group}/NDEATH/oven", ndeath(5))  # dead, then born again
        pub.flush()
        assert wait_for(lambda: count(url, "SELECT count(*) FROM sparkplug_nodes WHERE group_id = %s AND"
                                           " device = '' AND state = 'dead'", (group,)) == 2)
        time.sleep(1.1)
        pub.send(f"spBv1.0/{group}/NBIRTH/oven", nbirth(6))
        pub.send(f"spBv1.0/{group}/NDATA/oven", ndata(1, 1))
        pub.flush()
        assert wait_for(lambda: count(url, "SELECT count(*) FROM sparkplug_nodes WHERE group_id = %s AND"
                                           " device = '' AND state = 'alive'", (group,)) == 2)
    finally:
        pub.close()
    end = datetime.now(UTC) + timedelta(seconds=1)

    r = summarize(url, group, start=start, end=end, lang="en", backend="template")
    assert r.verdict == "template" and r.detail["template_verification"]["ok"], r.detail
    gaps = {f.names: f for f in r.facts if f.kind == "data_gap"}
    assert set(gaps) == {("press",), ("oven",)}, r.facts  # mixer reported all along
    press, oven = gaps[("press",)], gaps[("oven",)]
    assert press.extra["still"] is True and oven.extra["still"] is False and press.key
    assert datetime.fromisoformat(press.extra["end"]) == end
    assert before_death < datetime.fromisoformat(press.extra["start"]) < datetime.fromisoformat(oven.extra["end"])
    a = datetime.fromisoformat(press.extra["start"])
    assert f"Data from edge node {group}/press is missing from {a:%Y-%m-%d %H:%M}" in r.prose, r.prose
    assert "edge node dead, still now)" in r.prose
    assert f"Data from edge node {group}/oven is missing from" in r.prose and "edge node dead)." in r.prose
    assert r.headline.startswith(f"{group} summary: Data from edge node")  # it qualifies every other figure
    assert "mixer" not in r.prose
    zh = summarize(url, group, start=start, end=end, lang="zh", backend="template")
    assert f"边缘节点 {group}/press 的数据自" in zh.prose and "至今仍未恢复" in zh.prose, zh.prose
    assert zh.detail["template_verification"]["ok"], zh.detail

    # An LLM backend gets it as a fact with its times.
    w = Window(group, start, end)
    user = build_messages(w, r.facts, "en")[1]["content"]
    block = json.loads(user[user.index("{", user.index("<facts>")):user.rindex("}") + 1])
    fact = next(f for f in block["facts"] if f["id"] == "gaps.press")
    assert fact["kind"] == "data_gap" and fact["extra"]["cause"] == "dead" and fact["at"] == press.at

    # Honest about what the host state knows: a window that ended before the death has no gap.
    with psycopg.connect(url) as conn:
        early = source_gaps(conn, Window(group, start, before_death))
        assert [f for f in early.facts if f.kind == "data_gap"] == [], early.facts
        # Silent longer than the stale time: mixer's data is missing from its last message on.
        time.sleep(1.2)
        silent = source_gaps(conn, Window(group, start, datetime.now(UTC)), ToolConfig(sparkplug_stale_s=1.0))
    by = {f.names: f for f in silent.facts}
    assert by[("mixer",)].extra["cause"] == "silent" and by[("mixer",)].extra["still"] is True
    assert by[("press",)].extra["cause"] == "dead"
