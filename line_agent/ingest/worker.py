"""The ingest worker: an MQTT 5 subscriber feeding the batched writer, acknowledging only what is safe.

Flow control, end to end:

* QoS 1, ``clean_start=False`` and a session expiry: while a worker is down the broker queues its
  messages; the restarted worker (same client id) receives them.
* Manual acknowledgement (paho >= 2): a PUBACK goes out only after the message's batch committed in
  PostgreSQL or was fsynced to the disk spool. A crash before that = redelivery, which the writer's
  ON CONFLICT DO NOTHING stores once.
* MQTT 5 Receive Maximum = ``inflight``: the broker should not have more than that many
  unacknowledged messages out to us; when the writer is behind, acks stop, the window fills and the
  broker holds the rest (back-pressure, not memory growth). The internal queue holds 2 x inflight
  as a hard bound even against a broker that overshoots (Mosquitto 2.0.11 does after a burst of
  acks): a full queue blocks paho's network thread, TCP fills, and the broker queues the rest.
* One bad message never stops the worker: whatever goes wrong decoding or writing it (a rule, a value
  the database refuses, an exception nobody foresaw) makes that message a dead letter and the worker
  acknowledges it. Only an unreachable database is retried (spool meanwhile), never a bad message; a
  spooled batch the database refuses on replay is written message by message the same way.
* N workers split the stream by **slices**, not by a shared subscription: every worker has its own
  persistent session subscribed (plainly) to the whole tree, and stores only the messages of its slice
  (``slice_of(topic, N) == index``: a CRC-32 of the cell, ``<prefix>/<site>/<line>/<cell>``, or of the
  Sparkplug edge node, ``<group>/<node>``), acknowledging the rest unread. Mosquitto restores plain
  subscriptions after a restart or crash but not shared ones, so a slice is never without a subscriber
  (docs/MQTT.md, "Delivery guarantees"). One cell / one edge node is always one worker's: order and
  Sparkplug host state (births, aliases, seq) stay with one process. ``share_group`` (opt-in) keeps the
  MQTT 5 shared subscription for brokers that persist it; Sparkplug then goes to worker 0 only.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from line_agent.ingest.decode_json import decode_json
from line_agent.ingest.rows import Batch, DeadLetter, dead_letter
from line_agent.ingest.sparkplug import NAMESPACE, SparkplugDecoder, rebirth_command
from line_agent.ingest.spool import Spool
from line_agent.ingest.writer import DEFAULT_DEAD_LETTER_QUOTA, BatchWriter
from line_agent.mqtt import parse_mqtt_url

log = logging.getLogger(__name__)


@dataclass
class IngestConfig:
    """Everything a worker needs; ``from_settings`` fills it from LINEGUARD_* settings."""

    mqtt_url: str
    database_url: str
    data_dir: Path
    worker_index: int = 0
    # N workers: each subscribes plainly to everything and stores its slice (slice_of(topic, N) == index).
    worker_count: int = 1
    client_prefix: str = "lineguard-ingest"
    json_filter: str = "lineguard/#"
    sparkplug_filter: str | None = f"{NAMESPACE}/#"  # None = no Sparkplug
    # "" (default) = plain subscriptions (restart-safe on Mosquitto) and slices. A group name = the MQTT 5
    # shared subscription $share/<group>/<filter> instead (opt-in, for brokers that persist shared
    # subscriptions: Mosquitto 2.0.x does not, and loses what arrives before the workers re-subscribe
    # after a restart); Sparkplug then goes to worker 0 only. See docs/MQTT.md.
    share_group: str = ""
    sparkplug_site: str = ""
    batch_rows: int = 50_000  # flush when a batch holds this many rows ...
    batch_delay_s: float = 0.1  # ... or when its oldest message waited this long
    inflight: int = 2000  # MQTT 5 Receive Maximum: unacknowledged messages the broker may send us
    session_expiry_s: int = 7 * 24 * 3600  # the broker keeps a stopped worker's queue this long
    spool_max_bytes: int = 2 << 30
    db_retry_s: float = 1.0  # while the database is away, try it again this often
    rollup_every_s: float = 10.0  # plain PostgreSQL: refresh the 1m/1h rollups this often
    use_copy: bool | None = None
    # Bytes the dead_letter table may hold; past it bad messages are counted, not stored (0 = no limit).
    # LINEGUARD_DEAD_LETTER_QUOTA_BYTES.
    dead_letter_quota_bytes: int = DEFAULT_DEAD_LETTER_QUOTA

    def __post_init__(self) -> None:
        # Slices need 0 <= index < N (a shared subscription does not: the broker splits).
        if self.worker_count < 1 or (not self.share_group and not 0 <= self.worker_index < self.worker_count):
            raise ValueError(f"ingest worker index {self.worker_index} is not in 0..{self.worker_count - 1} "
                             f"(--workers {self.worker_count})")

    @property
    def client_id(self) -> str:
        return f"{self.client_prefix}-{self.worker_index}"

    @property
    def sliced(self) -> bool:
        """True: this worker sees every message and stores only its slice."""
        return self.worker_count > 1 and not self.share_group

    def owns(self, topic: str) -> bool:
        """Whether this worker stores ``topic``'s messages (always, unless sliced)."""
        return not self.sliced or slice_of(topic, self.worker_count) == self.worker_index

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool" / f"ingest-{self.worker_index}"

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> IngestConfig:
        if not settings.database_url or not settings.mqtt_url:
            raise ValueError("ingest needs LINEGUARD_DATABASE_URL and LINEGUARD_MQTT_URL "
                             "(lineguard demo/run set them for the processes they start)")
        quota = (getattr(settings, "dead_letter_quota_bytes", None)
                 or os.environ.get("LINEGUARD_DEAD_LETTER_QUOTA_BYTES"))
        if quota not in (None, ""):
            overrides.setdefault("dead_letter_quota_bytes", int(quota))
        return cls(mqtt_url=settings.mqtt_url, database_url=settings.database_url,
                   data_dir=Path(settings.data_dir), **overrides)


