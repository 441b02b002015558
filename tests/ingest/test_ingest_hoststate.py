"""Sparkplug host state survives an ingest restart; data from a dead or unknown node is dead-lettered and asks
for a rebirth; staleness is visible (store/nodes.py, GET /api/nodes). Real broker, pysparkplug payloads."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pysparkplug as spb
from ingest_support import IngestHarness, Pub, count, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from line_agent.ingest.sparkplug import REBIRTH_METRIC, SparkplugDecoder
from line_agent.mqtt import parse_mqtt_url
from line_agent.store.nodes import list_nodes, status_of

MS = 1_790_000_000_000
NAMES = ("temp", "speed", "torque", "power_w")


def nbirth(bd: int = 5) -> bytes:
    return spb.NBirth(timestamp=MS, seq=0, metrics=(
        spb.Metric(timestamp=MS, name="bdSeq", datatype=spb.DataType.INT64, value=bd),
        spb.Metric(timestamp=MS, name="uptime", alias=50, datatype=spb.DataType.INT64, value=1),
    )).encode(include_dtypes=True)


def dbirth(seq: int = 1) -> bytes:
    return spb.DBirth(timestamp=MS, seq=seq, metrics=tuple(
        spb.Metric(timestamp=MS, name=n, alias=j + 1, datatype=spb.DataType.DOUBLE, value=0.0)
        for j, n in enumerate(NAMES))).encode(include_dtypes=True)


def ddata(seq: int, k: int) -> bytes:
    ms = MS + 1000 * (k + 1)
    return spb.DData(timestamp=ms, seq=seq, metrics=tuple(
        spb.Metric(timestamp=ms, name=None, alias=j + 1, datatype=spb.DataType.DOUBLE, value=float(k * 10 + j))
        for j in range(len(NAMES)))).encode()  # aliases only, no data types: the DBIRTH has them


def ndeath(bd: int = 5) -> bytes:
    return spb.NDeath(timestamp=MS + 99_000, bd_seq_metric=spb.Metric(
        timestamp=MS + 99_000, name="bdSeq", datatype=spb.DataType.INT64, value=bd)).encode()


class CmdListener:
    """Subscribes to the group's NCMD topics and keeps what ingest sent."""

    def __init__(self, url: str, group: str) -> None:
        host, port, *_ = parse_mqtt_url(url)
        self.got: list[tuple[str, spb.NCmd]] = []
        self.ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cmd-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5)
        self.c.on_subscribe = lambda *a, **k: self.ready.set()
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, spb.NCmd.decode(bytes(m.payload))))
        self.c.connect(host, port)
        self.c.subscribe(f"spBv1.0/{group}/NCMD/#", qos=1)
        self.c.loop_start()
        assert self.ready.wait(10)

    def rebirths(self, node: str) -> int:
        return sum(1 for t, cmd in self.got if t.endswith(f"/NCMD/{node}")
                   and any(m.name == REBIRTH_METRIC and m.value is True for m in cmd.metrics))

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _points(url: str, group: str) -> int:
    return count(url, "SELECT count(*) FROM telemetry WHERE line = %s AND device = 'dev'", (group,))


def test_host_state_survives_a_graceful_restart(harness: IngestHarness, pub: Pub) -> None:
    group = f"G{harness.prefix}"
    kw: dict[str, Any] = {"sparkplug_filter": f"spBv1.0/{group}/#"}
    harness.start(**kw)
    pub.send(f"spBv1.0/{group}/NBIRTH/press", nbirth())
    pub.send(f"spBv1.0/{group}/DBIRTH/press/dev", dbirth())
    for k in range(4):
        pub.send(f"spBv1.0/{group}/DDATA/press/dev", ddata(2 + k, k))
    pub.flush()
    url = harness.db_url
    assert wait_for(lambda: _points(url, group) == 4 * 4 + 4)  # 4 DDATA x 4 metrics + the DBIRTH's 4
    harness.stop_all()  # graceful: SIGTERM in a real deployment
    with psycopg.connect(url) as conn:
        (state, bd, nxt, birth), = conn.execute(
            "SELECT state, bd_seq, next_seq, birth FROM sparkplug_nodes WHERE group_id = %s AND device = ''",
            (group,)).fetchall()
    assert (state, bd, nxt, birth is not None) == ("alive", 5, 6, True)

    w = harness.start(**kw)  # a new process would do the same: the state comes from sparkplug_nodes
    for k in range(4, 8):
        pub.send(f"spBv1.0/{group}/DDATA/press/dev", ddata(2 + k, k))  # aliases only, no new birth
    pub.flush()
    assert wait_for(lambda: w.stats.messages >= 4)
    assert wait_for(lambda: _points(url, group) == 8 * 4 + 4)
    assert count(url, "SELECT count(*) FROM dead_letter") == 0  # was: 16 points dead-lettered
    assert w.sparkplug.seq_gaps == 0 and w.sparkplug.rebirths_requested == 0  # seq continued from the store


