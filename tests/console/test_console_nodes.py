"""The overview shows the line's Sparkplug edge nodes in Chromium (Playwright): one node dies (NDEATH through the
real Mosquitto into a real ingest worker), the other stays alive; the card says which, since when, and the dead
node's alarm is on it. Uses test_console.py's running line; the screenshot goes to test-artifacts/console/."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from api_support import LINE
from test_console import _login, _page, _shot, _wait
from test_console import console as console

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ingest"))
from ingest_support import IngestHarness, Pub, count, wait_for

pytestmark = pytest.mark.browser
MS = 1_790_000_000_000


def _nbirth() -> bytes:
    import pysparkplug as spb

    return spb.NBirth(timestamp=MS, seq=0, metrics=(
        spb.Metric(timestamp=MS, name="bdSeq", datatype=spb.DataType.INT64, value=3),
        spb.Metric(timestamp=MS, name="uptime", alias=50, datatype=spb.DataType.INT64, value=1),
    )).encode(include_dtypes=True)


def _ndeath() -> bytes:
    import pysparkplug as spb

    return spb.NDeath(timestamp=MS + 9000, bd_seq_metric=spb.Metric(
        timestamp=MS + 9000, name="bdSeq", datatype=spb.DataType.INT64, value=3)).encode()


def test_overview_shows_a_dead_sparkplug_node(console: dict[str, Any], mqtt_url: str, tmp_path: Path) -> None:
    c = console
    h = IngestHarness(mqtt_url, c["db"], tmp_path / "ingest")
    pub = Pub(mqtt_url)
    try:
        h.start(sparkplug_filter=f"spBv1.0/{LINE}/#")
        pub.send(f"spBv1.0/{LINE}/NBIRTH/press", _nbirth())
        pub.send(f"spBv1.0/{LINE}/NBIRTH/oven", _nbirth())
        pub.flush()
        assert wait_for(lambda: count(c["db"], "SELECT count(*) FROM sparkplug_nodes WHERE group_id = %s"
                                               " AND state = 'alive'", (LINE,)) == 2)
        page = _page(c)
        _login(page, c["url"], c["tokens"]["viewer"])
        card = f".line-card[data-line='{LINE}']"
        page.wait_for_selector(f"{card} [data-src='sparkplug:press'][data-status=alive]", timeout=15000)

        pub.send(f"spBv1.0/{LINE}/NDEATH/press", _ndeath())
        pub.flush()
        page.wait_for_selector(f"{card} [data-src='sparkplug:press'][data-status=dead]", timeout=15000)
        dead = page.text_content(f"{card} [data-src='sparkplug:press']") or ""
        assert dead.startswith(f"Sparkplug node {LINE}/press: dead since ") and "last message" in dead, dead
        assert "src bad" in (page.get_attribute(f"{card} [data-src='sparkplug:press']", "class") or "")
        alive = page.text_content(f"{card} [data-src='sparkplug:oven']") or ""
        assert alive.startswith(f"Sparkplug node {LINE}/oven: alive · last message "), alive
        # Its condition alarm reaches the card (pushed by the alarm watcher).
        _wait(page, f"document.querySelector(\"{card} [data-f=alarms]\").textContent"
                    f".includes('Sparkplug node {LINE}/press dead since')", 20000)
        _shot(page, "23-overview-sparkplug-dead")
        assert c["external"] == [], c["external"]
    finally:
        pub.close()
        h.stop_all()
