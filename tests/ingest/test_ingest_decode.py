"""Decoders: good payloads -> rows; every malformed one -> exactly one dead letter with a reason; never raise."""

from __future__ import annotations

import hashlib
import json

import pysparkplug as spb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from line_agent.ingest.decode_json import decode_json
from line_agent.ingest.rows import DEAD_LETTER_HEAD, Batch
from line_agent.ingest.sparkplug import SparkplugDecoder

T = 1_790_000_000.0
TOPIC = "lineguard/s1/L1/press/telemetry"


def dec(topic: str, payload: bytes | str) -> Batch:
    b = Batch()
    decode_json(topic, payload.encode() if isinstance(payload, str) else payload, b)
    return b


def test_telemetry_single_and_list() -> None:
    b = dec(TOPIC, json.dumps({"ts": T, "device": "m1", "metrics": {"power_w": 1500, "running": True}}))
    assert [(r.line, r.cell, r.device, r.metric, r.value) for r in b.telemetry] == [
        ("L1", "press", "m1", "power_w", 1500.0), ("L1", "press", "m1", "running", 1.0)]
    iso = "2026-09-21T10:00:00+00:00"
    b = dec(TOPIC, json.dumps([{"ts": T, "metrics": {"a": 1}}, {"ts": iso, "metrics": {"a": 2}}]))
    assert [r.device for r in b.telemetry] == ["press", "press"]  # device defaults to the cell
    assert b.telemetry[1].ts == 1_789_984_800.0  # ISO 8601 with a zone -> epoch seconds
    assert not b.dead


def test_event_and_inspection() -> None:
    """Through the contract models: the same definition the runtime publishes with."""
    b = dec("lineguard/s1/L1/press/event",
            json.dumps({"event_id": "e1", "ts": T, "code": "TWF", "duration_s": 30, "extra": {"a": [1]}}))
    (e,) = b.events
    assert (e.event_id, e.kind, e.code, e.device, e.duration_s, e.payload) == ("e1", "fault", "TWF", "press", 30.0,
                                                                              {"extra": {"a": [1]}})
    b = dec("lineguard/s1/L1/cam/inspection", json.dumps({
        "inspection_id": "i1", "ts": T, "camera": "top", "part_id": "p1", "decision": "reject",
        "defects": [{"cls": "short", "confidence": 0.9, "box": [1, 2, 3, 4]}], "latency_ms": 12.5, "model": "m",
    }))
    (i,) = b.inspections
    assert (i.inspection_id, i.camera, i.decision, len(i.defects), i.defects[0].cls) == ("i1", "top", "reject", 1,
                                                                                         "short")
    assert (i.site, i.line, i.frame_saved) == ("s1", "L1", False)  # site and line from the topic


def test_inspection_built_by_the_runtime_is_what_ingest_takes() -> None:
    """The runtime publishes ``Inspection(...).model_dump_json()``: ingest stores exactly that."""
    from line_agent.contracts import Defect, Inspection, TruthLabel, Verdict

    ins = Inspection(inspection_id="9f1c2d", ts=T, site="s1", line="L1", camera="top", part_id="top-1",
                     decision=Verdict.REWORK, defects=[Defect(cls="spur", confidence=0.5, box=(1.0, 2.0, 3.0, 4.0))],
                     latency_ms=12.5, model="m", frame_saved=True,
                     truth=[TruthLabel(cls="spur", box=(1.0, 2.0, 3.0, 4.0))])
    b = dec("lineguard/s1/L1/inspection/inspection", ins.model_dump_json())
    assert not b.dead
    (i,) = b.inspections
    assert (i.inspection_id, i.camera, i.decision, i.frame_saved, i.latency_ms) == ("9f1c2d", "top", "rework", True,
                                                                                    12.5)
    assert i.defects == ((0, "spur", 0.5, 1.0, 2.0, 3.0, 4.0),)
    assert i.truth == [{"cls": "spur", "box": [1.0, 2.0, 3.0, 4.0]}]


def test_event_without_id_gets_a_stable_one() -> None:
    payload = json.dumps({"ts": T, "code": "HDF"})
    a, b = dec("lineguard/s1/L1/press/event", payload), dec("lineguard/s1/L1/press/event", payload)
    assert a.events[0].event_id == b.events[0].event_id


