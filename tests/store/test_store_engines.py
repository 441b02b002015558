"""The store on both engines: layout (partitions/BRIN vs hypertable/compression/retention/caggs), the writer's
COPY and INSERT paths, and the query API giving the same answers on plain PostgreSQL and TimescaleDB."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from line_agent.ingest.rows import Batch, DeadLetter, DefectRow, EventRow, InspectionRow, TelemetryRow
from line_agent.ingest.writer import BatchWriter
from line_agent.store import queries as q
from line_agent.store.timeseries import apply_retention, compress_old, is_timescale, refresh_rollups

# A hung wire-protocol server must fail a test quickly, not after the global 300 s.
pytestmark = pytest.mark.timeout(120)

T0 = datetime(2026, 9, 21, 8, 0, tzinfo=UTC)
T0S = T0.timestamp()


def dataset(line: str) -> Batch:
    """Two hours of a press: 3,600 W sampled every 10 s, a kWh counter with one reset, 100 inspected parts,
    faults with downtime. Every expected answer below follows from these numbers by hand."""
    b = Batch()
    for k in range(720):
        ts = T0S + 10 * k
        b.telemetry.append(TelemetryRow(ts, "s1", line, "press", "press1", "power_w", 3600.0))
        # counter: +0.01 kWh per 10 s, reset to 0 at k = 500 (then 0.01, 0.02, ...)
        kwh = 0.01 * k if k < 500 else 0.01 * (k - 500)
        b.telemetry.append(TelemetryRow(ts, "s1", line, "press", "press1", "energy_kwh", round(kwh, 6)))
        b.telemetry.append(TelemetryRow(ts, "s1", line, "press", "press2", "power_w", 1800.0 + (k % 2) * 200))
    for i in range(100):
        ts = T0S + 60 * i + 5
        defects: tuple[DefectRow, ...] = ()
        if i % 10 == 0:
            defects = (DefectRow(0, "short", 0.9, 1, 2, 3, 4), DefectRow(1, "short", 0.8, 5, 6, 7, 8))
        elif i % 10 == 1:
            defects = (DefectRow(0, "open", 0.7, 1, 2, 3, 4),)
        b.inspections.append(InspectionRow(f"{line}-i{i}", ts, "s1", line, "top", f"p{i}",
                                           "reject" if defects else "pass", 4.2, "m", i % 2 == 0, None, defects))
    for i, (dev, code, dur) in enumerate([("press1", "TWF", 30.0), ("press1", "TWF", 45.0), ("press2", "HDF", 120.0),
                                          ("press1", "OSF", None)]):
        b.events.append(EventRow(f"{line}-e{i}", T0S + 600 * i + 1, "s1", line, "press", dev, "fault", code, 2,
                                 dur, {"n": i}))
    b.dead.append(DeadLetter("mqtt", f"lineguard/s1/{line}/x/telemetry", "test", b"\xff\x00"))
    return b


def answers(url: str, line: str) -> dict[str, Any]:
    """Every query of the API over the dataset's window, as plain data."""
    end = T0 + timedelta(hours=2)
    with psycopg.connect(url) as conn:
        out = {
            "energy_power": q.energy(conn, line, T0, end, 3600, metric="power_w", source="power"),
            "energy_counter": q.energy(conn, line, T0, end, 3600, metric="energy_kwh", source="counter"),
            "energy_1dev_15min": q.energy(conn, line, T0, T0 + timedelta(hours=1), 900, device="press1"),
            "per_part": q.energy_per_part(conn, line, T0, end),
            "faults": q.fault_counts(conn, line, T0, end),
            "faults_by_code": q.fault_counts_by_code(conn, line, T0, end),
            "defects": q.defect_rates(conn, line, T0, end),
            "series_raw": q.telemetry_series(conn, line, "power_w", T0, T0 + timedelta(minutes=2), device="press2"),
            "series_1m": q.telemetry_series(conn, line, "power_w", T0, T0 + timedelta(minutes=5), device="press2",
                                            resolution="1m"),
            "series_1h": q.telemetry_series(conn, line, "power_w", T0, end, resolution="1h"),
        }
    return _rounded(out)


