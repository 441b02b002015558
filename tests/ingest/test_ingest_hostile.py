"""Hostile input against real Mosquitto and PostgreSQL: whatever one message does, it ends as a dead letter
(or as rows), the worker keeps going and never retries it; dead letters stay bounded."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pysparkplug as spb
from ingest_support import IngestHarness, Pub, count, wait_for
from prometheus_client import REGISTRY

from line_agent.ingest.rows import DEAD_LETTER_HEAD, Batch, TelemetryRow, dead_letter
from line_agent.ingest.spool import Spool

T = 1_790_000_000.0
MS = 1_790_000_000_000


def nbirth(metrics: tuple[spb.Metric, ...], ms: int = MS) -> bytes:
    return spb.NBirth(timestamp=ms, seq=0, metrics=(
        spb.Metric(timestamp=ms, name="bdSeq", datatype=spb.DataType.INT64, value=0), *metrics,
    )).encode(include_dtypes=True)


def double(name: str, value: float, ms: int = MS) -> spb.Metric:
    return spb.Metric(timestamp=ms, name=name, datatype=spb.DataType.DOUBLE, value=value)


def alive(h: IngestHarness) -> bool:
    return all(r.thread.is_alive() for r in h.running)


def sparkplug_worker(h: IngestHarness, **kw: object) -> str:
    """A worker that also takes Sparkplug, in a group of this test's own; returns the group."""
    group = f"G{h.prefix}"
    h.start(sparkplug_filter=f"spBv1.0/{group}/#", **kw)
    return group


def test_sparkplug_timestamps_out_of_range_are_dead_letters_and_the_worker_goes_on(harness: IngestHarness,
                                                                                  pub: Pub) -> None:
    # 2**63 ms used to reach the writer as year 292 million: OverflowError, never acked, the worker dead.
    group = sparkplug_worker(harness)
    bad = {"n9999": 2**63, "n3000": 32_503_680_000_000, "n1970": 1_000}
    for node, ms in bad.items():
        pub.send(f"spBv1.0/{group}/NBIRTH/{node}", nbirth((double("temp", 1.0, ms),)))
    pub.send(f"spBv1.0/{group}/NBIRTH/good", nbirth((double("temp", 2.0),)))
    pub.flush()
    url = harness.db_url
    assert wait_for(lambda: count(url, "SELECT count(*) FROM telemetry WHERE line = %s", (group,)) == 1)
    with psycopg.connect(url) as conn:
        rows = dict(conn.execute("SELECT topic, reason FROM dead_letter WHERE source = 'sparkplug'").fetchall())
    assert sorted(rows) == sorted(f"spBv1.0/{group}/NBIRTH/{n}" for n in bad)
    assert all("timestamp" in r and "between 2000 and 2100" in r for r in rows.values()), rows
    assert alive(harness)


def test_sparkplug_datetime_metric_is_stored_with_the_rest_of_its_birth(harness: IngestHarness, pub: Pub) -> None:
    group = sparkplug_worker(harness)
    when = datetime(2026, 3, 1, 6, 30, tzinfo=UTC)
    pub.send(f"spBv1.0/{group}/NBIRTH/n1", nbirth((
        double("temp", 21.5), spb.Metric(timestamp=MS, name="last_service", datatype=spb.DataType.DATETIME,
                                         value=when))))
    pub.flush()
    url = harness.db_url
    assert wait_for(lambda: count(url, "SELECT count(*) FROM telemetry WHERE line = %s", (group,)) == 2)
    with psycopg.connect(url) as conn:
        got = dict(conn.execute("SELECT metric, value FROM telemetry WHERE line = %s", (group,)).fetchall())
    assert got == {"temp": 21.5, "last_service": when.timestamp()}
    assert count(url, "SELECT count(*) FROM dead_letter") == 0