BAD = [  # (topic, payload, the reason's text: it names the field and the rule)
    (TOPIC, b"{not json", "invalid JSON: Expecting property name"),
    (TOPIC, b'{"ts": 1790000000, "metrics": {"a": NaN}}', "non-finite number NaN"),
    (TOPIC, b'{"ts": 1790000000, "metrics": {"a": Infinity}}', "non-finite number Infinity"),
    (TOPIC, b'{"ts": 1790000000, "metrics": {"a": 1e400}}', "point 0 metrics.a: Input should be a finite number"),
    (TOPIC, b'{"ts": 1790000000, "metrics": {"a": "12"}}', "point 0 metrics.a: Input should be a valid number"),
    (TOPIC, b'{"ts": 1790000000, "metrics": [1, 2]}', "point 0 metrics: Input should be a valid dictionary"),
    (TOPIC, b'{"ts": 1790000000, "metrics": {}}', "point 0 metrics: Dictionary should have at least 1 item"),
    (TOPIC, b'[]', "no points"),
    (TOPIC, b'{"ts": 1790000000000, "metrics": {"a": 1}}', "point 0 ts: 1790000000000.0 is not epoch seconds"),
    (TOPIC, b'[{"ts": 1790000000, "metrics": {"a": 1}}, {"ts": 0, "metrics": {"a": 1}}]', "point 1 ts: 0.0 is not"),
    (TOPIC, b'{"ts": "2026-09-21T10:00:00", "metrics": {"a": 1}}', "point 0 ts: ISO time without a zone"),
    (TOPIC, b'{"ts": true, "metrics": {"a": 1}}', "point 0 ts: expected epoch seconds or an ISO 8601 time"),
    (TOPIC, b'{"metrics": {"a": 1}}', "point 0 ts: Field required"),
    (TOPIC, b'{"ts": 1790000000, "metrics": {"a": 1}, "unit": "W"}', "point 0 unit: not a field of this message"),
    (TOPIC, b'{"ts": 1790000000, "metrics": {"a": 1}}\xff\xfe', "not UTF-8"),
    (TOPIC, json.dumps({"ts": T, "metrics": {"x" * 10_000: 1}}).encode(), "key: String should have at most 200"),
    (TOPIC, b'{"ts": 1790000000, "device": "\\ud800", "metrics": {"a": 1}}', "point 0 device: not valid Unicode"),
    (TOPIC, b'{"ts": 1790000000, "device": "a\\u0000b", "metrics": {"a": 1}}', "point 0 device: contains a NUL"),
    (TOPIC, b'{"ts": 1790000000, "metrics": {"\\ud800": 1}}', "not valid Unicode"),
    ("lineguard/s1/L1/press/bogus", b"{}", "topic kind"),
    ("lineguard/L1/telemetry", b"{}", "expected <prefix>"),
    ("lineguard/s1/L1/cam/inspection", b'{"inspection_id": "i", "ts": 1790000000, "part_id": "p", "decision": "ok"}',
     "decision: Input should be 'pass', 'rework' or 'reject'"),
    ("lineguard/s1/L1/cam/inspection", b'{"ts": 1790000000, "part_id": "p", "decision": "pass"}',
     "inspection_id: Field required"),
    ("lineguard/s1/L1/cam/inspection",
     b'{"inspection_id": "../x", "ts": 1790000000, "part_id": "p", "decision": "pass"}',
     "inspection_id: use letters, digits"),
    ("lineguard/s1/L1/cam/inspection", b'{"inspection_id": "i", "ts": 1790000000, "part_id": "p", "decision": "pass",'
     b' "camera": "../etc"}', "camera: use letters, digits"),
    ("lineguard/s1/L1/cam/inspection", b'{"inspection_id": "i", "ts": 1790000000, "part_id": "p", "decision": "pass",'
     b' "defects": [{"cls": "short", "confidence": 1.5, "box": [1, 2, 3, 4]}]}',
     "defects[0].confidence: Input should be less than or equal to 1"),
    ("lineguard/s1/L1/cam/inspection", b'{"inspection_id": "i", "ts": 1790000000, "part_id": "p", "decision": "pass",'
     b' "defects": [{"cls": "short", "confidence": 0.5, "box": [1, 2, 3]}]}', "defects[0].box[3]: Field required"),
    # The retired frame path: an extra field, refused with the reason (frames are found by inspection id).
    ("lineguard/s1/L1/cam/inspection", b'{"inspection_id": "i", "ts": 1790000000, "part_id": "p", "decision": "pass",'
     b' "frame_path": "/etc/passwd"}', "frame_path: not accepted: frames are found by line, camera and inspection_id"),
    ("lineguard/s1/L1/press/event", b'{"ts": 1790000000, "severity": "high"}', "severity: Input should be a valid int"),
    ("lineguard/s1/L1/press/event", b'{"ts": 1790000000, "severity": true}', "severity: Input should be a valid int"),
    ("lineguard/s1/L1/press/event", b'{"ts": 1790000000, "note": "\\u0000"}', "event payload.note: contains a NUL"),
    ("lineguard/s1/L1/press/event", b'{"ts": 1790000000, "note": {"\\ud800": 1}}', "event payload.note key: not valid"),
    ("lineguard/s1/L1/press/event", b'{"ts": 1790000000, "n": 100000000000000000000}', "integer out of range"),
    ("lineguard/s1/L1/press/event", b'{"code": "TWF"}', "ts: Field required"),
]


