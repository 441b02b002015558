"""Batched, exactly-once writes: binary COPY, with a temp staging table + INSERT ... ON CONFLICT DO NOTHING.

The natural keys (telemetry (line, cell, device, metric, ts), events.event_id, inspections.inspection_id,
dead_letter.digest) make every write idempotent: a batch written twice (broker re-delivery, a spool
replayed after a crash between commit and ack) is stored once. One batch = one transaction.

Dead letters keep the head of their payload (``rows.DEAD_LETTER_HEAD`` bytes) with its size and SHA-256,
and stop being stored once the dead_letter table holds ``dead_letter_quota_bytes`` (counted in
``lineguard_dead_letters_dropped_total``): a flood of bad messages cannot fill the database.

Telemetry (the volume) first tries one COPY straight into ``telemetry`` inside a savepoint: a batch
with no key already stored (the normal case) is written once. If any key exists (re-delivery), the
savepoint is rolled back and the batch goes COPY -> staging -> INSERT ON CONFLICT DO NOTHING.

Engines without COPY FROM STDIN (the PGlite TimescaleDB test server, detected from version()) get
multi-row INSERT ... ON CONFLICT DO NOTHING instead (or ``use_copy=False``).
"""

from __future__ import annotations

import contextlib
import logging
import time
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
#: The natural key of a telemetry point (the primary key; migration 013): re-sending a point never adds a row.
TELEMETRY_KEY = "line, cell, device, metric, ts"
_ON_CONFLICT = f"ON CONFLICT ({TELEMETRY_KEY}) DO NOTHING"
_FROM_STAGE = f"INSERT INTO telemetry ({_COLS}) SELECT {_COLS} FROM lg_stage_telemetry {_ON_CONFLICT}"
_ROWS_PER_INSERT = 1000  # multi-row INSERT on PostgreSQL: 7,000 parameters per statement
# PGlite's socket server drops the connection on large messages (~600 telemetry rows did it): stay small.
_ROWS_PER_INSERT_SMALL = 200


def _values_sql(n_rows: int, row_sql: str) -> str:
    return ",".join([row_sql] * n_rows)