def test_two_sparkplug_nodes_of_one_group_keep_their_own_points(harness: IngestHarness, pub: Pub) -> None:
    # Same group (line), device "" (node level), same metric, same time: only the cell (node) differs.
    group = sparkplug_worker(harness)
    pub.send(f"spBv1.0/{group}/NBIRTH/press", nbirth((double("temp", 40.0),)))
    pub.send(f"spBv1.0/{group}/NBIRTH/oven", nbirth((double("temp", 180.0),)))
    pub.send(f"spBv1.0/{group}/NBIRTH/oven", nbirth((double("temp", 180.0),)))  # a re-sent birth: still once
    pub.flush()
    url = harness.db_url
    assert wait_for(lambda: harness.running[0].worker.stats.messages >= 3)
    with psycopg.connect(url) as conn:
        got = sorted(conn.execute("SELECT cell, device, value FROM telemetry WHERE line = %s", (group,)).fetchall())
    assert got == [("oven", "", 180.0), ("press", "", 40.0)]


def test_a_message_that_breaks_the_writer_is_dead_lettered_alone(harness: IngestHarness, pub: Pub) -> None:
    # Fault injection past the decoders: rows no datetime can hold (OverflowError inside the writer).
    w = harness.start()
    real = w._decode

    def poisoned(m: object) -> Batch:
        b = real(m)  # type: ignore[arg-type]
        if "/poison/" in m.topic:  # type: ignore[attr-defined]
            b.telemetry[:] = [r._replace(ts=1e300) for r in b.telemetry]
        return b

    w._decode = poisoned  # type: ignore[method-assign]
    base = f"{harness.prefix}/s1/LW"
    for i in range(5):
        pub.send(f"{base}/{'poison' if i == 2 else 'press'}/telemetry",
                 json.dumps({"ts": T + i, "metrics": {"a": i}}))
    pub.flush()
    url = harness.db_url
    assert wait_for(lambda: count(url, "SELECT count(*) FROM dead_letter WHERE topic = %s",
                                  (f"{base}/poison/telemetry",)) == 1)
    assert count(url, "SELECT count(*) FROM telemetry WHERE line = 'LW'") == 4
    with psycopg.connect(url) as conn:
        (reason,) = conn.execute("SELECT reason FROM dead_letter").fetchone()  # type: ignore[misc]
    assert "could not be stored" in reason and "OverflowError" in reason
    assert w.stats.refused == 1 and alive(harness)
    # ... and nothing is retried: later messages flow as before.
    pub.send(f"{base}/press/telemetry", json.dumps({"ts": T + 10, "metrics": {"a": 10}}))
    pub.flush()
    assert wait_for(lambda: count(url, "SELECT count(*) FROM telemetry WHERE line = 'LW'") == 5)


def test_a_spooled_message_the_database_refuses_is_dead_lettered_and_the_spool_drains(harness: IngestHarness
                                                                                     ) -> None:
    """What a worker spooled while PostgreSQL was down is replayed on start; a bad part must not stop it
    (before, it raised on every start, forever)."""
    cfg = harness.config()
    spool = Spool(cfg.spool_dir)
    good = Batch(telemetry=[TelemetryRow(T + i, "s1", "LS", "c", "d", "m", float(i)) for i in range(10)])
    bad = Batch(telemetry=[TelemetryRow(1e300, "s1", "LS", "c", "d", "m", 1.0)])
    # A file of an older version (one batch, no message identities) with a bad row ...
    spool.append(Batch(telemetry=[*good.telemetry[:5], *bad.telemetry]))
    # ... and one of this version: message by message.
    ref_bad = dead_letter("mqtt", "t/s1/LS/c/telemetry", "", b'{"ts": 1e300}')
    spool.append(Batch(), [(dead_letter("mqtt", "t/s1/LS/c/telemetry", "", b"good"), good), (ref_bad, bad)])
    (cfg.spool_dir / "000000000050.batch").write_bytes(b"{truncated")  # unreadable: set aside
    w = harness.start()
    assert wait_for(lambda: not spool.files() and not w.spool.bytes)
    url = harness.db_url
    assert count(url, "SELECT count(*) FROM telemetry WHERE line = 'LS'") == 10
    with psycopg.connect(url) as conn:
        dead = conn.execute("SELECT source, topic, reason, payload_sha256 FROM dead_letter ORDER BY id").fetchall()
    assert [(s, t) for s, t, *_ in dead] == [("spool", "spool/000000000000.batch"),
                                             ("mqtt", "t/s1/LS/c/telemetry")]
    assert all("OverflowError" in r for _, _, r, _ in dead)
    assert bytes(dead[1][3]) == ref_bad.sha256  # the message's own identity, kept through the spool
    assert (cfg.spool_dir / "000000000050.corrupt").exists()
    assert alive(harness)