@pytest.mark.parametrize(("topic", "payload", "reason"), BAD)
def test_malformed_json_is_dead_lettered_with_reason(topic: str, payload: bytes, reason: str) -> None:
    b = dec(topic, payload)
    assert not b.telemetry and not b.events and not b.inspections
    (d,) = b.dead
    assert reason in d.reason
    # The head of the payload, its size and SHA-256 (docs/MQTT.md "Validation and dead letters").
    assert d.payload == payload[:DEAD_LETTER_HEAD] and d.size == len(payload)
    assert d.sha256 == hashlib.sha256(payload).digest() and d.truncated == (len(payload) > DEAD_LETTER_HEAD)


def test_a_bad_point_rejects_its_whole_message_only() -> None:
    b = Batch()
    decode_json(TOPIC, json.dumps([{"ts": T, "metrics": {"a": 1}}, {"ts": T, "metrics": {"b": "x"}}]).encode(), b)
    decode_json(TOPIC, json.dumps({"ts": T, "metrics": {"c": 3}}).encode(), b)
    assert [r.metric for r in b.telemetry] == ["c"] and len(b.dead) == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["telemetry", "event", "inspection"]), obj=json_values, raw=st.binary(max_size=200),
       cut=st.integers(min_value=0, max_value=300), use_raw=st.booleans())
def test_fuzz_json_never_raises_and_accounts_for_every_message(kind: str, obj: object, raw: bytes, cut: int,
                                                               use_raw: bool) -> None:
    payload = raw if use_raw else json.dumps(obj).encode("utf-8", "surrogatepass")[:cut]
    b = Batch()
    decode_json(f"lineguard/s/L/c/{kind}", payload, b)
    stored = len(b.telemetry) + len(b.events) + len(b.inspections)
    assert (len(b.dead) == 1 and stored == 0) or (not b.dead and stored >= 1)
    for d in b.dead:
        assert d.reason and d.payload == payload


# ---- Sparkplug B ---------------------------------------------------------------------------------
MS = 1_790_000_000_000


def nbirth(seq: int = 0, bd: int = 3) -> bytes:
    return spb.NBirth(timestamp=MS, seq=seq, metrics=(
        spb.Metric(timestamp=MS, name="bdSeq", datatype=spb.DataType.INT64, value=bd),
        spb.Metric(timestamp=MS, name="temp", alias=1, datatype=spb.DataType.DOUBLE, value=20.0),
    )).encode(include_dtypes=True)


def dbirth(seq: int) -> bytes:
    return spb.DBirth(timestamp=MS, seq=seq, metrics=(
        spb.Metric(timestamp=MS, name="power_w", alias=7, datatype=spb.DataType.DOUBLE, value=100.0),
        spb.Metric(timestamp=MS, name="Faults/TWF", alias=8, datatype=spb.DataType.STRING, value=""),
    )).encode(include_dtypes=True)


def ddata(seq: int, value: float, alias: int = 7, ms: int = MS + 1000) -> bytes:
    return spb.DData(timestamp=ms, seq=seq, metrics=(
        spb.Metric(timestamp=ms, name=None, alias=alias, datatype=spb.DataType.DOUBLE, value=value),
    )).encode()