def test_data_from_a_dead_or_unknown_node_is_dead_lettered_and_asks_for_rebirth(harness: IngestHarness,
                                                                                pub: Pub) -> None:
    group = f"G{harness.prefix}"
    cmds = CmdListener(harness.mqtt_url, group)
    try:
        w = harness.start(sparkplug_filter=f"spBv1.0/{group}/#")
        w.sparkplug._holdoff = 0.0  # one request per message here, to count them
        pub.send(f"spBv1.0/{group}/NBIRTH/press", nbirth())
        pub.send(f"spBv1.0/{group}/DBIRTH/press/dev", dbirth())
        pub.send(f"spBv1.0/{group}/DDATA/press/dev", ddata(2, 0))
        pub.send(f"spBv1.0/{group}/NDEATH/press", ndeath())
        pub.send(f"spBv1.0/{group}/DDATA/press/dev", ddata(3, 1))  # after the death: not accepted
        pub.send(f"spBv1.0/{group}/DDATA/oven/dev", ddata(7, 2))  # a node never born
        pub.flush()
        url = harness.db_url
        assert wait_for(lambda: count(url, "SELECT count(*) FROM dead_letter") == 2)
        with psycopg.connect(url) as conn:
            reasons = dict(conn.execute("SELECT topic, reason FROM dead_letter").fetchall())
        assert "that is dead (NDEATH received); rebirth requested" in reasons[f"spBv1.0/{group}/DDATA/press/dev"]
        assert "that is unknown (no NBIRTH seen); rebirth requested" in reasons[f"spBv1.0/{group}/DDATA/oven/dev"]
        assert _points(url, group) == 4 + 4  # DBIRTH + the one DDATA before the death
        assert wait_for(lambda: cmds.rebirths("press") == 1 and cmds.rebirths("oven") == 1, 10)
        # The node answers with a new birth: its data is accepted again.
        pub.send(f"spBv1.0/{group}/NBIRTH/press", nbirth(6))
        pub.send(f"spBv1.0/{group}/DBIRTH/press/dev", dbirth())
        pub.send(f"spBv1.0/{group}/DDATA/press/dev", ddata(2, 3))
        pub.flush()
        assert wait_for(lambda: _points(url, group) == 4 + 4 + 4)
        assert wait_for(lambda: {(n.edge_node, n.device): n.status for n in list_nodes(url)} == {
            ("oven", ""): "unknown", ("oven", "dev"): "unknown", ("press", ""): "alive", ("press", "dev"): "alive"},
            10)
    finally:
        cmds.close()


def test_staleness_in_list_nodes_and_the_api(db: str) -> None:
    from fastapi.testclient import TestClient

    from line_agent.api import ApiDeps, LiveHub, create_app
    from line_agent.api.auth import Role, create_token
    from line_agent.ingest.rows import Batch
    from line_agent.store.nodes import save_host_state

    d = SparkplugDecoder("s1")
    b = Batch()
    for node in ("a", "b", "c"):
        d.decode(f"spBv1.0/L1/NBIRTH/{node}", nbirth(), b)
        d.decode(f"spBv1.0/L1/DBIRTH/{node}/dev", dbirth(), b)
    d.decode("spBv1.0/L1/NDEATH/c", ndeath(), b)
    rows = d.changes()
    now = time.time()
    for r in rows:
        if r.edge_node == "b":
            r.last_seen = now - 3600  # silent for an hour
    with psycopg.connect(db) as conn:
        save_host_state(conn, rows)
    got = {(n.edge_node, n.device): n.status for n in list_nodes(db, stale_after_s=600)}
    assert got == {("a", ""): "alive", ("a", "dev"): "alive", ("b", ""): "stale", ("b", "dev"): "stale",
                   ("c", ""): "dead", ("c", "dev"): "dead"}
    later = datetime.now(UTC) + timedelta(hours=2)
    assert {n.status for n in list_nodes(db, stale_after_s=600, now=later) if n.edge_node != "c"} == {"stale"}
    assert status_of("unknown", "unknown", 1.0, 60) == "unknown"

    token = create_token(db, Role.viewer, "viewer-nodes")
    deps = ApiDeps(database_url=db, lines=["L1"], hub=LiveHub(), pool_max=2)
    with TestClient(create_app(deps)) as client:
        r = client.get("/api/nodes", params={"stale_after_s": 600}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["counts"] == {"alive": 2, "stale": 2, "dead": 2, "unknown": 0}
        a = next(i for i in body["items"] if i["edge_node"] == "a" and i["device"] == "")
        assert a["line"] == "L1" and a["cell"] == "a" and a["bd_seq"] == 5 and a["metrics"] == 2
        assert a["last_seen"] is not None
        dead = client.get("/api/nodes", params={"status": "dead"}, headers={"Authorization": f"Bearer {token}"})
        assert [(i["edge_node"], i["device"]) for i in dead.json()["items"]] == [("c", ""), ("c", "dev")]
        assert client.get("/api/nodes").status_code == 401