def _dead_letter_sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_dead_letters_keep_a_head_and_a_digest_and_stop_at_the_quota(harness: IngestHarness, pub: Pub) -> None:
    w = harness.start(dead_letter_quota_bytes=40_000)
    base = f"{harness.prefix}/s1/LQ"
    big = b"\xff" * (1 << 20)  # 1 MiB of garbage: used to be stored whole
    truncated_before = _dead_letter_sample("lineguard_dead_letters_truncated_total")
    dropped_before = _dead_letter_sample("lineguard_dead_letters_dropped_total", {"reason": "quota"})
    pub.send(f"{base}/big/telemetry", big)
    pub.flush()
    url = harness.db_url
    assert wait_for(lambda: count(url, "SELECT count(*) FROM dead_letter") == 1)
    with psycopg.connect(url) as conn:
        payload, size, sha = conn.execute("SELECT payload, payload_size, payload_sha256 FROM dead_letter"
                                          ).fetchone()  # type: ignore[misc]
    assert len(payload) == DEAD_LETTER_HEAD and bytes(payload) == big[:DEAD_LETTER_HEAD]
    assert size == len(big) and bytes(sha) == hashlib.sha256(big).digest()
    assert _dead_letter_sample("lineguard_dead_letters_truncated_total") == truncated_before + 1
    # 4 KiB heads against a 40 kB quota: the first few are stored, the rest counted and acknowledged.
    for i in range(20):
        pub.send(f"{base}/bad{i}/telemetry", bytes([i]) * 5000)
    pub.send(f"{base}/press/telemetry", json.dumps({"ts": T, "metrics": {"a": 1}}))
    pub.flush()
    assert wait_for(lambda: count(url, "SELECT count(*) FROM telemetry WHERE line = 'LQ'") == 1)
    assert wait_for(lambda: w.stats.messages >= 22)
    stored = count(url, "SELECT count(*) FROM dead_letter")
    assert 5 <= stored <= 10
    assert count(url, "SELECT sum(octet_length(payload)) FROM dead_letter") <= 40_000
    dropped = _dead_letter_sample("lineguard_dead_letters_dropped_total", {"reason": "quota"}) - dropped_before
    assert dropped == 21 - stored == w.writer.dead_letters_dropped
    assert _dead_letter_sample("lineguard_dead_letter_bytes") > 30_000
    assert alive(harness) and threading.active_count() > 1


def test_inspection_frame_saved_is_stored_and_a_frame_path_is_refused(harness: IngestHarness, pub: Pub) -> None:
    harness.start()
    topic = f"{harness.prefix}/s1/LF/inspection/inspection"
    base = {"ts": T, "site": "s1", "line": "LF", "camera": "top", "part_id": "p", "decision": "pass"}
    pub.send(topic, json.dumps({**base, "inspection_id": "kept", "frame_saved": True}))
    pub.send(topic, json.dumps({**base, "inspection_id": "pathy", "frame_path": "/etc/passwd"}))
    pub.flush()
    url = harness.db_url
    assert wait_for(lambda: count(url, "SELECT count(*) FROM dead_letter") == 1)
    assert wait_for(lambda: count(url, "SELECT count(*) FROM inspections WHERE line = 'LF'") == 1)
    assert count(url, "SELECT count(*) FROM inspections WHERE inspection_id = 'kept' AND frame_saved"
                      " AND frame_path IS NULL") == 1
    with psycopg.connect(url) as conn:
        (reason,) = conn.execute("SELECT reason FROM dead_letter").fetchone()  # type: ignore[misc]
    assert reason.startswith("frame_path: not accepted")


def test_spool_keeps_message_identities(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    ref = dead_letter("sparkplug", "spBv1.0/G/NDATA/n", "", b"x" * 10_000)
    part = Batch(telemetry=[TelemetryRow(T, "", "G", "n", "", "m", 1.0)])
    path = spool.append(part, [(ref, part)])
    ((got_ref, got),) = spool.read(path)
    assert got_ref == ref and len(ref.payload) == DEAD_LETTER_HEAD and ref.size == 10_000
    assert got.telemetry == part.telemetry
