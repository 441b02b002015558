"""Helpers for the ingest tests: workers in threads, a publisher, polling (imported by conftest and tests).

The session broker keeps persistent sessions (clean_start=False), so every test uses its own client
ids, shared-subscription group and topic prefix: no test receives another's messages.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from line_agent.ingest.worker import IngestConfig, IngestWorker


@dataclass
class Running:
    worker: IngestWorker
    stop: threading.Event
    thread: threading.Thread

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


@dataclass
class IngestHarness:
    """Starts workers for one test, all with the same unique prefix/group, and stops them after."""

    mqtt_url: str
    db_url: str
    data_dir: Path
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    running: list[Running] = field(default_factory=list)

    def config(self, index: int = 0, **kw: object) -> IngestConfig:
        base: dict[str, object] = dict(
            mqtt_url=self.mqtt_url, database_url=self.db_url, data_dir=self.data_dir, worker_index=index,
            client_prefix=f"{self.prefix}-ingest", json_filter=f"{self.prefix}/#", share_group=self.prefix,
            sparkplug_filter=None, batch_delay_s=0.05, db_retry_s=0.3,
        )
        base.update(kw)
        return IngestConfig(**base)  # type: ignore[arg-type]

    def start(self, index: int = 0, **kw: object) -> IngestWorker:
        w = IngestWorker(self.config(index, **kw))
        stop = threading.Event()
        t = threading.Thread(target=w.run, args=(stop,), daemon=True)
        t.start()
        assert w.subscribed.wait(15), "ingest worker did not connect and subscribe"
        self.running.append(Running(w, stop, t))
        return w

    def stop_all(self) -> None:
        for r in self.running:
            r.close()
        self.running.clear()


class Pub:
    """A test publisher (QoS 1, MQTT 5) that waits until the broker has everything."""

    def __init__(self, url: str) -> None:
        from line_agent.mqtt import parse_mqtt_url

        host, port, *_ = parse_mqtt_url(url)
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5)
        self.c.max_queued_messages_set(0)
        self.c.reconnect_delay_set(1, 2)
        self.c.connect(host, port)
        self.c.loop_start()
        self.infos: list[mqtt.MQTTMessageInfo] = []

    def send(self, topic: str, payload: bytes | str) -> None:
        self.infos.append(self.c.publish(topic, payload, qos=1))

    def flush(self, timeout_s: float = 30.0) -> None:
        for i in self.infos:
            i.wait_for_publish(timeout_s)
        self.infos.clear()

    def close(self) -> None:
        self.flush()
        self.c.disconnect()
        self.c.loop_stop()


def probe_until_stored(pub_url: str, db_url: str, prefix: str, timeout_s: float = 30.0) -> None:
    """Publish probe events until one is stored: a worker in another process is subscribed from then on."""
    p = Pub(pub_url)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            eid = uuid.uuid4().hex
            p.send(f"{prefix}/s/probe/x/event", f'{{"event_id": "{eid}", "ts": 1790000000, "kind": "probe"}}')
            p.flush()
            if wait_for(lambda e=eid: count(db_url, "SELECT count(*) FROM events WHERE event_id = %s", (e,)) == 1,
                        2.0, 0.1):
                return
        raise AssertionError("the ingest worker stored no probe: not subscribed?")
    finally:
        p.close()


def wait_for(pred: Callable[[], bool], timeout_s: float = 30.0, every_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every_s)
    return pred()


def count(url: str, sql: str, params: tuple[object, ...] = ()) -> int:
    with psycopg.connect(url, connect_timeout=3) as conn:
        row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
        return int(row[0]) if row else 0


AI4I_HEADER = ("UDI\tProduct ID\tType\tAir temperature [K]\tProcess temperature [K]\tRotational speed [rpm]\t"
               "Torque [Nm]\tTool wear [min]\tMachine failure\tTWF\tHDF\tPWF\tOSF\tRNF")
MODES = ("TWF", "HDF", "PWF", "OSF", "RNF")


def write_ai4i(path: Path, n: int) -> dict[str, int]:
    """A synthetic table in the AI4I layout (for tests that must run without shared data).
    Returns the failure count per mode, the ground truth a replay must reproduce."""
    counts = dict.fromkeys(MODES, 0)
    lines = [AI4I_HEADER]
    for i in range(1, n + 1):
        flags = [1 if i % p == 0 else 0 for p in (37, 53, 71, 89, 97)]
        for m, f in zip(MODES, flags, strict=True):
            counts[m] += f
        lines.append(f"{i}\tM{i}\tM\t{298 + i % 5 / 10}\t{308 + i % 7 / 10}\t{1400 + i % 300}\t{30 + i % 20}\t"
                     f"{i % 240}\t{int(any(flags))}\t" + "\t".join(map(str, flags)))
    path.write_text("\n".join(lines) + "\n")
    return counts


def assert_replay_stored(url: str, line: str, rows: int, faults: dict[str, int], start_ts: float,
                         cycle_s: float) -> None:
    """Row by row: every (part, metric) stored exactly once, every fault exactly once, nothing else."""
    from line_agent.replay import METRICS

    with psycopg.connect(url) as conn:
        got = conn.execute(
            "SELECT metric, round(extract(epoch FROM ts))::bigint, count(*) FROM telemetry WHERE line = %s"
            " GROUP BY 1, 2", (line,)).fetchall()
        codes = dict(conn.execute(
            "SELECT code, count(*) FROM events WHERE line = %s AND kind = 'fault' GROUP BY 1", (line,)).fetchall())
        dup_events = conn.execute(
            "SELECT count(*) - count(DISTINCT event_id) FROM events WHERE line = %s", (line,)).fetchone()
    expected = {(m, round(start_ts + i * cycle_s)) for i in range(rows) for m in METRICS}
    seen = {(m, t) for m, t, _ in got}
    assert len(seen - expected) == 0, f"unexpected points: {sorted(seen - expected)[:5]}"
    assert len(expected - seen) == 0, f"lost {len(expected - seen)} points, e.g. {sorted(expected - seen)[:5]}"
    assert all(n == 1 for _, _, n in got), "duplicated points"
    assert codes == {m: n for m, n in faults.items() if n}
    assert dup_events == (0,)