@dataclass
class IngestStats:
    messages: int = 0
    skipped: int = 0  # other workers' slices: acknowledged unread
    stale_acks: int = 0  # stored, not acknowledged: received on a connection that has since dropped
    rows: int = 0
    dead: int = 0
    batches: int = 0
    spooled_batches: int = 0
    replayed_batches: int = 0
    db_errors: int = 0
    refused: int = 0  # messages whose rows could not be stored (now dead letters)
    started: float = field(default_factory=time.time)


class _Msg:
    __slots__ = ("conn", "mid", "payload", "qos", "topic")

    def __init__(self, topic: str, payload: bytes, mid: int, qos: int, conn: int = 0) -> None:
        self.topic, self.payload, self.mid, self.qos, self.conn = topic, payload, mid, qos, conn


class IngestWorker:
    """One subscriber + writer. ``run(stop_event)`` blocks until the event is set, then drains and returns."""

    def __init__(self, cfg: IngestConfig) -> None:
        self.cfg = cfg
        self.stats = IngestStats()
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the broker acknowledged our subscriptions (SUBACK)
        self._q: queue.Queue[_Msg] = queue.Queue(maxsize=cfg.inflight * 2)
        self.writer = BatchWriter(cfg.database_url, use_copy=cfg.use_copy,
                                  dead_letter_quota_bytes=cfg.dead_letter_quota_bytes)
        self.spool = Spool(cfg.spool_dir, cfg.spool_max_bytes)
        self.sparkplug = SparkplugDecoder(cfg.sparkplug_site, request_rebirth=self._request_rebirth)
        self._migrated = False
        self._host_loaded = False  # Sparkplug host state read from sparkplug_nodes (once, lazily)
        self._db_down_until = 0.0
        self._dirty: tuple[float, float] | None = None
        self._last_rollup = time.monotonic()
        # Which connection a message came on. A packet id means something only on its connection: after a
        # reconnect the broker resends what it still holds unacknowledged (same content, maybe another id) and
        # gives new messages ids of its own, so acknowledging an old message's id then could acknowledge a
        # different message that is not stored yet (and a crash would lose it). Old messages are stored but
        # not acknowledged; the broker's resend of each is stored once more (idempotent) and acknowledged.
        self._conn = 0
        self._ack_lock = threading.Lock()
        self.client = self._make_client()

    # -- MQTT --------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        host, port, user, password, tls = parse_mqtt_url(self.cfg.mqtt_url)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.cfg.client_id, protocol=mqtt.MQTTv5,
                             manual_ack=True)
        if user:
            client.username_pw_set(user, password)
        if tls:
            client.tls_set()
        client.reconnect_delay_set(1, 2)
        client.max_inflight_messages_set(100)  # our own publishes: rebirth requests only
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = self.cfg.inflight
        self._host, self._port, self._props = host, port, props
        return client

    def _subscriptions(self) -> list[str]:
        filters = []
        share = self.cfg.share_group
        filters.append(f"$share/{share}/{self.cfg.json_filter}" if share else self.cfg.json_filter)
        if self.cfg.sparkplug_filter and (self.cfg.sliced or self.cfg.worker_index == 0):
            filters.append(self.cfg.sparkplug_filter)
        return filters

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            log.warning("ingest %s: broker refused connection: %s", self.cfg.client_id, rc)
            return
        # Subscribing again on a resumed session is harmless and covers a broker that lost it. A session
        # kept from a run with the other mode (plain vs shared) would deliver everything twice: drop it.
        stale = (self.cfg.json_filter if self.cfg.share_group
                 else f"$share/lineguard/{self.cfg.json_filter}")
        if flags.session_present:
            client.unsubscribe(stale)
        client.subscribe([(f, 1) for f in self._subscriptions()])
        self.connected.set()
        log.info("ingest %s connected (session present: %s)", self.cfg.client_id, flags.session_present)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, props: Any = None
                      ) -> None:
        if all(not rc.is_failure for rc in reason_codes):
            self.subscribed.set()
            # Tells a supervising process (lineguard demo/run) that messages published from now on
            # reach this worker: nothing queues for a shared subscription that does not exist yet.
            marker = self.cfg.data_dir / "run" / f"{self.cfg.client_id}.subscribed"
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        else:
            log.error("ingest %s: subscription refused: %s", self.cfg.client_id, reason_codes)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        with self._ack_lock:  # before paho reconnects (and drops the acks still queued for the old socket)
            self._conn += 1
        self.connected.clear()
        self.subscribed.clear()
        log.info("ingest %s disconnected: %s", self.cfg.client_id, rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # Blocks only if the broker overshoots Receive Maximum: the queue holds twice the window.
        self._q.put(_Msg(msg.topic, bytes(msg.payload), msg.mid, msg.qos, self._conn))

    def _ack(self, m: _Msg) -> None:
        """PUBACK ``m`` if it came on the current connection (see ``_conn``); QoS 0 needs none."""
        if m.qos == 0:
            return
        with self._ack_lock:
            if m.conn == self._conn:
                self.client.ack(m.mid, m.qos)
                return
        self.stats.stale_acks += 1

    def _request_rebirth(self, group: str, node: str) -> None:
        self.client.publish(f"{NAMESPACE}/{group}/NCMD/{node}", rebirth_command(), qos=0)

    # -- main loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> IngestStats:
        """Consume until ``stop`` is set; then write what was received, acknowledge it, disconnect."""
        self.client.connect_async(self._host, self._port, keepalive=30, clean_start=False, properties=self._props)
        self.client.loop_start()
        try:
            while not stop.is_set():
                self._step(self.cfg.batch_delay_s)
            self._step(0.0)  # what is already queued
        finally:
            with contextlib.suppress(Exception):
                self._save_host_state()
            self.client.disconnect()
            self.client.loop_stop()
            self.writer.close()
        return self.stats

    def _collect(self, wait_s: float) -> list[_Msg]:
        msgs: list[_Msg] = []
        rows_hint = 0
        try:
            first = self._q.get(timeout=max(wait_s, 0.05)) if wait_s else self._q.get_nowait()
        except queue.Empty:
            return msgs
        msgs.append(first)
        deadline = time.monotonic() + wait_s
        while rows_hint < self.cfg.batch_rows:
            timeout = deadline - time.monotonic()
            try:
                m = self._q.get(timeout=timeout) if timeout > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            msgs.append(m)
            rows_hint += max(1, len(m.payload) // 40)  # rough points-per-byte; exact count comes later
        return msgs

    def _decode(self, m: _Msg) -> Batch:
        b = Batch()
        try:
            if m.topic.startswith(NAMESPACE + "/"):
                self.sparkplug.decode(m.topic, m.payload, b)
            else:
                decode_json(m.topic, m.payload, b)
        except Exception as exc:  # the decoders dead-letter on their own; this is a bug there, still one message
            log.exception("ingest %s: decoder failed on %s", self.cfg.client_id, m.topic[:200])
            b = Batch(dead=[dead_letter(_source(m.topic), m.topic, _why("undecodable", exc), m.payload)])
        return b

    def _step(self, wait_s: float) -> None:
        msgs = self._collect(wait_s)
        if msgs and self.cfg.sliced:
            mine = [m for m in msgs if self.cfg.owns(m.topic)]
            if len(mine) < len(msgs):
                # Another worker's slice: it has its own session with its own copy. Acknowledge unread.
                for m in msgs:
                    if not self.cfg.owns(m.topic):
                        self._ack(m)
                self.stats.skipped += len(msgs) - len(mine)
                msgs = mine
                if not msgs:  # only others' messages: still replay our spool (our slice may be quiet now)
                    if self.spool.bytes:
                        self._drain_spool()
                        self._export_metrics(None)
                    self._maybe_refresh_rollups()
                    return
        if msgs:
            if not self._host_loaded and any(m.topic.startswith(NAMESPACE + "/") for m in msgs):
                self._load_host_state()
            parts = [self._decode(m) for m in msgs]
            batch = Batch()
            for p in parts:
                batch.extend(p)
            self._store(batch, msgs, parts)
            self._save_host_state()  # before the acks: what they acknowledge, the state reflects
            for m in msgs:
                self._ack(m)
            self.stats.messages += len(msgs)
            self.stats.rows += len(batch) - len(batch.dead)
            self.stats.dead += len(batch.dead)
            self.stats.batches += 1
            self._export_metrics(batch)
            if batch.telemetry:
                lo = min(r.ts for r in batch.telemetry)
                hi = max(r.ts for r in batch.telemetry)
                self._dirty = (min(lo, self._dirty[0]), max(hi, self._dirty[1])) if self._dirty else (lo, hi)
        elif self.spool.bytes:
            self._drain_spool()
            self._export_metrics(None)
        self._maybe_refresh_rollups()

    def _export_metrics(self, batch: Batch | None) -> None:
        """Prometheus: age of the newest row just stored, and the bytes waiting in the spool."""
        from line_agent.metrics import INGEST_LAG, SPOOL_BYTES

        rows = () if batch is None else (batch.telemetry, batch.events, batch.inspections)
        newest = max((r.ts for part in rows for r in part), default=None)
        if newest is not None:
            INGEST_LAG.labels(source=self.cfg.client_id).set(max(0.0, time.time() - newest))
        SPOOL_BYTES.labels(line=self.cfg.client_id).set(self.spool.bytes)

    def _db_available(self) -> bool:
        return time.monotonic() >= self._db_down_until

    def _db_down(self, exc: Exception) -> None:
        self.stats.db_errors += 1
        self._db_down_until = time.monotonic() + self.cfg.db_retry_s
        log.warning("ingest %s: database unavailable (%s); spooling to %s", self.cfg.client_id,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, self.spool.dir)

    def _write(self, batch: Batch) -> None:
        if not self._migrated:
            from line_agent.store.migrate import migrate

            try:
                migrate(self.cfg.database_url)
            except Exception as exc:  # the schema, not a message, is at fault: retry like a database away
                raise _DatabaseUnavailable(f"migration failed: {type(exc).__name__}: {exc}") from exc
            self._migrated = True
        self.writer.write(batch)

    # -- Sparkplug host state (sparkplug_nodes) -----------------------------------------------
    def _load_host_state(self) -> None:
        """Births, bdSeq, seq and alive/dead of this worker's edge nodes, as the last run left them. If the
        database cannot say, start empty: data by alias then asks its node for a rebirth (dead letters)."""
        from line_agent.store.nodes import load_host_state

        self._host_loaded = True
        try:
            if not self._migrated:
                from line_agent.store.migrate import migrate

                migrate(self.cfg.database_url)
                self._migrated = True
            conn = self.writer.connect()
            with conn.transaction():
                rows = load_host_state(conn)
            n = self.sparkplug.restore(rows, owns=lambda g, node: self.cfg.owns(f"{NAMESPACE}/{g}/NDATA/{node}"))
            log.info("ingest %s: Sparkplug host state of %d edge nodes restored", self.cfg.client_id, n)
        except Exception as exc:
            log.warning("ingest %s: Sparkplug host state not loaded (%s); starting without it: aliased data asks "
                        "for a rebirth", self.cfg.client_id, _why("error", exc))
            self.writer.close()

    def _save_host_state(self) -> None:
        """Persist what changed in the Sparkplug host state; kept for the next try while the database is away."""
        rows = self.sparkplug.changes()
        if not rows:
            return
        if not self._db_available() or not self._migrated:
            self.sparkplug.unsave(rows)
            return
        from line_agent.store.nodes import save_host_state

        try:
            conn = self.writer.connect()
            with conn.transaction():
                save_host_state(conn, rows)
        except Exception as exc:
            self.sparkplug.unsave(rows)
            if self._transient(exc):
                self._db_down(exc)
            else:
                log.warning("ingest %s: Sparkplug host state not saved: %s", self.cfg.client_id, _why("error", exc))

    def _transient(self, exc: BaseException) -> bool:
        """True: the database is away (connection lost, shutting down, disk full): retry, spool meanwhile.
        False: the database refused this data, or the data broke the writer: a dead letter, never a retry."""
        if isinstance(exc, _DatabaseUnavailable):
            return True
        if isinstance(exc, psycopg.errors.ProgramLimitExceeded):  # class 54: a value too large, not an outage
            return False
        if isinstance(exc, psycopg.OperationalError):
            return True
        conn = self.writer.conn
        return isinstance(exc, psycopg.Error) and conn is not None and (conn.closed or conn.broken)

    def _drain_spool(self) -> bool:
        """Replay spooled batches oldest first; True when the spool is empty."""
        if not self._db_available():
            return False
        for path in self.spool.files():
            try:
                parts = self.spool.read(path)
            except Exception as exc:  # unreadable (a disk fault, a foreign file): set aside, never replayed again
                target = self.spool.quarantine(path)
                log.error("ingest %s: spool file %s unreadable (%s); kept as %s", self.cfg.client_id, path.name,
                          _why("error", exc), target.name)
                continue
            batch = Batch()
            for _, part in parts:
                batch.extend(part)
            try:
                self._write(batch)
            except Exception as exc:
                if self._transient(exc):
                    self._db_down(exc)
                    return False
                log.warning("ingest %s: spooled batch %s refused (%s); writing message by message",
                            self.cfg.client_id, path.name, _why("error", exc))
                items = [(ref if ref is not None else _spool_identity(path, part), part) for ref, part in parts]
                if not self._store_one_by_one(items):
                    return False
            self.spool.remove(path)
            self.stats.replayed_batches += 1
        if self.spool.bytes == 0:
            log.info("ingest %s: spool drained", self.cfg.client_id)
        return True

    def _store(self, batch: Batch, msgs: list[_Msg], parts: list[Batch]) -> None:
        """Durably store ``batch`` (DB or spool) before returning: the caller acks after this."""
        while True:
            if self.spool.bytes and not self._drain_spool():
                pass  # database still away: keep order, this batch goes behind the spooled ones
            elif self._db_available():
                try:
                    self._write(batch)
                    return
                except Exception as exc:
                    if self._transient(exc):
                        self._db_down(exc)
                    else:
                        # Not the connection: some row the database (or the writer) refuses. Find the
                        # message, dead-letter it, keep the rest.
                        log.warning("ingest %s: batch refused (%s); writing message by message", self.cfg.client_id,
                                    _why("error", exc))
                        if self._store_one_by_one([(_Identity(m), p) for m, p in zip(msgs, parts, strict=True)]):
                            return
                        continue
            if not self.spool.full:
                self.spool.append(batch, [(_identity(m), p) for m, p in zip(msgs, parts, strict=True)])
                self.stats.spooled_batches += 1
                return
            # Spool full: hold these messages unacknowledged; the broker keeps the rest.
            time.sleep(self.cfg.db_retry_s)

    def _store_one_by_one(self, items: Sequence[tuple[DeadLetter | _Identity, Batch]]) -> bool:
        """Write each message's rows alone; one that fails for its data becomes a dead letter. False when
        the database went away meanwhile (the caller retries the lot: what was written is idempotent)."""
        for ident, part in items:
            try:
                self._write(part)
                continue
            except Exception as exc:
                if self._transient(exc):
                    self._db_down(exc)
                    return False
                reason = _why("refused by the database" if isinstance(exc, psycopg.Error) else "could not be stored",
                              exc)
            ref = ident.get() if isinstance(ident, _Identity) else ident
            log.warning("ingest %s: message on %s dead-lettered: %s", self.cfg.client_id, ref.topic[:200], reason)
            self.stats.refused += 1
            try:
                self._write(Batch(dead=[ref.with_reason(reason)]))
            except Exception as exc:
                if self._transient(exc):
                    self._db_down(exc)
                    return False
                # Even its dead letter is refused: count it and go on; a retry would fail the same way forever.
                from line_agent.metrics import DEAD_LETTERS_DROPPED

                DEAD_LETTERS_DROPPED.labels(reason="unwritable").inc()
                log.error("ingest %s: dead letter for %s not stored either (%s)", self.cfg.client_id,
                          ref.topic[:200], _why("error", exc))
        return True

    def _maybe_refresh_rollups(self) -> None:
        if self._dirty is None or time.monotonic() - self._last_rollup < self.cfg.rollup_every_s:
            return
        if not self._db_available() or self.spool.bytes:
            return
        from line_agent.store.timeseries import refresh_rollups

        lo, hi = self._dirty
        try:
            refresh_rollups(self.writer.connect(), lo, hi + 1.0)  # the writer's connection: one is enough
            self._dirty = None
        except psycopg.OperationalError as exc:
            self.writer.close()
            log.warning("ingest %s: rollup refresh failed: %s", self.cfg.client_id, exc)
        except psycopg.Error as exc:
            log.warning("ingest %s: rollup refresh failed: %s", self.cfg.client_id, exc)
        self._last_rollup = time.monotonic()


class _DatabaseUnavailable(Exception):
    """The database cannot take writes for a reason no message causes (its schema could not be migrated)."""


def slice_key(topic: str) -> str:
    """What decides a message's slice: its Sparkplug edge node (``<group>/<node>``: host state is per node),
    or its cell (the topic without the kind: ``<prefix>/<site>/<line>/<cell>``). Same key, same worker."""
    parts = topic.split("/")
    if parts[0] == NAMESPACE and len(parts) >= 4:
        return f"{parts[1]}/{parts[3]}"
    return topic.rsplit("/", 1)[0] if len(parts) > 1 else topic


def slice_of(topic: str, workers: int) -> int:
    """Deterministic slice 0..workers-1 (CRC-32, the same in every process and on every restart)."""
    return zlib.crc32(slice_key(topic).encode("utf-8", "surrogatepass")) % workers if workers > 1 else 0


def _source(topic: str) -> str:
    return "sparkplug" if topic.startswith(NAMESPACE + "/") else "mqtt"


def _why(what: str, exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{what}: {type(exc).__name__}: {text}"[:500]


def _identity(m: _Msg) -> DeadLetter:
    """What a message's dead letter would be (head, size, digests), without a reason yet."""
    return dead_letter(_source(m.topic), m.topic, "", m.payload)


class _Identity:
    """A message's dead-letter identity, hashed only if it is needed."""

    __slots__ = ("m",)

    def __init__(self, m: _Msg) -> None:
        self.m = m

    def get(self) -> DeadLetter:
        return _identity(self.m)


def _spool_identity(path: Path, part: Batch) -> DeadLetter:
    """A part of a spool file written before parts carried their message: its rows stand in for the payload."""
    import json

    raw = json.dumps(part.to_jsonable(), separators=(",", ":")).encode()
    return dead_letter("spool", f"spool/{path.name}", "", raw)


# -- several workers as processes -----------------------------------------------------------------
def worker_command(index: int, share_group: str = "", workers: int = 1) -> list[str]:
    """Worker ``index`` of ``workers`` as a process (slices; ``share_group`` = the opt-in shared subscription)."""
    return [sys.executable, "-m", "line_agent.ingest", "--index", str(index), "--workers", str(workers),
            "--share-group", share_group]


def run_workers(n: int, stop: threading.Event, env: dict[str, str] | None = None,
                log_dir: Path | None = None, share_group: str = "",
                extra_args: list[str] | None = None) -> None:
    """Run ``n`` worker processes (env: LINEGUARD_*) until ``stop``; restart any that dies.

    Worker i of n stores slice i (its own persistent session sees everything); ``share_group`` = opt-in MQTT 5
    shared subscription instead (not restart-safe on Mosquitto)."""
    procs: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(i: int) -> None:
        out: Any = subprocess.DEVNULL
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            out = open(log_dir / f"ingest-{i}.log", "ab")  # noqa: SIM115 - handed to the child
        procs[i] = subprocess.Popen([*worker_command(i, share_group if n > 1 else "", n), *(extra_args or [])],
                                    env=env, stdout=out, stderr=subprocess.STDOUT)
        if out is not subprocess.DEVNULL:
            out.close()

    for i in range(n):
        spawn(i)
    try:
        while not stop.wait(0.5):
            for i, p in list(procs.items()):
                if p.poll() is not None:
                    log.warning("ingest worker %d exited with %s; restarting", i, p.returncode)
                    spawn(i)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def main(argv: list[str] | None = None) -> None:
    """``python -m line_agent.ingest --index I``: one worker, settings from LINEGUARD_*."""
    from line_agent.settings import Settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--index", type=int, default=int(os.environ.get("LINEGUARD_INGEST_INDEX") or 0),
                    help="this worker's index 0..N-1 (env LINEGUARD_INGEST_INDEX)")
    ap.add_argument("--workers", type=int, default=int(os.environ.get("LINEGUARD_INGEST_WORKERS") or 1),
                    help="N, the number of workers splitting the stream (env LINEGUARD_INGEST_WORKERS)")
    ap.add_argument("--share-group", default="", help="'' = plain subscriptions and slices (restart-safe); "
                    "a name = MQTT 5 shared subscription $share/<name>/... (brokers that persist it)")
    ap.add_argument("--json-filter", default="lineguard/#")
    ap.add_argument("--client-prefix", default="lineguard-ingest", help="client id = <prefix>-<index>")
    ap.add_argument("--sparkplug-filter", default=f"{NAMESPACE}/#", help="'' = no Sparkplug")
    ap.add_argument("--metrics-port", type=int, default=int(os.environ.get("LINEGUARD_INGEST_METRICS_PORT") or 0),
                    help="serve Prometheus metrics (and a liveness answer) on 127.0.0.1:PORT+index; 0 = off")
    ap.add_argument("--metrics-host", default=os.environ.get("LINEGUARD_INGEST_METRICS_HOST", "127.0.0.1"))
    args = ap.parse_args(argv)
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port + args.index, addr=args.metrics_host)
    settings = Settings()
    logging.basicConfig(level=getattr(logging, settings.log_level.upper(), logging.INFO),
                        format=f"%(asctime)s %(levelname)-7s ingest-{args.index} %(name)s: %(message)s")
    cfg = IngestConfig.from_settings(settings, worker_index=args.index, worker_count=args.workers,
                                     share_group=args.share_group,
                                     json_filter=args.json_filter, client_prefix=args.client_prefix,
                                     sparkplug_filter=args.sparkplug_filter or None)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stats = IngestWorker(cfg).run(stop)
    log.info("stopped: %s", stats)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