def test_sparkplug_births_aliases_seq_and_death() -> None:
    asked: list[tuple[str, str]] = []
    d = SparkplugDecoder(request_rebirth=lambda g, n: asked.append((g, n)), rebirth_holdoff_s=0)
    b = Batch()
    d.decode("spBv1.0/L1/NBIRTH/cell", nbirth(0), b)
    d.decode("spBv1.0/L1/DBIRTH/cell/m1", dbirth(1), b)
    d.decode("spBv1.0/L1/DDATA/cell/m1", ddata(2, 150.0), b)
    fault = spb.DData(timestamp=MS + 2000, seq=3, metrics=(
        spb.Metric(timestamp=MS + 2000, name=None, alias=8, datatype=spb.DataType.STRING, value="f-1"),)).encode()
    d.decode("spBv1.0/L1/DDATA/cell/m1", fault, b)
    assert not b.dead and not asked
    assert [(r.device, r.metric, r.value) for r in b.telemetry] == [
        ("", "temp", 20.0), ("m1", "power_w", 100.0), ("m1", "power_w", 150.0)]
    assert [(e.event_id, e.kind, e.code) for e in b.events] == [("f-1", "fault", "TWF")]
    assert not d.is_stale("L1", "cell", "m1")
    # seq 255 wraps to 0: no gap; a jump is a gap -> rebirth request, data still stored
    d.nodes[("L1", "cell")].next_seq = 255
    d.decode("spBv1.0/L1/DDATA/cell/m1", ddata(255, 1.0), b)
    d.decode("spBv1.0/L1/DDATA/cell/m1", ddata(0, 2.0), b)
    assert not asked
    d.decode("spBv1.0/L1/DDATA/cell/m1", ddata(5, 3.0), b)
    assert asked == [("L1", "cell")] and b.telemetry[-1].value == 3.0
    # an NDEATH of an older session (bdSeq mismatch) is ignored; the current one marks metrics stale
    old = spb.NDeath(timestamp=MS, bd_seq_metric=spb.Metric(timestamp=MS, name="bdSeq", datatype=spb.DataType.INT64,
                                                            value=2)).encode()
    d.decode("spBv1.0/L1/NDEATH/cell", old, b)
    assert not d.is_stale("L1", "cell")
    cur = spb.NDeath(timestamp=MS, bd_seq_metric=spb.Metric(timestamp=MS, name="bdSeq", datatype=spb.DataType.INT64,
                                                            value=3)).encode()
    d.decode("spBv1.0/L1/NDEATH/cell", cur, b)
    assert d.is_stale("L1", "cell") and d.is_stale("L1", "cell", "m1")
    assert b.events[-1].code == "NDEATH" and b.events[-1].payload == {"stale": True}


def test_sparkplug_unknown_alias_requests_rebirth_and_dead_letters() -> None:
    asked: list[tuple[str, str]] = []
    d = SparkplugDecoder(request_rebirth=lambda g, n: asked.append((g, n)), rebirth_holdoff_s=0)
    b = Batch()
    d.decode("spBv1.0/L1/DDATA/cell/m1", ddata(4, 1.0), b)  # no birth seen
    assert asked == [("L1", "cell")] and len(b.dead) == 1 and "rebirth requested" in b.dead[0].reason
    d.decode("spBv1.0/L1/NBIRTH/cell", nbirth(0), b)
    d.decode("spBv1.0/L1/DBIRTH/cell/m1", dbirth(1), b)
    d.decode("spBv1.0/L1/DDATA/cell/m1", ddata(2, 1.0, alias=99), b)
    assert len(asked) == 2 and len(b.dead) == 2


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(min_value=0, max_value=200), junk=st.binary(max_size=64), which=st.integers(0, 3),
       use_junk=st.booleans())
