"""Batched, exactly-once writes: COPY into a temp staging table, then INSERT ... ON CONFLICT DO NOTHING.

The natural keys (telemetry (line, device, metric, ts), events.event_id, inspections.inspection_id,
dead_letter.digest) make every write idempotent: a batch written twice (broker re-delivery, a spool
replayed after a crash between commit and ack) is stored once. One batch = one transaction.

Engines without COPY FROM STDIN (the PGlite TimescaleDB test server) get multi-row INSERTs instead
(``use_copy=False``, or detected on the first COPY failure).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from line_agent.ingest.rows import Batch, DeadLetter, EventRow, InspectionRow, TelemetryRow

log = logging.getLogger(__name__)

_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS lg_stage_telemetry (ts double precision, site text, line text, cell text,"
    " device text, metric text, value double precision) ON COMMIT DELETE ROWS"
)
_FROM_STAGE = (
    "INSERT INTO telemetry (ts, site, line, cell, device, metric, value)"
    " SELECT to_timestamp(ts), site, line, cell, device, metric, value FROM lg_stage_telemetry"
    " ON CONFLICT DO NOTHING"
)
_ROWS_PER_INSERT = 1000  # multi-row INSERT fallback: 7,000 parameters per statement


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

    def __init__(self, url: str, *, use_copy: bool | None = None) -> None:
        self.url = url
        self.use_copy = use_copy  # None: try COPY, fall back for good if the server refuses it
        self.conn: psycopg.Connection | None = None
        self.partitioned = False  # plain PostgreSQL with lg_ensure_day_partition()
        self._days: set[date] = set()

    # -- connection -------------------------------------------------------------------------
    def connect(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.close()
            self.conn = psycopg.connect(self.url, connect_timeout=5)
            row = self.conn.execute(
                "SELECT count(*) FROM pg_proc WHERE proname = 'lg_ensure_day_partition'"
            ).fetchone()
            self.partitioned = bool(row and row[0])
            self.conn.commit()
            self._days.clear()
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection: nothing more to do
                self.conn.close()
            self.conn = None

    # -- writing ----------------------------------------------------------------------------
    def write(self, batch: Batch) -> None:
        """Store ``batch`` in one transaction. Raises psycopg errors; the caller decides (spool, bisect)."""
        conn = self.connect()
        try:
            with conn.transaction():
                if batch.telemetry:
                    self._ensure_partitions(conn, batch.telemetry)
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
        if self.use_copy is not False:
            try:
                with conn.transaction():  # a savepoint: a refused COPY leaves the batch usable
                    conn.execute(_STAGE)
                    with conn.cursor() as cur, cur.copy(
                        "COPY lg_stage_telemetry (ts, site, line, cell, device, metric, value) FROM STDIN"
                    ) as cp:
                        for r in rows:
                            cp.write_row(r)
                    conn.execute(_FROM_STAGE)
                self.use_copy = True
                return
            except psycopg.errors.FeatureNotSupported:
                if self.use_copy:
                    raise
                log.info("server has no COPY FROM STDIN: using multi-row INSERT")
                self.use_copy = False
        row_sql = "(to_timestamp(%s),%s,%s,%s,%s,%s,%s)"
        for chunk in _chunks(rows, _ROWS_PER_INSERT):
            conn.execute(
                "INSERT INTO telemetry (ts, site, line, cell, device, metric, value) VALUES "
                + _values_sql(len(chunk), row_sql) + " ON CONFLICT DO NOTHING",
                [v for r in chunk for v in r],
            )

    def _events(self, conn: psycopg.Connection, rows: list[EventRow]) -> None:
        row_sql = "(%s,to_timestamp(%s),%s,%s,%s,%s,%s,%s,%s,%s,%s)"
        for chunk in _chunks(rows, _ROWS_PER_INSERT // 2):
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
        for chunk in _chunks(rows, _ROWS_PER_INSERT // 2):
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
        for dchunk in _chunks(defects, _ROWS_PER_INSERT // 2):
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
        for chunk in _chunks(rows, 200):
            params: list[Any] = []
            for d in chunk:
                params.extend((d.source, d.topic.encode("utf-8", "replace").decode("utf-8")[:1000].replace("\x00", ""),
                               d.reason.replace("\x00", "")[:2000], d.payload, digest(d)))
            conn.execute(
                "INSERT INTO dead_letter (source, topic, reason, payload, digest) VALUES "
                + _values_sql(len(chunk), "(%s,%s,%s,%s,%s)") + " ON CONFLICT (digest) DO NOTHING",
                params,
            )
