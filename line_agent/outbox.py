"""Store and forward: every QoS 1 message lineguard publishes goes to an outbox first.

The plant network drops, the broker restarts or crashes, lineguard itself restarts: an inspection made
meanwhile must still arrive, once, in order. So ``Outbox.put`` appends the message to a SQLite table (on disk
for the runtime: WAL, ``synchronous=FULL``, on disk before ``put`` returns; in memory for tools such as the
replays, ``path=None``) and a sender thread publishes the oldest messages with QoS 1. A message that was sent
but not yet acknowledged when the link dropped is sent again; ingest stores by natural key, so a repeat is
stored once (the same idea as Sparkplug's ``is_historical`` replay, for our JSON).

**Post-acknowledgement retention.** A PUBACK does not mean the broker has the message on disk: Mosquitto
acknowledges a message in one event-loop pass and writes its persistence file later (``autosave_interval``
/ ``autosave_on_changes``), so a crash (SIGKILL, OOM, power) in between loses a message it acknowledged.
Therefore an acknowledged message is not deleted at once: it stays in the table, marked acknowledged, for
``retention_s`` seconds (``Settings.ack_retention_s``: the broker's save period plus the time a save
takes). When the link drops, every message acknowledged within the last ``retention_s`` is marked pending
again and sent first when the link returns, in its original order. After a restart of the process (the box
lost power with its broker, say), whatever acknowledged messages were still retained are sent again too. A
repeat costs a duplicate that ingest stores once; what a shorter window costs is a lost message.

The outbox is bounded (``max_bytes``, and ``max_messages`` when non-zero): when it is full the oldest
pending messages are dropped, counted in ``lineguard_outbox_dropped_total`` and logged; the newest data is
what a plant wants first when it returns.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol

from line_agent.metrics import OUTBOX_BYTES, OUTBOX_DROPPED, OUTBOX_PENDING

log = logging.getLogger(__name__)


class Delivery(Protocol):
    def is_published(self) -> bool: ...


class Transport(Protocol):
    """What the outbox sends through (line_agent.mqtt.Publisher)."""

    def is_connected(self) -> bool: ...

    @property
    def disconnects(self) -> int:
        """How many times the link dropped so far (a drop and a reconnect between two looks still counts)."""
        ...

    def send(self, topic: str, payload: bytes) -> Delivery | None:
        """Queue one QoS 1 message; the delivery says once the broker acknowledged it (None: not queued)."""
        ...


class Outbox:
    def __init__(self, path: Path | None, *, max_bytes: int = 1 << 30, max_messages: int = 0, batch: int = 500,
                 name: str = "runtime", retention_s: float = 3.0) -> None:
        if retention_s < 0:
            raise ValueError(f"retention_s must be >= 0, not {retention_s}")
        self.path = Path(path) if path is not None else None
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.batch = batch
        self.name = name
        #: How long an acknowledged message is kept to be sent again after a disconnect (see the module doc).
        self.retention_s = retention_s
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path) if self.path is not None else ":memory:",
                                   check_same_thread=False, isolation_level=None)
        if self.path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "topic TEXT NOT NULL, payload BLOB NOT NULL, created REAL NOT NULL)")
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(outbox)")}
        if "acked" not in cols:  # an outbox file from before post-acknowledgement retention
            self._db.execute("ALTER TABLE outbox ADD COLUMN acked REAL")
        self._db.execute("CREATE INDEX IF NOT EXISTS outbox_acked ON outbox (acked) WHERE acked IS NOT NULL")
        # Acknowledged messages still retained when the process stopped: the broker may have lost them with
        # it (one box, one power cut). Send them again.
        again = self._db.execute("UPDATE outbox SET acked = NULL WHERE acked IS NOT NULL").rowcount
        row = self._db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox").fetchone()
        self._pending, self._bytes = int(row[0]), int(row[1])
        self._retained = 0
        self.dropped = 0
        self.enqueued = 0
        self.acked = 0
        #: Acknowledged messages made pending again after a disconnect (or found retained at start).
        self.replayed = again
        self._last_ack = 0.0  # monotonic time of the newest acknowledgement
        self._wake = threading.Event()
        self._stop = threading.Event()
        #: Sent, not yet acknowledged: row id -> its delivery (asked, not called back: no mid bookkeeping).
        self._inflight: dict[int, Delivery] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._update_metrics()
        if self._pending:
            log.info("outbox %s: %d messages (%d bytes) left from before (%d acknowledged within the retention "
                     "window); sending them first", self.path, self._pending, self._bytes, again)

    # ----- producer side
    def put(self, topic: str, payload: bytes | str) -> None:
        """Append one message (on disk: fsynced), then wake the sender. Blocking: call off the event loop."""
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        with self._lock:
            self._db.execute("INSERT INTO outbox (topic, payload, created) VALUES (?, ?, ?)",
                             (topic, data, time.time()))
            self._pending += 1
            self._bytes += len(data)
            self.enqueued += 1
            if self._bytes > self.max_bytes or (self.max_messages and self._pending > self.max_messages):
                self._drop_oldest()
        self._update_metrics()
        self._wake.set()

    def _drop_oldest(self) -> None:
        """Over a bound: drop retained, then the oldest pending messages not in flight (lock held)."""
        self._purge(time.monotonic(), everything=True)
        rows = self._db.execute("SELECT id, length(payload) FROM outbox WHERE acked IS NULL ORDER BY id").fetchall()
        drop: list[int] = []
        pending = self._pending
        for rid, size in rows:
            if self._bytes <= self.max_bytes * 0.9 and not (self.max_messages and pending > self.max_messages):
                break
            if rid in self._inflight:
                continue
            drop.append(rid)
            self._bytes -= int(size)
            pending -= 1
        if drop:
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(r,) for r in drop])
            self._pending -= len(drop)
            self.dropped += len(drop)
            OUTBOX_DROPPED.labels(outbox=self.name).inc(len(drop))
            log.error("outbox %s full (%d bytes, %d messages max): dropped the %d oldest messages",
                      self.path or "(memory)", self.max_bytes, self.max_messages, len(drop))

    # ----- sender side
    def start(self, transport: Transport) -> None:
        self._thread = threading.Thread(target=self._run, args=(transport,), name=f"outbox-{self.name}", daemon=True)
        self._thread.start()

    def _purge(self, now: float, everything: bool = False) -> None:
        """Delete acknowledged messages older than the retention window (all of them: ``everything``)."""
        if not self._retained:
            return
        where, args = ("acked IS NOT NULL", ()) if everything else \
            ("acked IS NOT NULL AND acked < ?", (now - self.retention_s,))
        sizes = self._db.execute(f"SELECT length(payload) FROM outbox WHERE {where}", args).fetchall()
        if sizes:
            self._db.execute(f"DELETE FROM outbox WHERE {where}", args)
        self._retained -= len(sizes)
        self._bytes -= sum(int(s[0]) for s in sizes)

    def _settle(self) -> None:
        """Mark what the broker acknowledged (one transaction for the lot) and purge what aged out."""
        with self._lock:
            if self._closed:
                return
            done = [rid for rid, d in self._inflight.items() if d.is_published()]
            now = time.monotonic()
            if done:
                self._db.execute("BEGIN")
                self._db.executemany("UPDATE outbox SET acked = ? WHERE id = ?", [(now, r) for r in done])
                self._retained += len(done)
                self._pending -= len(done)
                # No window (retention 0): what was just acknowledged is the only thing retained; it goes now.
                self._purge(now, everything=self.retention_s == 0)
                self._db.execute("COMMIT")
                self.acked += len(done)
                self._last_ack = now
                for rid in done:
                    del self._inflight[rid]
            elif self._retained:
                self._purge(now)
        self._update_metrics()

    def _requeue_recent(self) -> int:
        """The link dropped: what was acknowledged within the window may be gone with the broker. Mark it
        pending again (lock held); it keeps its place in the order, before everything sent after it."""
        if not self._retained:
            return 0
        n = self._db.execute("UPDATE outbox SET acked = NULL WHERE acked IS NOT NULL AND acked >= ?",
                             (time.monotonic() - self.retention_s,)).rowcount
        self._retained -= n
        self._pending += n
        self.replayed += n
        return n

    def _run(self, transport: Transport) -> None:
        seen_drops = transport.disconnects
        while not self._stop.is_set():
            # Acknowledgements are polled: often while some are awaited, rarely when idle.
            self._wake.wait(0.02 if self._inflight else 0.2)
            self._wake.clear()
            self._settle()
            drops = transport.disconnects  # counted, not sampled: a quick reconnect between two looks is seen
            connected = transport.is_connected()
            if drops != seen_drops:
                seen_drops = drops
                # What was in flight may never be acknowledged: send it again once the link is back. What the
                # broker acknowledged just before it went may not be on its disk yet: that too.
                with self._lock:
                    self._inflight.clear()
                    n = self._requeue_recent()
                if n:
                    log.info("outbox %s: link lost; %d messages acknowledged in the last %.1f s will be sent "
                             "again", self.path or self.name, n, self.retention_s)
                self._update_metrics()
            if not connected:
                continue
            with self._lock:
                room = self.batch - len(self._inflight)
                if room <= 0:
                    continue
                rows = self._db.execute("SELECT id, topic, payload FROM outbox WHERE acked IS NULL ORDER BY id "
                                        "LIMIT ?", (self.batch,)).fetchall()
                todo = [r for r in rows if r[0] not in self._inflight][:room]
            sent = 0
            for rid, topic, payload in todo:
                delivery = transport.send(topic, bytes(payload))
                if delivery is None:
                    break
                with self._lock:
                    self._inflight[rid] = delivery
                sent += 1
            if sent:
                time.sleep(0.005)  # let acknowledgements arrive before asking again
                self._wake.set()  # more may be waiting

    def drain(self, timeout_s: float) -> bool:
        """Wait until every message was acknowledged; False when some remain (kept, on disk or in memory)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._settle()
            if self._pending == 0:
                return True
            self._wake.set()
            time.sleep(0.05)
        return self._pending == 0

    def linger(self, timeout_s: float) -> bool:
        """At shutdown: stay until the newest acknowledgement is ``retention_s`` old, so that a broker crash
        right after the last PUBACK is still covered (the messages go again and are waited for). False when
        ``timeout_s`` passed with messages pending or still inside the window. A link that is down meanwhile is
        waited for (the sender reconnects and sends again): a finished replay must not end in a broker crash."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._settle()
            inside = self._retained and time.monotonic() - self._last_ack < self.retention_s
            if self._pending == 0 and not inside:
                return True
            self._wake.set()
            time.sleep(0.05)
        return False

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def retained(self) -> int:
        """Acknowledged messages kept for the retention window."""
        return self._retained

    def close(self) -> None:
        if self._closed:
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self._settle()
        with self._lock:
            self._closed = True
            self._db.close()

    def _update_metrics(self) -> None:
        OUTBOX_PENDING.labels(outbox=self.name).set(self._pending)
        OUTBOX_BYTES.labels(outbox=self.name).set(self._bytes)
