"""Sparkplug staleness and the dead-letter quota as condition alarms (line_agent/api/alarms.py), end to end:
a node publishes through the real Mosquitto into a real ingest worker, the API over the same real PostgreSQL
raises the alarm with its reason and clears it when the condition goes; hostile messages fill a tiny quota."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pysparkplug as spb
import pytest
from fastapi.testclient import TestClient
from ingest_support import IngestHarness, Pub, count, wait_for
from test_ingest_hoststate import MS, nbirth, ndeath

from line_agent.api import ApiDeps, LiveHub, create_app
from line_agent.api.auth import Role, create_token


def ndata(seq: int, k: int) -> bytes:
    ms = MS + 1000 * (k + 1)
    return spb.NData(timestamp=ms, seq=seq, metrics=(
        spb.Metric(timestamp=ms, name=None, alias=50, datatype=spb.DataType.INT64, value=k),)).encode()


class Alarms:
    def __init__(self, client: TestClient, token: str) -> None:
        self.client, self.h = client, {"Authorization": f"Bearer {token}"}

    def page(self, **params: Any) -> dict[str, Any]:
        r = self.client.get("/api/alarms", params=params, headers=self.h)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def open(self, key: str) -> dict[str, Any] | None:
        return next((a for a in self.page()["items"] if a["key"] == key and a["active"]), None)


@pytest.fixture
def api_for(db: str) -> Iterator[Any]:
    clients: list[TestClient] = []

    def make(lines: list[str], **kw: Any) -> tuple[TestClient, dict[str, str]]:
        deps = ApiDeps(database_url=db, lines=lines, hub=LiveHub(), pool_max=3, **kw)
        client = TestClient(create_app(deps))
        client.__enter__()
        clients.append(client)
        tokens = {"all": create_token(db, Role.viewer, f"v-{len(clients)}"),
                  "other": create_token(db, Role.viewer, f"o-{len(clients)}", lines=[lines[-1]])}
        return client, tokens

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def test_stale_then_dead_node_alarms_and_clears_after_a_rebirth(harness: IngestHarness, pub: Pub,
                                                                api_for: Any) -> None:
    group = f"G{harness.prefix}"
    harness.start(sparkplug_filter=f"spBv1.0/{group}/#")
    client, tokens = api_for([group, "elsewhere"], sparkplug_stale_after_s=2.0)
    alarms, scoped = Alarms(client, tokens["all"]), Alarms(client, tokens["other"])
    key = f"cond:sparkplug:{group}/press"
    pub.send(f"spBv1.0/{group}/NBIRTH/press", nbirth())
    for k in range(3):
        pub.send(f"spBv1.0/{group}/NDATA/press", ndata(1 + k, k))
    pub.flush()
    url = harness.db_url
    assert wait_for(lambda: count(url, "SELECT count(*) FROM telemetry WHERE line = %s", (group,)) >= 4)
    assert alarms.open(key) is None  # alive: heard from within 2 s

    # Silent: stale after 2 s, a medium alarm saying since when.
    assert wait_for(lambda: alarms.open(key) is not None, 15, 0.5)
    a = alarms.open(key)
    assert a is not None and a["kind"] == "sparkplug_stale" and a["severity"] == "medium", a
    assert a["title"].startswith(f"Sparkplug node {group}/press silent ") and a["line"] == group
    assert "no message since" in a["reason"] and "stale after 2 s" in a["reason"] and not a["latched"]
    assert scoped.open(key) is None  # a token limited to the other line does not see it

    # NDEATH: the same alarm becomes high, "dead since".
    pub.send(f"spBv1.0/{group}/NDEATH/press", ndeath())
    pub.flush()
    assert wait_for(lambda: (alarms.open(key) or {}).get("kind") == "sparkplug_dead", 15, 0.5)
    a = alarms.open(key)
    assert a is not None and a["severity"] == "high" and " dead since " in a["title"], a
    assert "NDEATH received" in a["reason"] and "missing until it is born again" in a["reason"]

    # A rebirth and fresh data: the condition goes, the API clears the alarm by itself.
    pub.send(f"spBv1.0/{group}/NBIRTH/press", nbirth(6))
    pub.send(f"spBv1.0/{group}/NDATA/press", ndata(1, 9))
    pub.flush()
    assert wait_for(lambda: alarms.open(key) is None, 15, 0.3)
    hist = [x for x in alarms.page(state="all")["items"] if x["key"] == key]
    assert len(hist) == 1 and hist[0]["cleared_by"] == "condition cleared", hist


def test_dead_letter_quota_alarm(harness: IngestHarness, pub: Pub, api_for: Any,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from line_agent.api import alarms as alarms_mod

    monkeypatch.setattr(alarms_mod, "DEAD_LETTER_DROP_WINDOW_S", 3.0)  # cleared 3 s after the last drop, not 15 min
    w = harness.start(dead_letter_quota_bytes=20_000)
    client, tokens = api_for(["LQ", "LR"])
    alarms, scoped = Alarms(client, tokens["all"]), Alarms(client, tokens["other"])
    assert alarms.open("cond:dead_letter:LQ") is None
    for i in range(12):  # 4 KiB heads against a 20 kB quota: a few stored, the rest dropped
        pub.send(f"{harness.prefix}/s1/LQ/bad{i}/telemetry", bytes([i]) * 5000)
    pub.flush()
    assert wait_for(lambda: w.stats.messages >= 12)
    assert wait_for(lambda: w.writer.dead_letters_dropped > 0)
    a = alarms.open("cond:dead_letter:LQ")
    assert a is not None, alarms.page()
    assert a["severity"] == "high" and a["kind"] == "dead_letter_quota" and a["source"] == "ingest"
    assert "of its 19.5 KiB quota" in a["reason"], a["reason"]
    assert f"{w.writer.dead_letters_dropped} bad message(s) not stored" in a["reason"], a["reason"]
    # Every line's token sees it: the table is shared by all lines' ingest.
    b = scoped.open("cond:dead_letter:LR")
    assert b is not None and scoped.open("cond:dead_letter:LQ") is None

    # Looked at and purged: the table is empty, no drop for the window: the alarm clears itself.
    stored = count(harness.db_url, "SELECT count(*) FROM dead_letter")
    assert stored >= 3
    import psycopg

    with psycopg.connect(harness.db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM dead_letter")
    time.sleep(3.2)
    assert wait_for(lambda: alarms.open("cond:dead_letter:LQ") is None, 10, 0.5)
