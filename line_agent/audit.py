"""Writes the controller's AuditRecords (every PLC command, accepted or refused) to ``audit_log``.

The controller calls the hook on its hot path, so the hook only enqueues; a thread writes
batches. Records still queued at ``close()`` are written before it returns: nothing is lost on a
clean stop. If the database is unreachable the records wait in memory (bounded) and are retried.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable

import psycopg

from hardware.tags import AuditRecord

log = logging.getLogger(__name__)

# ts is when it happened (the record's own time), not when this thread got to write it: a row queued while
# the database was away keeps its real time.
_INSERT = (
    "INSERT INTO audit_log (ts, actor, role, action, target, before, after, result, detail) "
    "VALUES (to_timestamp(%s), %s, 'system', %s, %s, NULL, %s, %s, %s)"
)


class AuditWriter:
    def __init__(self, database_url: str, max_pending: int = 100_000) -> None:
        self.url = database_url
        self._q: queue.Queue[tuple[object, ...] | None] = queue.Queue(max_pending)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()
        self.written = 0

    def hook(self, actor: str) -> Callable[[AuditRecord], None]:
        """The ``on_audit`` callback for a LineController acting as ``actor``."""

        def on_audit(record: AuditRecord) -> None:
            self._put(self._row(actor, record))

        return on_audit

    def observed(self, actor: str, action: str, line: str, reason: str, **detail: object) -> None:
        """Record something the runtime saw or did that is not a PLC write: a safe state, an e-stop, a line
        stopped at the panel, a camera lost (``action`` e.g. ``line.safe_state``), with its reason."""
        self._put((time.time(), actor, action, line, None, "ok",
                   json.dumps({"line": line, "reason": reason, **detail}, default=str)))

    def _put(self, row: tuple[object, ...]) -> None:
        try:
            self._q.put_nowait(row)
        except queue.Full:  # refuse loudly rather than grow without bound
            log.error("audit queue full; record not stored: %s", row)

    @staticmethod
    def _row(actor: str, r: AuditRecord) -> tuple[object, ...]:
        target = r.part_id or r.tag or r.line
        after = json.dumps({"tag": r.tag, "value": r.value, "raw": r.raw}, default=str)
        detail = json.dumps({"line": r.line, "reason": r.reason, "latency_ms": r.latency_ms, "ts": r.ts},
                            default=str)
        # A person's command carries its own actor; the runtime's own actions are "runtime:<line>".
        return (r.ts, r.actor or f"runtime:{actor}", f"plc.{r.action}", target, after, r.outcome, detail)

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        pending: list[tuple[object, ...]] = []
        done = False
        while not done or pending:
            if not done:
                item = self._q.get()
                if item is None:
                    done = True
                else:
                    pending.append(item)
                while len(pending) < 500:
                    try:
                        nxt = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        done = True
                        break
                    pending.append(nxt)
            if not pending:
                continue
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.url, connect_timeout=5)
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(_INSERT, pending)
                self.written += len(pending)
                pending = []
            except psycopg.Error as exc:
                log.warning("audit write failed (%s); retrying", exc)
                conn = None
                threading.Event().wait(1.0)
                if done:  # at shutdown, give up after the retry rather than hang forever
                    log.error("audit: %d records not stored at shutdown", len(pending))
                    return
        if conn is not None:
            conn.close()

    def close(self, timeout_s: float = 10.0) -> None:
        self._q.put(None)
        self._thread.join(timeout_s)