def _rounded(v: Any) -> Any:
    """Floats to 9 significant places: the engines may sum in another order."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {k: _rounded(x) for k, x in dataclasses.asdict(v).items()}
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_rounded(x) for x in v]
    if isinstance(v, float):
        return float(f"{v:.9g}")
    return v


def load(url: str, line: str) -> None:
    w = BatchWriter(url)
    try:
        w.write(dataset(line))
        w.write(dataset(line))  # written twice: stored once
    finally:
        w.close()
    refresh_rollups(url, T0S - 3600, T0S + 3 * 3600)


def check_expected(a: dict[str, Any]) -> None:
    # power: 3,600 W for 10 s per sample; the window's last sample counts for one meter period (line_agent/energy)
    e = {(x["start"].hour, x["device"]): x["kwh"] for x in a["energy_power"]}
    assert e[(8, "press1")] == pytest.approx(3.6) and e[(9, "press1")] == pytest.approx(3.6)
    # press2 alternates 1,800 / 2,000 W: each hour = 180 x 18 kJ + 180 x 20 kJ = 1.9 kWh
    assert e[(8, "press2")] == pytest.approx(1.9) and e[(9, "press2")] == pytest.approx(1.9)
    c = {x["start"].hour: x["kwh"] for x in a["energy_counter"]}
    # 719 increments of 0.01 minus none lost at the reset (the reset step counts as its own value, 0.0)
    assert c[8] + c[9] == pytest.approx(0.01 * 718)
    assert [x["kwh"] for x in a["energy_1dev_15min"]] == pytest.approx([0.9] * 4)
    p = a["per_part"]
    # By the contract: press1's counter (7.18 kWh: the increment across the reset is unknown), never added to
    # its power; press2 has power only.
    assert p["parts"] == 100 and p["kwh"] == pytest.approx(0.01 * 718 + 1.9 + 1.9)
    assert p["kwh_per_part"] == pytest.approx(p["kwh"] / 100)
    assert a["faults_by_code"] == {"TWF": 2, "HDF": 1, "OSF": 1}
    assert {(f["device"], f["code"]): (f["count"], f["downtime_s"]) for f in a["faults"]} == {
        ("press1", "TWF"): (2, 75.0), ("press2", "HDF"): (1, 120.0), ("press1", "OSF"): (1, 0.0)}
    d = a["defects"]
    assert (d["parts"], d["rejected"], d["reject_rate"]) == (100, 20, 0.2)
    assert {x["cls"]: (x["defects"], x["parts_with"], x["rate"]) for x in d["by_class"]} == {
        "short": (20, 10, 0.1), "open": (10, 10, 0.1)}
    assert [x["avg"] for x in a["series_raw"]] == [1800.0, 2000.0] * 6
    assert [(x["n"], x["avg"], x["min"], x["max"]) for x in a["series_1m"]] == [(6, 1900.0, 1800.0, 2000.0)] * 5
    assert [(x["device"], x["n"]) for x in a["series_1h"]] == [("press1", 360), ("press2", 360)] * 2


def test_same_answers_on_both_engines(plain_url: str, timescale_url: str) -> None:
    load(plain_url, "Q1")
    load(timescale_url, "Q1")
    a_plain, a_ts = answers(plain_url, "Q1"), answers(timescale_url, "Q1")
    check_expected(a_plain)
    assert a_plain == a_ts


def test_each_engine_alone(engine_url: str) -> None:
    line = f"Q{abs(hash(engine_url)) % 100000}"
    load(engine_url, line)
    check_expected(answers(engine_url, line))
    with psycopg.connect(engine_url) as conn:
        assert conn.execute("SELECT count(*) FROM dead_letter WHERE topic LIKE %s",
                            (f"%/{line}/%",)).fetchone() == (1,)  # re-written twice, stored once


def test_plain_layout_partitions_brin_retention(plain_url: str) -> None:
    with psycopg.connect(plain_url) as conn:
        assert not is_timescale(conn)
        assert conn.execute("SELECT relkind FROM pg_class WHERE relname = 'telemetry'").fetchone() == ("p",)
        brin = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE indexdef ILIKE '%USING brin%'")}
        assert {"telemetry_ts_brin", "events_ts_brin", "inspections_ts_brin"} <= brin
    old = datetime.now(UTC) - timedelta(days=100)
    w = BatchWriter(plain_url)
    w.write(Batch(telemetry=[TelemetryRow(old.timestamp(), "", "R", "", "d", "m", 1.0),
                             TelemetryRow(T0S, "", "R", "", "d", "m", 2.0)]))
    w.close()
    with psycopg.connect(plain_url) as conn:
        parts = {r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'telemetry'::regclass")}
        assert f"telemetry_{old:%Y%m%d}" in parts and "telemetry_20260921" in parts  # a partition per day
        # rows routed to the day partitions, not the default one
        assert conn.execute("SELECT count(*) FROM telemetry_default").fetchone() == (0,)
    assert apply_retention(plain_url, timedelta(days=80)) >= 1
    with psycopg.connect(plain_url) as conn:
        assert conn.execute("SELECT count(*) FROM telemetry WHERE line = 'R'").fetchone() == (1,)


def test_rows_in_the_default_partition_move_to_their_day(plain_url: str) -> None:
    with psycopg.connect(plain_url) as conn:
        # Someone COPYs straight into telemetry (as the agent's scenarios do) before the day has a partition.
        conn.execute("INSERT INTO telemetry (ts, line, metric, value) VALUES ('2026-01-02 03:00Z', 'D', 'm', 1)")
        conn.execute("SELECT lg_ensure_day_partition('2026-01-02')")
        assert conn.execute("SELECT tableoid::regclass::text FROM telemetry WHERE line = 'D'").fetchone() == (
            "telemetry_20260102",)


def test_timescale_layout_policies_compression_retention(timescale_url: str) -> None:
    with psycopg.connect(timescale_url) as conn:
        assert is_timescale(conn)
        assert conn.execute("SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables"
                            ).fetchall() == [("telemetry", True)]
        caggs = {r[0] for r in conn.execute("SELECT view_name FROM timescaledb_information.continuous_aggregates")}
        assert caggs == {"telemetry_1m", "telemetry_1h"}
        procs = {r[0] for r in conn.execute("SELECT proc_name FROM timescaledb_information.jobs")}
        assert {"policy_compression", "policy_retention", "policy_refresh_continuous_aggregate"} <= procs
    # compression then retention on data of its own (a line no other test uses)
    old = datetime.now(UTC) - timedelta(days=500)
    w = BatchWriter(timescale_url)
    assert w.use_copy is None
    w.write(Batch(telemetry=[TelemetryRow(old.timestamp() + i, "", "Z", "", "d", "m", float(i)) for i in range(50)]
                  + [TelemetryRow(T0S + i, "", "Z", "", "d", "m", float(i)) for i in range(50)]))
    assert w.use_copy is False  # PGlite: no COPY FROM STDIN, multi-row INSERT instead
    w.close()
    assert compress_old(timescale_url, timedelta(days=30)) >= 1
    with psycopg.connect(timescale_url) as conn:
        compressed = conn.execute("SELECT count(*) FROM timescaledb_information.chunks WHERE is_compressed").fetchone()
        assert compressed is not None and compressed[0] >= 1
        assert conn.execute("SELECT count(*), sum(value) FROM telemetry WHERE line = 'Z'").fetchone() == (100, 2450.0)
    # late, re-delivered data into a compressed chunk is still de-duplicated
    w = BatchWriter(timescale_url)
    w.write(Batch(telemetry=[TelemetryRow(old.timestamp() + i, "", "Z", "", "d", "m", float(i)) for i in range(50)]))
    w.close()
    assert apply_retention(timescale_url, timedelta(days=400)) >= 1
    with psycopg.connect(timescale_url) as conn:
        assert conn.execute("SELECT count(*) FROM telemetry WHERE line = 'Z'").fetchone() == (50,)


def test_copy_path_on_postgres(plain_url: str) -> None:
    w = BatchWriter(plain_url)
    rows = [TelemetryRow(T0S + i, "", "C", "", "d", f"m{i % 3}", float(i)) for i in range(3000)]
    w.write(Batch(telemetry=rows))
    assert w.use_copy is True and (w.copy_direct, w.copy_staged) == (1, 0)
    w.write(Batch(telemetry=[*rows[1000:], TelemetryRow(T0S + 5000, "", "C", "", "d", "m0", 1.0)]))
    assert (w.copy_direct, w.copy_staged) == (1, 1)  # a re-delivery goes through staging + ON CONFLICT
    w.close()
    with psycopg.connect(plain_url) as conn:
        assert conn.execute("SELECT count(*) FROM telemetry WHERE line = 'C'").fetchone() == (3001,)


def test_telemetry_key_includes_the_cell(engine_url: str) -> None:
    """Two cells (Sparkplug edge nodes of one group) with the same device, metric and time keep both points."""
    line = f"K{abs(hash(engine_url)) % 100000}"
    rows = [TelemetryRow(T0S, "", line, cell, "", "temp", v) for cell, v in (("press", 40.0), ("oven", 180.0))]
    w = BatchWriter(engine_url)
    try:
        w.write(Batch(telemetry=rows))
        w.write(Batch(telemetry=rows))  # re-delivered: still one row per cell
    finally:
        w.close()
    with psycopg.connect(engine_url) as conn:
        got = sorted(conn.execute("SELECT cell, value FROM telemetry WHERE line = %s", (line,)).fetchall())
    assert got == [("oven", 180.0), ("press", 40.0)]


def test_dead_letters_keep_head_size_and_digest(engine_url: str) -> None:
    from line_agent.ingest.rows import DEAD_LETTER_HEAD, dead_letter

    payload = bytes(range(256)) * 100  # 25,600 bytes
    topic = f"lineguard/s1/DL{abs(hash(engine_url)) % 100000}/x/telemetry"
    w = BatchWriter(engine_url)
    try:
        w.write(Batch(dead=[dead_letter("mqtt", topic, "bad", payload)]))
        w.write(Batch(dead=[dead_letter("mqtt", topic, "bad", payload)]))  # the same message again: one row
    finally:
        w.close()
    with psycopg.connect(engine_url) as conn:
        rows = conn.execute("SELECT payload, payload_size, payload_sha256 FROM dead_letter WHERE topic = %s",
                            (topic,)).fetchall()
    import hashlib

    assert [(bytes(p), n, bytes(h)) for p, n, h in rows] == [
        (payload[:DEAD_LETTER_HEAD], len(payload), hashlib.sha256(payload).digest())]


def _migrate_until(url: str, last: str) -> None:
    """Apply the migrations up to ``last`` (an older schema), as a database made by an older version."""
    import line_agent.store.migrate as m

    everything = m.migration_files
    try:
        m.migration_files = lambda: [f for f in everything() if f[0] <= last]  # type: ignore[assignment]
        m.migrate(url)
    finally:
        m.migration_files = everything  # type: ignore[assignment]


def test_upgrade_keeps_rows_and_moves_the_key_plain(fresh_db: str) -> None:
    from line_agent.store.migrate import migrate

    _migrate_until(fresh_db, "011_ingest.sql")
    with psycopg.connect(fresh_db) as conn:
        conn.execute("SELECT lg_ensure_day_partition('2026-09-21')")
        conn.execute("INSERT INTO telemetry (ts, line, cell, device, metric, value) VALUES"
                     " ('2026-09-21 08:00Z', 'U', 'a', '', 'm', 1), ('2026-09-22 08:00Z', 'U', 'a', '', 'm', 2)")
        conn.execute("INSERT INTO inspections (inspection_id, ts, line, camera, part_id, decision, frame_path)"
                     " VALUES ('old', now(), 'U', 'c', 'p', 'pass', 'frames/old.jpg')")
        conn.execute("INSERT INTO dead_letter (source, topic, reason, payload, digest) VALUES"
                     " ('mqtt', 't', 'r', '\\x0102', '\\x01')")
    assert "013_telemetry_cell_key.plain.sql" in migrate(fresh_db)
    w = BatchWriter(fresh_db)
    try:  # the same point from another cell: a second row now; from the same cell: none
        w.write(Batch(telemetry=[TelemetryRow(datetime(2026, 9, 21, 8, tzinfo=UTC).timestamp(), "", "U", cell, "",
                                              "m", 3.0) for cell in ("a", "b")]))
    finally:
        w.close()
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT cell, value FROM telemetry WHERE line = 'U' ORDER BY ts, cell").fetchall() == [
            ("a", 1.0), ("b", 3.0), ("a", 2.0)]
        assert conn.execute("SELECT frame_path, frame_saved FROM inspections").fetchall() == [("frames/old.jpg",
                                                                                              False)]
        assert conn.execute("SELECT payload_size, length(payload_sha256) FROM dead_letter").fetchall() == [(2, 32)]
        keys = {r[0] for r in conn.execute(
            "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid"
            " WHERE c.contype = 'p' AND t.relname ~ '^telemetry(_default|_[0-9]{8})?$'")}
    assert keys == {"PRIMARY KEY (line, cell, device, metric, ts)"}  # the table and each day partition


def test_upgrade_keeps_rows_and_moves_the_key_timescale() -> None:
    """On a hypertable with a compressed chunk: decompressed, re-keyed, still de-duplicating."""
    from timescale_server import missing_reason, timescale_server

    from line_agent.store.migrate import migrate

    if missing_reason():
        pytest.skip(f"TimescaleDB test server unavailable: {missing_reason()}")
    old = datetime.now(UTC) - timedelta(days=60)
    with timescale_server() as url:
        _migrate_until(url, "011_ingest.sql")
        with psycopg.connect(url, autocommit=True) as conn:
            for i in range(20):
                conn.execute("INSERT INTO telemetry (ts, line, cell, device, metric, value)"
                             " VALUES (%s, 'U', 'a', '', 'm', %s)", (old + timedelta(seconds=i), float(i)),
                             prepare=False)  # PGlite is one session: a prepared name would outlive us
            conn.execute("SELECT compress_chunk(c) FROM show_chunks('telemetry') c")
        assert "013_telemetry_cell_key.timescale.sql" in migrate(url)
        w = BatchWriter(url)
        try:
            w.write(Batch(telemetry=[TelemetryRow(old.timestamp(), "", "U", cell, "", "m", 9.0) for cell in "ab"]))
        finally:
            w.close()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*), count(*) FILTER (WHERE cell = 'b') FROM telemetry WHERE line = 'U'"
                                ).fetchone() == (21, 1)
            assert conn.execute("SELECT value FROM telemetry WHERE line = 'U' AND cell = 'a' AND ts = %s",
                                (old,)).fetchone() == (0.0,)  # the first value stored wins