def test_fuzz_sparkplug_never_raises(cut: int, junk: bytes, which: int, use_junk: bool) -> None:
    d = SparkplugDecoder(rebirth_holdoff_s=0)
    b = Batch()
    d.decode("spBv1.0/L1/NBIRTH/cell", nbirth(0), b)
    d.decode("spBv1.0/L1/DBIRTH/cell/m1", dbirth(1), b)
    good = [nbirth(0), dbirth(1), ddata(2, 5.0), ddata(2, float("nan"))][which]
    payload = junk if use_junk else good[:cut]
    topic = ["spBv1.0/L1/NBIRTH/cell", "spBv1.0/L1/DBIRTH/cell/m1", "spBv1.0/L1/DDATA/cell/m1",
             "spBv1.0/L1/DDATA/cell/m1"][which]
    before = len(b.telemetry) + len(b.events)
    b2 = Batch()
    d.decode(topic, payload, b2)
    assert before > 0
    assert all(d_.reason for d_ in b2.dead) and len(b2.dead) <= 1


def test_sparkplug_nan_is_dead_lettered() -> None:
    d = SparkplugDecoder(rebirth_holdoff_s=0)
    b = Batch()
    d.decode("spBv1.0/L1/NBIRTH/cell", nbirth(0), b)
    d.decode("spBv1.0/L1/DBIRTH/cell/m1", dbirth(1), b)
    n = len(b.telemetry)
    d.decode("spBv1.0/L1/DDATA/cell/m1", ddata(2, float("nan")), b)
    assert len(b.telemetry) == n and "non-finite" in b.dead[-1].reason


def test_outbound_agent_messages_are_neither_stored_nor_dead_lettered() -> None:
    from line_agent.ingest.decode_json import decode_json
    from line_agent.ingest.rows import Batch

    b = Batch()
    decode_json("lineguard/plant1/L1/agent/summary", b'{"headline": "ok"}', b)
    decode_json("lineguard/plant1/L1/agent/alert", b"not even json", b)
    assert len(b) == 0


# ---- Sparkplug: hostile timestamps and DateTime metrics -----------------------------------------
def birth_with(metric: spb.Metric, ms: int | None = MS) -> bytes:
    return spb.NBirth(timestamp=ms, seq=0, metrics=(
        spb.Metric(timestamp=MS, name="bdSeq", datatype=spb.DataType.INT64, value=1),
        spb.Metric(timestamp=MS, name="temp", datatype=spb.DataType.DOUBLE, value=20.0),
        metric,
    )).encode(include_dtypes=True)


@pytest.mark.parametrize(("ms", "what"), [
    (2**63, "past year 9999 (OverflowError in the writer before)"),
    (253_402_300_800_000, "year 10000"),
    (32_503_680_000_000, "year 3000"),
    (1_000, "1970"),
    (0, "the epoch itself"),
])
def test_sparkplug_metric_timestamp_out_of_range_is_dead_lettered(ms: int, what: str) -> None:
    d = SparkplugDecoder(rebirth_holdoff_s=0)
    b = Batch()
    d.decode("spBv1.0/L1/NBIRTH/cell", birth_with(spb.Metric(timestamp=ms, name="power_w",
                                                             datatype=spb.DataType.DOUBLE, value=1.0)), b)
    assert not b.telemetry and not b.events, what
    (dl,) = b.dead
    assert dl.source == "sparkplug" and "metric 'power_w' timestamp" in dl.reason
    assert "between 2000 and 2100" in dl.reason


def test_sparkplug_payload_timestamp_is_range_checked_too() -> None:
    d = SparkplugDecoder(rebirth_holdoff_s=0)
    b = Batch()
    no_ts = spb.Metric(timestamp=None, name="power_w", datatype=spb.DataType.DOUBLE, value=1.0)  # type: ignore[arg-type]
    d.decode("spBv1.0/L1/NBIRTH/cell", birth_with(no_ts, ms=2**64 - 1), b)
    (dl,) = b.dead
    assert "payload timestamp" in dl.reason


def test_sparkplug_datetime_metric_is_stored_as_epoch_seconds_with_the_others() -> None:
    from datetime import UTC, datetime

    when = datetime(2026, 3, 1, 6, 30, tzinfo=UTC)
    d = SparkplugDecoder(rebirth_holdoff_s=0)
    b = Batch()
    d.decode("spBv1.0/L1/NBIRTH/cell", birth_with(spb.Metric(timestamp=MS, name="last_service",
                                                             datatype=spb.DataType.DATETIME, value=when)), b)
    assert not b.dead
    assert {r.metric: r.value for r in b.telemetry} == {"temp": 20.0, "last_service": when.timestamp()}
