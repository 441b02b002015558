"""Store and forward at the edge: everything the runtime publishes goes to a disk outbox first.

The plant network drops, the broker restarts, lineguard itself restarts: an inspection made meanwhile must
still arrive, once, in order. So ``Outbox.put`` appends the message to a SQLite file (WAL, ``synchronous=FULL``:
on disk before ``put`` returns) and a sender thread publishes the oldest messages with QoS 1, deleting each
only when the broker acknowledged it. After a restart the sender starts from what is left. A message that was
sent but not yet acknowledged when the link dropped is sent again; ingest stores by natural key, so a
repeat is stored once (the same idea as Sparkplug's ``is_historical`` replay, for our JSON).

Mosquitto acknowledges a message and saves it at the end of the same loop pass: a crash in between loses
an acknowledged message. So what was acknowledged in the last ``replay_s`` seconds before a disconnect is
sent again when the link returns (duplicates are stored once).

The outbox is bounded (``max_bytes``): when it is full the oldest messages are dropped, counted in
``lineguard_outbox_dropped_total`` and logged; the newest data is what a plant wants first when it returns.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path
from typing import Protocol

from line_agent.metrics import OUTBOX_BYTES, OUTBOX_DROPPED, OUTBOX_PENDING

log = logging.getLogger(__name__)


class Delivery(Protocol):
    def is_published(self) -> bool: ...


class Transport(Protocol):
    """What the outbox sends through (line_agent.mqtt.Publisher)."""

    def is_connected(self) -> bool: ...

    def send(self, topic: str, payload: bytes) -> Delivery | None:
        """Queue one QoS 1 message; the delivery says once the broker acknowledged it (None: not queued)."""
        ...


class Outbox:
    def __init__(self, path: Path, *, max_bytes: int = 1 << 30, batch: int = 500, name: str = "runtime",
                 replay_s: float = 3.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.batch = batch
        self.name = name
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "topic TEXT NOT NULL, payload BLOB NOT NULL, created REAL NOT NULL)")
        row = self._db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox").fetchone()
        self._pending, self._bytes = int(row[0]), int(row[1])
        self.dropped = 0
        self.enqueued = 0
        self.acked = 0
        #: Acknowledged in the last ``replay_s`` seconds: sent again after a disconnect (the broker may have
        #: acknowledged them and crashed before saving them; a repeat is stored once by ingest).
        self.replay_s = replay_s
        self._recent: deque[tuple[float, str, bytes]] = deque()
        self.replayed = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        #: Sent, not yet acknowledged: row id -> its delivery (asked, not called back: no mid bookkeeping).
        self._inflight: dict[int, Delivery] = {}
        self._thread: threading.Thread | None = None
        self._update_metrics()
        if self._pending:
            log.info("outbox %s: %d messages (%d bytes) left from before; sending them first",
                     self.path, self._pending, self._bytes)

    # ----- producer side
    def put(self, topic: str, payload: bytes | str) -> None:
        """Append one message, durably (fsynced), then wake the sender. Blocking: call off the event loop."""
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        with self._lock:
            self._db.execute("INSERT INTO outbox (topic, payload, created) VALUES (?, ?, ?)",
                             (topic, data, time.time()))
            self._pending += 1
            self._bytes += len(data)
            self.enqueued += 1
            if self._bytes > self.max_bytes:
                self._drop_oldest()
        self._update_metrics()
        self._wake.set()

    def _drop_oldest(self) -> None:
        """Over the bound: drop the oldest messages not in flight until under it again (lock held)."""
        rows = self._db.execute("SELECT id, length(payload) FROM outbox ORDER BY id").fetchall()
        drop: list[int] = []
        for rid, size in rows:
            if self._bytes <= self.max_bytes * 0.9:
                break
            if rid in self._inflight:
                continue
            drop.append(rid)
            self._bytes -= int(size)
        if drop:
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(r,) for r in drop])
            self._pending -= len(drop)
            self.dropped += len(drop)
            OUTBOX_DROPPED.labels(outbox=self.name).inc(len(drop))
            log.error("outbox %s full (%d bytes max): dropped the %d oldest messages", self.path, self.max_bytes,
                      len(drop))

    # ----- sender side
    def start(self, transport: Transport) -> None:
        self._thread = threading.Thread(target=self._run, args=(transport,), name=f"outbox-{self.name}", daemon=True)
        self._thread.start()

    def _settle(self) -> None:
        """Delete what the broker acknowledged (one transaction for the lot)."""
        with self._lock:
            done = [rid for rid, d in self._inflight.items() if d.is_published()]
            if not done:
                return
            rows = self._db.execute(
                f"SELECT id, topic, payload FROM outbox WHERE id IN ({','.join('?' * len(done))}) ORDER BY id",
                done).fetchall()
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(r,) for r in done])
            self._bytes -= sum(len(r[2]) for r in rows)
            self._pending -= len(rows)
            self.acked += len(done)
            now = time.monotonic()
            self._recent.extend((now, str(t), bytes(p)) for _rid, t, p in rows)
            while self._recent and now - self._recent[0][0] > self.replay_s:
                self._recent.popleft()
            for rid in done:
                del self._inflight[rid]
        self._update_metrics()

    def _run(self, transport: Transport) -> None:
        was_connected = False
        replay: list[tuple[str, bytes]] = []
        while not self._stop.is_set():
            # Acknowledgements are polled: often while some are awaited, rarely when idle.
            self._wake.wait(0.02 if self._inflight else 0.5)
            self._wake.clear()
            self._settle()
            connected = transport.is_connected()
            if not connected:
                if was_connected:
                    # What was in flight may never be acknowledged: send it again once the link is back.
                    # What the broker acknowledged just before it went may not be on its disk yet (Mosquitto
                    # acknowledges, then saves): keep those to send again too.
                    with self._lock:
                        self._inflight.clear()
                        cut = time.monotonic() - self.replay_s
                        replay = [(t, p) for at, t, p in self._recent if at >= cut]
                        self._recent.clear()
                was_connected = False
                continue
            if not was_connected and replay:
                for t, p in replay:  # older than anything pending: first, as sent before
                    transport.send(t, p)
                self.replayed += len(replay)
                replay = []
            was_connected = True
            with self._lock:
                room = self.batch - len(self._inflight)
                if room <= 0:
                    continue
                rows = self._db.execute(
                    "SELECT id, topic, payload FROM outbox ORDER BY id LIMIT ?", (self.batch,)).fetchall()
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
        """Wait until every message was acknowledged (at shutdown); False when some remain (kept on disk)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._settle()
            if self._pending == 0:
                return True
            self._wake.set()
            time.sleep(0.05)
        return self._pending == 0

    @property
    def pending(self) -> int:
        return self._pending

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self._settle()
        with self._lock:
            self._db.close()

    def _update_metrics(self) -> None:
        OUTBOX_PENDING.labels(outbox=self.name).set(self._pending)
        OUTBOX_BYTES.labels(outbox=self.name).set(self._bytes)