def _chunks(seq: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


DEFAULT_DEAD_LETTER_QUOTA = 256 << 20  # bytes the dead_letter table may hold before new ones are dropped
DEAD_LETTER_ROW_OVERHEAD = 100  # bytes per row beyond its payload head, topic and reason (an estimate)
_QUOTA_RECOUNT_S = 30.0  # how often the table's size is counted again (other workers, deletions)
#: The estimate of the bytes dead_letter holds, against the quota: this writer's and the API's alarm's
#: (line_agent/api/alarms.py) one query. Parameter: the per-row overhead.
DEAD_LETTER_BYTES_SQL = ("SELECT coalesce(sum(coalesce(octet_length(payload), 0) + octet_length(topic)"
                         " + octet_length(reason) + %s), 0) FROM dead_letter")
_QUOTA_ROW = ("INSERT INTO dead_letter_quota (id, quota_bytes, dropped, last_dropped_at, updated_at)"
              " VALUES (1, %(q)s, %(n)s, CASE WHEN %(n)s > 0 THEN now() END, now())"
              " ON CONFLICT (id) DO UPDATE SET quota_bytes = EXCLUDED.quota_bytes,"
              " dropped = dead_letter_quota.dropped + EXCLUDED.dropped,"
              " last_dropped_at = coalesce(EXCLUDED.last_dropped_at, dead_letter_quota.last_dropped_at),"
              " updated_at = now()")


def digest(d: DeadLetter) -> bytes:
    """The de-duplication key of a dead letter: SHA-256 of (source, topic, whole payload)."""
    return d.complete().digest


def _clean(text: str, limit: int) -> str:
    """Text PostgreSQL accepts: no NUL, no lone surrogate."""
    return text.encode("utf-8", "replace").decode("utf-8")[:limit].replace("\x00", "")


def _dead_letter_cost(d: DeadLetter) -> int:
    return len(d.payload) + len(d.topic) + len(d.reason) + DEAD_LETTER_ROW_OVERHEAD


class BatchWriter:
    """Writes ``Batch``es over one connection (reconnecting on demand). Not thread-safe: one per thread."""

    def __init__(self, url: str, *, use_copy: bool | None = None, optimistic: bool = True,
                 dead_letter_quota_bytes: int = DEFAULT_DEAD_LETTER_QUOTA) -> None:
        self.url = url
        # Bytes of dead letters the table may hold (0 = no limit). Counted from the table now and then and
        # kept up to date with our own writes in between: several workers together may overshoot a little.
        self.dead_letter_quota = dead_letter_quota_bytes
        self._dl_used: int | None = None
        self._dl_counted_at = 0.0
        self._dl_pending: tuple[int, int, int] = (0, 0, 0)  # (bytes, truncated, dropped) of this transaction
        self.dead_letters_dropped = 0
        self._quota_told = False  # dead_letter_quota holds our quota (told once, then on every drop)
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
            self._dl_pending = (0, 0, 0)
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
        except BaseException:
            self._dl_used = None  # count again: what this transaction would have added was rolled back
            raise
        if batch.dead:
            self._dead_letters_committed()

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
                f"INSERT INTO telemetry ({_COLS}) VALUES " + _values_sql(len(chunk), row_sql) + " " + _ON_CONFLICT,
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
                               len(r.defects), r.latency_ms, r.model, bool(r.frame_saved),
                               None if r.truth is None else Jsonb(r.truth)))
            # frame_path is never written: a path taken from a message must not name a file (line_agent/frames.py).
            conn.execute(
                "INSERT INTO inspections (inspection_id, ts, site, line, camera, part_id, decision, n_defects,"
                " latency_ms, model, frame_saved, truth) VALUES " + _values_sql(len(chunk), row_sql)
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
        keep: list[DeadLetter] = []
        added = truncated = dropped = 0
        used = self._dead_letter_bytes(conn) if self.dead_letter_quota > 0 else 0
        for d in rows:
            d = d.complete()
            cost = _dead_letter_cost(d)
            if self.dead_letter_quota > 0 and used + added + cost > self.dead_letter_quota:
                dropped += 1
                continue
            added += cost
            truncated += d.truncated
            keep.append(d)
        self._dl_pending = (added, truncated, dropped)
        if dropped or not self._quota_told:
            # For the API's alarm (another process): the quota we enforce and what it made us drop.
            conn.execute(_QUOTA_ROW, {"q": self.dead_letter_quota, "n": dropped})
            self._quota_told = True
        if dropped:
            log.warning("dead_letter holds ~%d bytes of its %d-byte quota: %d dead letter(s) not stored"
                        " (lineguard_dead_letters_dropped_total)", used + added, self.dead_letter_quota, dropped)
        row_sql = "(%s,%s,%s,%s,%s,%s,%s)"
        for chunk in _chunks(keep, self._small // 8):
            params: list[Any] = []
            for d in chunk:
                params.extend((_clean(d.source, 100), _clean(d.topic, 1000), _clean(d.reason, 2000), d.payload,
                               d.size, d.sha256, d.digest))
            conn.execute(
                "INSERT INTO dead_letter (source, topic, reason, payload, payload_size, payload_sha256, digest)"
                " VALUES " + _values_sql(len(chunk), row_sql) + " ON CONFLICT (digest) DO NOTHING",
                params,
            )

    def _dead_letter_bytes(self, conn: psycopg.Connection) -> int:
        """Estimated bytes the dead_letter table holds (counted again every _QUOTA_RECOUNT_S)."""
        now = time.monotonic()
        if self._dl_used is None or now - self._dl_counted_at > _QUOTA_RECOUNT_S:
            row = conn.execute(DEAD_LETTER_BYTES_SQL, (DEAD_LETTER_ROW_OVERHEAD,)).fetchone()
            self._dl_used = int(row[0]) if row else 0
            self._dl_counted_at = now
        return self._dl_used

    def _dead_letters_committed(self) -> None:
        from line_agent.metrics import DEAD_LETTER_BYTES, DEAD_LETTERS_DROPPED, DEAD_LETTERS_TRUNCATED

        added, truncated, dropped = self._dl_pending
        self._dl_pending = (0, 0, 0)
        if self._dl_used is not None:
            self._dl_used += added
            DEAD_LETTER_BYTES.set(self._dl_used)
        if truncated:
            DEAD_LETTERS_TRUNCATED.inc(truncated)
        if dropped:
            DEAD_LETTERS_DROPPED.labels(reason="quota").inc(dropped)
            self.dead_letters_dropped += dropped
