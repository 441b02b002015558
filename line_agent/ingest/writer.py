"""Batched, exactly-once writes: binary COPY, with a temp staging table + INSERT ... ON CONFLICT DO NOTHING.

The natural keys (telemetry (line, device, metric, ts), events.event_id, inspections.inspection_id,
dead_letter.digest) make every write idempotent: a batch written twice (broker re-delivery, a spool
replayed after a crash between commit and ack) is stored once. One batch = one transaction.

Telemetry (the volume) first tries one COPY straight into ``telemetry`` inside a savepoint: a batch
with no key already stored (the normal case) is written once. If any key exists (re-delivery), the
savepoint is rolled back and the batch goes COPY -> staging -> INSERT ON CONFLICT DO NOTHING.

Engines without COPY FROM STDIN (the PGlite TimescaleDB test server, detected from version()) get
multi-row INSERT ... ON CONFLICT DO NOTHING instead (or ``use_copy=False``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from line_agent.ingest.rows import Batch, DeadLetter, EventRow, InspectionRow, TelemetryRow

log = logging.getLogger(__name__)

_COLS = "ts, site, line, cell, device, metric, value"
_TYPES = ["timestamptz", "text", "text", "text", "text", "text", "float8"]
_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS lg_stage_telemetry (ts timestamptz, site text, line text, cell text,"
    " device text, metric text, value double precision) ON COMMIT DELETE ROWS"
)
_FROM_STAGE = f"INSERT INTO telemetry ({_COLS}) SELECT {_COLS} FROM lg_stage_telemetry ON CONFLICT DO NOTHING"
_ROWS_PER_INSERT = 1000  # multi-row INSERT on PostgreSQL: 7,000 parameters per statement
# PGlite's socket server drops the connection on large messages (~600 telemetry rows did it): stay small.
_ROWS_PER_INSERT_SMALL = 200


def _values_sql(n_rows: int, row_sql: str) -> str:
    return ",".join([row_sql] * n_rows)


def _chunks(seq: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def digest(d: DeadLetter) -> bytes:
    h = hashlib.sha256()
    for part in (d.source.encode(), d.topic.encode("utf-8", "replace"), d.payload):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


class BatchWriter:
    """Writes ``Batch``es over one connection (reconnecting on demand). Not thread-safe: one per thread."""

    def __init__(self, url: str, *, use_copy: bool | None = None, optimistic: bool = True) -> None:
        self.url = url
        self.use_copy = use_copy  # None: COPY unless the server is PGlite (no COPY FROM STDIN there)
        # Optimistic: COPY straight into telemetry first (one write instead of two); only a batch that
        # hits an existing key (a re-delivery) goes the staging + ON CONFLICT way. Same result.
        self.optimistic = optimistic
        self.copy_direct = 0
        self.copy_staged = 0
        self.conn: psycopg.Connection | None = None
        self.partitioned = False  # plain PostgreSQL with lg_ensure_day_partition()
        self._days: set[date] = set()

    # -- connection -------------------------------------------------------------------------
    def connect(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.close()
            # No server-side prepared statements: PGlite keeps one backend session across client
            # connections, so a second connection's "_pg3_0" would collide with the first one's.
            self.conn = psycopg.connect(self.url, connect_timeout=5, prepare_threshold=None)
            row = self.conn.execute(
                "SELECT count(*) FROM pg_proc WHERE proname = 'lg_ensure_day_partition'"
            ).fetchone()
            self.partitioned = bool(row and row[0])
            if self.use_copy is None:
                ver = self.conn.execute("SELECT version()").fetchone()
                # PGlite (WASM, built with emscripten) has no COPY FROM STDIN: plain INSERTs there.
                self.use_copy = not (ver is not None and "emscripten" in str(ver[0]).lower())
            self.conn.commit()
            self._days.clear()
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection: nothing more to do
                self.conn.close()
            self.conn = None

    @property
    def _small(self) -> int:
        """Rows per multi-row INSERT: large on PostgreSQL, small on PGlite (see _ROWS_PER_INSERT_SMALL)."""
        return _ROWS_PER_INSERT if self.use_copy else _ROWS_PER_INSERT_SMALL

    # -- writing ----------------------------------------------------------------------------
    def write(self, batch: Batch) -> None:
        """Store ``batch`` in one transaction. Raises psycopg errors; the caller decides (spool, bisect)."""
        conn = self.connect()
        try:
            if batch.telemetry:
                # Its own short transaction: the partition's lock is not held across the whole batch.
                with conn.transaction():
                    self._ensure_partitions(conn, batch.telemetry)
            with conn.transaction():
                if batch.telemetry:
                    self._telemetry(conn, batch.telemetry)
                if batch.events:
                    self._events(conn, batch.events)
                if batch.inspections:
                    self._inspections(conn, batch.inspections)
                if batch.dead:
                    self._dead(conn, batch.dead)
        except psycopg.OperationalError:
            self.close()
            raise

    def _ensure_partitions(self, conn: psycopg.Connection, rows: list[TelemetryRow]) -> None:
        if not self.partitioned:
            return
        # Day of each point, cheaply: the batch is mostly one or two days.
        days = {date(1970, 1, 1) + timedelta(days=int(ts // 86400)) for ts in {r.ts // 3600 * 3600 for r in rows}}
        for day in sorted(days - self._days):
            conn.execute("SELECT lg_ensure_day_partition(%s)", (day,))
            self._days.add(day)

    def _telemetry(self, conn: psycopg.Connection, rows: list[TelemetryRow]) -> None:
        # Epoch seconds -> datetime here, once per distinct ts, and the same way on every path: a
        # re-delivered point must map to exactly the same key, to the microsecond.
        stamps: dict[float, datetime] = {}
        out = []
        for r in rows:
            dt = stamps.get(r.ts)
            if dt is None:
                dt = stamps[r.ts] = datetime.fromtimestamp(r.ts, UTC)
            out.append((dt, r.site, r.line, r.cell, r.device, r.metric, r.value))
        if self.use_copy:
            if self.optimistic:
                try:
                    with conn.transaction():  # a savepoint: a duplicate key undoes only this COPY
                        self._copy(conn, "telemetry", out)
                    self.copy_direct += 1
                    return
                except psycopg.errors.UniqueViolation:
                    pass  # some points are stored already: let ON CONFLICT sort them out
            conn.execute(_STAGE)
            self._copy(conn, "lg_stage_telemetry", out)
            conn.execute(_FROM_STAGE)
            self.copy_staged += 1
            return
        row_sql = "(%s,%s,%s,%s,%s,%s,%s)"
        for chunk in _chunks(out, _ROWS_PER_INSERT_SMALL):
            conn.execute(
                f"INSERT INTO telemetry ({_COLS}) VALUES "
                + _values_sql(len(chunk), row_sql) + " ON CONFLICT DO NOTHING",
                [v for r in chunk for v in r],
            )

    @staticmethod
    def _copy(conn: psycopg.Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
        with conn.cursor() as cur, cur.copy(f"COPY {table} ({_COLS}) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(_TYPES)
            for r in rows:
                cp.write_row(r)

    def _events(self, conn: psycopg.Connection, rows: list[EventRow]) -> None:
        row_sql = "(%s,to_timestamp(%s),%s,%s,%s,%s,%s,%s,%s,%s,%s)"
        for chunk in _chunks(rows, self._small // 4):
            params: list[Any] = []
            for r in chunk:
                params.extend((*r[:-1], Jsonb(r.payload)))
            conn.execute(
                "INSERT INTO events (event_id, ts, site, line, cell, device, kind, code, severity, duration_s,"
                " payload) VALUES " + _values_sql(len(chunk), row_sql) + " ON CONFLICT (event_id) DO NOTHING",
                params,
            )

    def _inspections(self, conn: psycopg.Connection, rows: list[InspectionRow]) -> None:
        row_sql = "(%s,to_timestamp(%s),%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
        for chunk in _chunks(rows, self._small // 4):
            params: list[Any] = []
            for r in chunk:
                params.extend((r.inspection_id, r.ts, r.site, r.line, r.camera, r.part_id, r.decision,
                               len(r.defects), r.latency_ms, r.model, r.frame_path,
                               None if r.truth is None else Jsonb(r.truth)))
            conn.execute(
                "INSERT INTO inspections (inspection_id, ts, site, line, camera, part_id, decision, n_defects,"
                " latency_ms, model, frame_path, truth) VALUES " + _values_sql(len(chunk), row_sql)
                + " ON CONFLICT (inspection_id) DO NOTHING",
                params,
            )
        defects = [(r, d) for r in rows for d in r.defects]
        drow = "(%s,%s,to_timestamp(%s),%s,%s,%s,%s,%s,%s,%s,%s)"
        for dchunk in _chunks(defects, self._small // 2):
            dparams: list[Any] = []
            for r, d in dchunk:
                dparams.extend((r.inspection_id, d.idx, r.ts, r.line, r.camera, d.cls, d.confidence,
                                d.x1, d.y1, d.x2, d.y2))
            conn.execute(
                "INSERT INTO defects (inspection_id, idx, ts, line, camera, cls, confidence, x1, y1, x2, y2)"
                " VALUES " + _values_sql(len(dchunk), drow) + " ON CONFLICT DO NOTHING",
                dparams,
            )

    def _dead(self, conn: psycopg.Connection, rows: list[DeadLetter]) -> None:
        for chunk in _chunks(rows, self._small // 8):
            params: list[Any] = []
            for d in chunk:
                params.extend((d.source, d.topic.encode("utf-8", "replace").decode("utf-8")[:1000].replace("\x00", ""),
                               d.reason.replace("\x00", "")[:2000], d.payload, digest(d)))
            conn.execute(
                "INSERT INTO dead_letter (source, topic, reason, payload, digest) VALUES "
                + _values_sql(len(chunk), "(%s,%s,%s,%s,%s)") + " ON CONFLICT (digest) DO NOTHING",
                params,
            )
