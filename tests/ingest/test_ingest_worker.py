"""The worker against real Mosquitto and PostgreSQL: exactly-once storage, dead letters, shared subscriptions,
back-pressure."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_support import IngestHarness, Pub, count, wait_for

from line_agent.ingest.rows import DEAD_LETTER_HEAD

T = 1_790_000_000.0


def telemetry(n_points: int, start: int = 0, device: str = "m1") -> bytes:
    return json.dumps([{"ts": T + start + k, "device": device, "metrics": {"a": k, "b": -k}}
                       for k in range(n_points)]).encode()


def test_all_kinds_stored_once_even_when_redelivered(harness: IngestHarness, pub: Pub) -> None:
    w = harness.start()
    base = f"{harness.prefix}/s1/L1"
    msgs = [
        (f"{base}/press/telemetry", telemetry(50)),
        (f"{base}/press/event", json.dumps({"event_id": "e-1", "ts": T, "code": "TWF", "duration_s": 12.5})),
        (f"{base}/cam/inspection", json.dumps({
            "inspection_id": "i-1", "ts": T, "camera": "top", "part_id": "p-1", "decision": "reject",
            "defects": [{"cls": "short", "confidence": 0.91, "box": [1, 2, 3, 4]},
                        {"cls": "spur", "confidence": 0.5, "box": [5, 6, 7, 8]}], "latency_ms": 3.2,
            "model": "m", "frame_saved": True, "truth": [{"cls": "short", "box": [1, 2, 3, 4]}]})),
    ]
    for _ in range(3):  # the same messages three times: a replay, a re-delivery
        for t, p in msgs:
            pub.send(t, p)
    pub.flush()
    assert wait_for(lambda: w.stats.messages >= 9)
    url = harness.db_url
    assert count(url, "SELECT count(*) FROM telemetry WHERE line = 'L1'") == 100
    assert count(url, "SELECT count(DISTINCT (device, metric, ts)) FROM telemetry WHERE line = 'L1'") == 100
    assert count(url, "SELECT count(*) FROM events WHERE event_id = 'e-1' AND code = 'TWF' AND duration_s = 12.5") == 1
    assert count(url, "SELECT count(*) FROM inspections WHERE inspection_id = 'i-1' AND n_defects = 2"
                      " AND frame_saved") == 1
    assert count(url, "SELECT count(*) FROM defects WHERE inspection_id = 'i-1'") == 2
    assert count(url, "SELECT count(*) FROM dead_letter") == 0
    assert w.writer.copy_staged >= 1  # the repeats went through staging + ON CONFLICT


BAD_PAYLOADS = st.one_of(
    st.binary(min_size=1, max_size=300),  # random bytes, mostly invalid UTF-8 / JSON
    st.builds(lambda s: json.dumps({"ts": T, "metrics": {"a": s}}).encode(), st.text(max_size=20)),  # wrong type
    st.builds(lambda n: json.dumps({"ts": T, "metrics": {"x" * n: 1}}).encode(), st.integers(300, 100_000)),
    st.just(b'{"ts": 1790000000, "metrics": {"a": NaN}}'),
    st.builds(lambda b: b'{"ts": 1790000000, "metrics": {"a": 1}, "device": "' + b + b'"}',
              st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\\ud800", b"\\u0000"])),
    st.builds(lambda k: telemetry(3)[:k], st.integers(1, 40)),  # truncated
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=st.lists(BAD_PAYLOADS, min_size=1, max_size=8))
def test_fuzzed_payloads_dead_lettered_and_good_ones_around_them_stored(harness: IngestHarness, pub: Pub,
                                                                       bad: list[bytes]) -> None:
    if not harness.running:
        harness.start()
    w = harness.running[0].worker
    line = f"F{time.monotonic_ns()}"
    base = f"{harness.prefix}/s1/{line}/press/telemetry"
    before = w.stats.messages
    sent_bad: list[str] = []
    for i, b in enumerate(bad):
        pub.send(base, telemetry(5, start=10 * i))  # good
        # Each bad one on its own device topic level (cell) so identical fuzz payloads stay distinct dead letters.
        topic = f"{harness.prefix}/s1/{line}/bad{i}/telemetry"
        pub.send(topic, b)
        sent_bad.append(topic)
    pub.send(base, telemetry(5, start=10 * len(bad)))
    pub.flush()
    assert wait_for(lambda: w.stats.messages >= before + 2 * len(bad) + 1)
    url = harness.db_url
    assert count(url, "SELECT count(*) FROM telemetry WHERE line = %s AND cell = 'press'", (line,)) == \
        10 * (len(bad) + 1)
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT topic, reason, payload, payload_size, payload_sha256 FROM dead_letter"
                            " WHERE topic = ANY(%s)", (sent_bad,)).fetchall()
    assert sorted(r[0] for r in rows) == sorted(sent_bad)
    by_topic = {r[0]: r for r in rows}
    for topic, b in zip(sent_bad, bad, strict=True):
        _, reason, head, size, sha = by_topic[topic]
        assert reason  # a reason
        # the raw bytes, unchanged: the first 4 KiB, with the whole payload's size and SHA-256
        assert bytes(head) == b[:DEAD_LETTER_HEAD] and size == len(b) and bytes(sha) == hashlib.sha256(b).digest()


def test_two_workers_share_the_subscription(harness: IngestHarness, pub: Pub) -> None:
    w0, w1 = harness.start(0), harness.start(1)
    n_msgs = 400
    for i in range(n_msgs):
        pub.send(f"{harness.prefix}/s1/L2/press/telemetry", telemetry(50, start=100 * i, device=f"d{i % 7}"))
    pub.flush()
    assert wait_for(lambda: w0.stats.messages + w1.stats.messages >= n_msgs)
    time.sleep(0.5)
    # The broker gave each message to one worker: both got work, none got a message twice.
    assert w0.stats.messages > 0 and w1.stats.messages > 0
    assert w0.stats.messages + w1.stats.messages == n_msgs
    assert count(harness.db_url, "SELECT count(*) FROM telemetry WHERE line = 'L2'") == n_msgs * 100


def test_back_pressure_bounds_the_queue_when_the_writer_is_slow(harness: IngestHarness, pub: Pub) -> None:
    inflight = 10
    w = harness.start(inflight=inflight, batch_rows=5)
    real_write = w.writer.write
    peak = 0

    def slow_write(batch: object) -> None:  # fault injection: a database 20x slower than this one
        nonlocal peak
        peak = max(peak, w._q.qsize())
        time.sleep(0.05)
        real_write(batch)  # type: ignore[arg-type]

    w.writer.write = slow_write  # type: ignore[method-assign]
    n = 200
    for i in range(n):
        pub.send(f"{harness.prefix}/s1/L3/press/telemetry", telemetry(2, start=10 * i))
    pub.flush()
    assert wait_for(lambda: w.stats.messages >= n, timeout_s=60)
    # Receive Maximum asks the broker for at most `inflight` unacknowledged messages; the queue (2 x inflight)
    # is the hard bound: when full it blocks the network thread, TCP fills and the broker keeps the rest.
    assert 0 < peak <= 2 * inflight
    assert count(harness.db_url, "SELECT count(*) FROM telemetry WHERE line = 'L3'") == n * 4


def test_worker_stops_cleanly_and_resumes_its_session(harness: IngestHarness, pub: Pub) -> None:
    w = harness.start()
    harness.stop_all()
    assert not w.connected.is_set()
    for i in range(20):  # published while no worker runs: the broker queues them in the session
        pub.send(f"{harness.prefix}/s1/L4/press/telemetry", telemetry(5, start=10 * i))
    pub.flush()
    w2 = harness.start()
    assert wait_for(lambda: w2.stats.messages >= 20)
    assert count(harness.db_url, "SELECT count(*) FROM telemetry WHERE line = 'L4'") == 200
    assert threading.active_count() >= 1


def test_worker_keeps_rollups_fresh_on_plain_postgres(harness: IngestHarness, pub: Pub) -> None:
    w = harness.start(rollup_every_s=0.2)
    for i in range(10):
        pub.send(f"{harness.prefix}/s1/L5/press/telemetry", telemetry(30, start=30 * i))
    pub.flush()
    assert wait_for(lambda: w.stats.messages >= 10)
    # 300 s of 1 Hz points for metrics a and b -> 5 (or 6, by alignment) minute buckets each, n summing to 300
    assert wait_for(lambda: count(harness.db_url, "SELECT coalesce(sum(n), 0) FROM telemetry_1m WHERE line = 'L5'"
                                  " AND metric = 'a'") == 300, 10)
    assert count(harness.db_url, "SELECT sum(n) FROM telemetry_1h WHERE line = 'L5' AND metric = 'b'") == 300


def test_run_workers_as_processes(harness: IngestHarness, pub: Pub, tmp_path: Path) -> None:
    import os

    from ingest_support import probe_until_stored

    from line_agent.ingest.worker import run_workers

    env = {**os.environ, "LINEGUARD_DATABASE_URL": harness.db_url, "LINEGUARD_MQTT_URL": harness.mqtt_url,
           "LINEGUARD_DATA_DIR": str(tmp_path / "data"), "LINEGUARD_LOG_LEVEL": "WARNING"}
    stop = threading.Event()
    t = threading.Thread(target=run_workers, args=(2, stop, env, tmp_path / "logs", harness.prefix,
                                                   ["--json-filter", f"{harness.prefix}/#", "--client-prefix",
                                                    harness.prefix, "--sparkplug-filter", ""]), daemon=True)
    t.start()
    try:
        probe_until_stored(harness.mqtt_url, harness.db_url, harness.prefix)
        for i in range(100):
            pub.send(f"{harness.prefix}/s1/L6/press/telemetry", telemetry(10, start=10 * i))
        pub.flush()
        assert wait_for(lambda: count(harness.db_url, "SELECT count(*) FROM telemetry WHERE line = 'L6'") >= 2000)
        time.sleep(0.5)
        assert count(harness.db_url, "SELECT count(*) FROM telemetry WHERE line = 'L6'") == 2000
    finally:
        stop.set()
        t.join(60)
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["ingest-0.log", "ingest-1.log"]


def test_spool_left_by_a_crashed_worker_is_replayed_on_start(harness: IngestHarness) -> None:
    from line_agent.ingest.rows import Batch, TelemetryRow
    from line_agent.ingest.spool import Spool

    cfg = harness.config()
    spool = Spool(cfg.spool_dir)  # what a worker that died with the database down left behind
    for k in range(3):
        spool.append(Batch(telemetry=[TelemetryRow(T + 100 * k + i, "s1", "L7", "c", "d", "m", float(i))
                                      for i in range(100)]))
    (cfg.spool_dir / "000000000099.tmp").write_bytes(b"half-written, never acknowledged")
    w = harness.start()
    assert wait_for(lambda: count(harness.db_url, "SELECT count(*) FROM telemetry WHERE line = 'L7'") == 300)
    assert wait_for(lambda: not list(cfg.spool_dir.iterdir()))
    assert w.stats.replayed_batches == 3
