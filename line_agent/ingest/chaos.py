"""``lineguard bench chaos``: the ingest fault matrix, counted message by message.

Each scenario runs on its own Mosquitto (persistence with ``autosave_interval 1`` + ``autosave_on_changes
true``: acknowledged QoS 1 messages survive a crash) and its own database on one embedded PostgreSQL, with N
ingest worker processes (``python -m line_agent.ingest --index i --workers N``). A publisher sends JSON
telemetry over many cells and Sparkplug B edge nodes (NBIRTH/DBIRTH with aliases, DDATA by alias only,
rebirth on request), while the scenario's fault is injected: a broker restart (SIGTERM), a broker crash
(SIGKILL), a database outage, SIGKILLed workers, or a hostile corpus (fuzzed Sparkplug protobufs: bit flips
and truncations of valid payloads; malformed JSON).

Counting, per published message: **stored** (every row its payload decodes to is in the database),
**dead-lettered** (its digest is in ``dead_letter``: raw head kept, reason stated), **ignored** (it decodes
to nothing and is not a dead letter: e.g. a fuzzed payload whose metrics all became nulls) or **lost**
(none of these). **Duplicated** = rows beyond one per natural key. Points are counted the same way. The
expected rows come from the decoders themselves (``decode_json``, a local ``SparkplugDecoder``), so a
fuzzed payload that still decodes is expected stored, and one that does not, dead-lettered.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pysparkplug as spb

from line_agent.ingest.decode_json import decode_json
from line_agent.ingest.rows import Batch, dead_letter
from line_agent.ingest.sparkplug import NAMESPACE, REBIRTH_METRIC, SparkplugDecoder
from line_agent.mqtt import DEFAULT_ACK_RETENTION_S, Publisher
from line_agent.services import die_with_parent, free_port, mosquitto_binary, wait_for_port
from line_agent.settings import ack_retention_for

T0 = 1_790_000_000.0


# -- a broker that can be restarted and killed -----------------------------------------------------
@dataclass
class DurableBroker:
    """Mosquitto on 127.0.0.1:port with persistence saved on every change (survives SIGKILL)."""

    data_dir: Path
    port: int = 0
    extra_conf: tuple[str, ...] = ()  # more mosquitto.conf lines (e.g. "log_type all" to debug)
    #: ``autosave_interval``: with ``autosave_on_changes`` a count of changes (1: save at the next loop pass),
    #: without it seconds (a test's "the next save is far away": 3600).
    autosave_interval: int = 1
    autosave_on_changes: bool = True
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> str:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        conf = self.data_dir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence true",
                 f"persistence_location {self.data_dir}/",
                 # Save the in-memory database after every change (queued message, subscription), at the next
                 # loop pass (man mosquitto.conf, autosave_on_changes). The PUBACK goes out before that save:
                 # what a publisher must retain after it (ack_retention_s) covers the gap.
                 f"autosave_interval {self.autosave_interval}",
                 f"autosave_on_changes {'true' if self.autosave_on_changes else 'false'}",
                 "max_queued_messages 1000000", "max_inflight_messages 1000", "max_packet_size 268435455",
                 "log_dest stderr", "log_type error", "log_type warning"]
        if os.geteuid() == 0:
            lines.append("user root")
        lines += [*self.extra_conf, *filter(None, os.environ.get("LINEGUARD_CHAOS_BROKER_CONF", "").split(";"))]
        conf.write_text("\n".join(lines) + "\n")
        log = open(self.data_dir / "broker.log", "ab")  # noqa: SIM115 - handed to the child
        self._proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))
        log.close()
        wait_for_port("127.0.0.1", self.port, 20.0, self._proc)
        return self.url

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: Mosquitto saves and exits. SIGKILL: a crash (what autosave kept is what survives)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def ack_retention_s(self) -> float:
        """The post-acknowledgement retention a publisher needs against this broker's crash."""
        return ack_retention_for(self.autosave_interval if self.autosave_on_changes else 0, self.autosave_interval)


def _publisher(url: str, client_id: str, retention_s: float, on_connect: Callable[[mqtt.Client], None] | None = None,
               will: tuple[str, bytes] | None = None) -> Publisher:
    """A device's publisher: lineguard's ``Publisher`` (a memory outbox with post-acknowledgement retention,
    line_agent/outbox.py), reconnecting fast (0.2 s): faster than the ingest workers (1-2 s), the case that loses
    data with a shared subscription on Mosquitto."""
    return Publisher(url, client_id, max_queued=0, max_inflight=200, ack_retention_s=retention_s, keepalive=5,
                     reconnect_delay_s=(0.2, 1.0), on_connect=on_connect, will=will)


# -- what is published, and what it should become ---------------------------------------------------
@dataclass
class Sent:
    """One published message and the rows/dead letter it must end as."""

    topic: str
    payload: bytes
    telemetry: list[tuple[str, str, str, str, float]]  # (line, cell, device, metric, ts)
    events: list[str]  # event ids
    dead_digest: bytes | None  # set when the decoders dead-letter it
    good: bool  # part of the clean stream (not the hostile corpus)


class Expect:
    """The decoders as an oracle: the rows and dead letters each message should produce."""

    def __init__(self) -> None:
        self.sparkplug = SparkplugDecoder("")

    def of(self, topic: str, payload: bytes, good: bool = True) -> Sent:
        b = Batch()
        if topic.startswith(NAMESPACE + "/"):
            self.sparkplug.decode(topic, payload, b)
        else:
            decode_json(topic, payload, b)
        tel = [(r.line, r.cell, r.device, r.metric, round(r.ts, 3)) for r in b.telemetry]
        dead = b.dead[0].digest if b.dead else None
        return Sent(topic, payload, tel, [e.event_id for e in b.events], dead, good)


def json_messages(prefix: str, line: str, points: int, per_message: int, cells: int) -> list[tuple[str, bytes]]:
    """JSON telemetry: ``points`` unique points in messages of ``per_message``, spread over ``cells`` cells."""
    msgs: list[tuple[str, bytes]] = []
    metrics = ("a", "b", "c", "d", "e")
    per_point = len(metrics)
    k = 0
    while k * per_point < points:
        cell = f"c{len(msgs) % cells}"
        batch = []
        for _ in range(max(1, per_message // per_point)):
            if k * per_point >= points:
                break
            batch.append({"ts": T0 + k, "device": f"d{k % 7}", "metrics": {m: float(k % 1000) for m in metrics}})
            k += 1
        msgs.append((f"{prefix}/s/{line}/{cell}/telemetry", json.dumps(batch, separators=(",", ":")).encode()))
    return msgs


def hostile_json(prefix: str, line: str) -> list[tuple[str, bytes]]:
    bad = [b"{not json", b'{"ts": 1790000000, "metrics": {"x": NaN}}', b'[{"ts": "yesterday", "metrics": {"x": 1}}]',
           b'{"ts": 1790000000000, "metrics": {"x": 1}}', b'{"ts": 1790000000, "metrics": {"x": "12"}}',
           b"\xff\xfe\x00", b"", b'{"ts": 1790000000, "metrics": {}}', b'{"ts": 1790000000, "metrics": {"x": 1},'
           b' "extra": 1}', b"[" * 5000]
    out = [(f"{prefix}/s/{line}/h{i}/telemetry", p) for i, p in enumerate(bad)]
    out.append((f"{prefix}/s/{line}/h/unknownkind", b"{}"))
    out.append((f"{prefix}/too/short", b"{}"))
    return out


class EdgeNode:
    """A Sparkplug B edge node: NBIRTH (bdSeq, Will = NDEATH) and DBIRTH with aliases on every connect and on
    a rebirth request, then DDATA by alias only. Data goes through the publisher's outbox, so what is produced
    while the node is not connected is sent after the next births (a node must not publish data outside a
    session), and what the broker acknowledged just before a crash is sent again."""

    def __init__(self, url: str, group: str, node: str, device: str = "dev", metrics: int = 5,
                 retention_s: float = DEFAULT_ACK_RETENTION_S) -> None:
        self.group, self.node, self.device = group, node, device
        self.names = [f"m{j}" for j in range(metrics)]
        self.bd_seq = 0
        self.seq = 0
        self.lock = threading.Lock()
        self.sent: list[tuple[str, bytes]] = []  # everything handed to the publisher, in order
        self.rebirths = 0
        # The hook runs on paho's thread, possibly before the constructor returns: it uses its client argument.
        self.pub = _publisher(url, f"edge-{group}-{node}-{uuid.uuid4().hex[:6]}", retention_s, self._on_connect,
                              will=(self._topic("NDEATH"), self._death()))
        self.c = self.pub.client

    def _topic(self, kind: str, device: bool = False) -> str:
        return f"{NAMESPACE}/{self.group}/{kind}/{self.node}" + (f"/{self.device}" if device else "")

    def _death(self) -> bytes:
        return spb.NDeath(timestamp=None, bd_seq_metric=spb.Metric(
            timestamp=None, name="bdSeq", datatype=spb.DataType.INT64, value=self.bd_seq)).encode()

    def _next_seq(self) -> int:
        s = self.seq
        self.seq = (self.seq + 1) % 256
        return s

    def _births(self, client: mqtt.Client) -> None:
        """Straight to paho, ahead of the outbox's queue (called before it sends on a new connection)."""
        now = int(time.time() * 1000)
        self.seq = 0
        nb = spb.NBirth(timestamp=now, seq=self._next_seq(), metrics=(
            spb.Metric(timestamp=now, name="bdSeq", datatype=spb.DataType.INT64, value=self.bd_seq),
            spb.Metric(timestamp=now, name=REBIRTH_METRIC, datatype=spb.DataType.BOOLEAN, value=False)))
        db = spb.DBirth(timestamp=now, seq=self._next_seq(), metrics=tuple(
            spb.Metric(timestamp=now, name=n, alias=j + 1, datatype=spb.DataType.DOUBLE, value=None, is_null=True)
            for j, n in enumerate(self.names)))
        for topic, payload in ((self._topic("NBIRTH"), nb.encode(include_dtypes=True)),
                               (self._topic("DBIRTH", True), db.encode(include_dtypes=True))):
            self.sent.append((topic, payload))
            client.publish(topic, payload, qos=1)

    def _on_connect(self, client: mqtt.Client) -> None:
        with self.lock:
            client.on_message = self._on_message
            client.subscribe(self._topic("NCMD"), qos=1)
            self._births(client)
            # The next session's Will carries the next bdSeq (paho sends the Will set now at the next CONNECT).
            self.bd_seq += 1
            client.will_set(self._topic("NDEATH"), self._death(), qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            cmd = spb.NCmd.decode(bytes(msg.payload))
        except Exception:
            return
        if any(m.name == REBIRTH_METRIC and m.value for m in cmd.metrics):
            with self.lock:
                if self.pub.is_connected():
                    self.rebirths += 1
                    self.bd_seq -= 1  # a rebirth keeps the session's bdSeq
                    self._births(client)
                    self.bd_seq += 1

    def data(self, ts: float) -> None:
        ms = int(ts * 1000)
        with self.lock:
            dd = spb.DData(timestamp=ms, seq=self._next_seq(), metrics=tuple(
                spb.Metric(timestamp=ms, name=None, alias=j + 1, datatype=spb.DataType.DOUBLE,
                           value=float(ms % 997 + j)) for j in range(len(self.names))))
            topic, payload = self._topic("DDATA", True), dd.encode(include_dtypes=False)
            self.sent.append((topic, payload))
            self.pub.publish(topic, payload)

    def close(self, timeout_s: float = 60.0) -> None:
        self.pub.close(timeout_s)


class JsonPublisher:
    """A device (or the line runtime) publishing JSON with QoS 1 through lineguard's ``Publisher``."""

    def __init__(self, url: str, retention_s: float = DEFAULT_ACK_RETENTION_S) -> None:
        self.pub = _publisher(url, f"dev-{uuid.uuid4().hex[:8]}", retention_s)

    def send(self, topic: str, payload: bytes) -> None:
        self.pub.publish(topic, payload)

    def close(self, timeout_s: float = 60.0) -> None:
        self.pub.close(timeout_s)


# -- counting -----------------------------------------------------------------------------------------
@dataclass
class Tally:
    published: int = 0
    stored: int = 0
    dead_lettered: int = 0
    ignored: int = 0
    lost: int = 0
    duplicated: int = 0
    points_published: int = 0
    points_stored: int = 0
    points_lost: int = 0


def tally(db_url: str, sent: list[Sent], lines: list[str]) -> Tally:
    """Classify every sent message against the database (see the module docstring)."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT line, cell, device, metric, round(extract(epoch FROM ts)::numeric, 3)::float8, count(*)"
            " FROM telemetry WHERE line = ANY(%s) GROUP BY 1, 2, 3, 4, 5", (lines,)).fetchall()
        events = {r[0] for r in conn.execute("SELECT event_id FROM events WHERE line = ANY(%s)", (lines,))}
        dup_events = conn.execute("SELECT count(*) - count(DISTINCT event_id) FROM events WHERE line = ANY(%s)",
                                  (lines,)).fetchone()
        digests = {bytes(r[0]) for r in conn.execute("SELECT digest FROM dead_letter")}
    keys = {(r[0], r[1], r[2], r[3], round(r[4], 3)) for r in rows}
    t = Tally(duplicated=sum(r[5] - 1 for r in rows) + int(dup_events[0] if dup_events else 0))
    for s in sent:
        t.published += 1
        n = len(s.telemetry)
        t.points_published += n if s.good else 0
        if s.dead_digest is not None and s.dead_digest in digests:
            t.dead_lettered += 1
            continue
        if s.telemetry or s.events:
            present = sum(1 for k in s.telemetry if k in keys)
            if present == n and all(e in events for e in s.events):
                t.stored += 1
                t.points_stored += n if s.good else 0
                continue
            # Not stored as expected: maybe dead-lettered after all (e.g. data for a node the worker
            # believed dead): the message's own digest says so.
            if dead_letter(_src(s.topic), s.topic, "", s.payload).digest in digests:
                t.dead_lettered += 1
                continue
            t.lost += 1
            t.points_lost += (n - present) if s.good else 0
        else:
            if dead_letter(_src(s.topic), s.topic, "", s.payload).digest in digests:
                t.dead_lettered += 1
            elif s.dead_digest is not None:
                t.lost += 1
            else:
                t.ignored += 1
    return t


def _src(topic: str) -> str:
    return "sparkplug" if topic.startswith(NAMESPACE + "/") else "mqtt"


# -- workers as processes ------------------------------------------------------------------------------
class Workers:
    """N ``python -m line_agent.ingest`` processes; each can be SIGKILLed and restarted (same index)."""

    def __init__(self, n: int, env: dict[str, str], prefix: str, share_group: str = "",
                 log_dir: Path | None = None) -> None:
        self.n, self.env, self.prefix, self.share = n, env, prefix, share_group
        self.log_dir = log_dir
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.kills = 0

    def cmd(self, i: int) -> list[str]:
        return [sys.executable, "-m", "line_agent.ingest", "--index", str(i), "--workers", str(self.n),
                "--share-group", self.share, "--json-filter", f"{self.prefix}/#",
                "--client-prefix", f"{self.prefix}-ingest"]

    def spawn(self, i: int) -> None:
        out: Any = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"ingest-{i}.log", "ab")  # noqa: SIM115 - handed to the child
        self.procs[i] = subprocess.Popen(self.cmd(i), env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         preexec_fn=die_with_parent(signal.SIGKILL))
        if out is not subprocess.DEVNULL:
            out.close()

    def start(self) -> None:
        for i in range(self.n):
            self.spawn(i)

    def kill(self, i: int) -> None:
        p = self.procs[i]
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        self.kills += 1

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def wait_subscribed(data_dir: Path, prefix: str, n: int, timeout_s: float = 60.0) -> None:
    """Until each worker has written its ``.subscribed`` marker (its session now exists in the broker)."""
    deadline = time.monotonic() + timeout_s
    run = data_dir / "run"
    while time.monotonic() < deadline:
        if run.exists() and sum(1 for _ in run.glob(f"{prefix}-ingest-*.subscribed")) >= n:
            return
        time.sleep(0.1)
    raise RuntimeError(f"ingest workers did not subscribe within {timeout_s:.0f} s")


class Later:
    """Actions due at a time, run from the main thread (``tick``). Not from a timer thread: a child started
    with ``die_with_parent`` gets its death signal when the *thread* that started it ends."""

    def __init__(self) -> None:
        self.due: list[tuple[float, Callable[[], None]]] = []

    def at(self, delay_s: float, fn: Callable[[], None]) -> None:
        self.due.append((time.monotonic() + delay_s, fn))

    def tick(self) -> None:
        now = time.monotonic()
        ready = [d for d in self.due if d[0] <= now]
        self.due = [d for d in self.due if d[0] > now]
        for _, fn in ready:
            fn()

    def drain(self) -> None:
        while self.due:
            time.sleep(0.05)
            self.tick()


def wait_settled(db_url: str, sent: list[Sent], lines: list[str], timeout_s: float, quiet_s: float = 3.0,
                 later: Later | None = None) -> Tally:
    """Poll until nothing is lost any more, or nothing changed for ``quiet_s`` after the timeout's start."""
    if later is not None:
        later.drain()
    deadline = time.monotonic() + timeout_s
    last: Tally | None = None
    last_change = time.monotonic()
    while True:
        try:
            t = tally(db_url, sent, lines)
        except psycopg.OperationalError:  # the database outage of the scenario is not over yet
            if time.monotonic() > deadline + 60:
                raise
            time.sleep(1.0)
            continue
        if t.lost == 0:
            return t
        if last is None or (t.stored, t.dead_lettered) != (last.stored, last.dead_lettered):
            last_change = time.monotonic()
        last = t
        if time.monotonic() > deadline or time.monotonic() - last_change > max(quiet_s, 20.0):
            return t
        time.sleep(0.5)


# -- the hostile Sparkplug corpus -----------------------------------------------------------------------
def fuzz(payload: bytes, rng: random.Random) -> bytes:
    """A damaged copy of a valid payload: 1-8 random bit flips, or a truncation, or both."""
    b = bytearray(payload)
    how = rng.random()
    if how < 0.6 or len(b) < 2:
        for _ in range(rng.randint(1, 8)):
            if b:
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
    if how >= 0.4 and len(b) > 1:
        del b[rng.randrange(1, len(b)):]
    return bytes(b)


def sparkplug_corpus(group: str, nodes: int, per_node: int, rng: random.Random) -> list[tuple[str, bytes]]:
    """Per node: a valid NBIRTH/DBIRTH, then DDATA/NDATA/NBIRTH/DDEATH copies with bit flips and truncations,
    interleaved with valid DDATA (seq as a node would count, so gaps appear only where payloads break)."""
    out: list[tuple[str, bytes]] = []
    for n in range(nodes):
        node, dev = f"fz{n}", "fdev"
        base = f"{NAMESPACE}/{group}"
        now = int(T0 * 1000) + n
        names = [f"v{j}" for j in range(4)]
        nb = spb.NBirth(timestamp=now, seq=0, metrics=(
            spb.Metric(timestamp=now, name="bdSeq", datatype=spb.DataType.INT64, value=0),
            spb.Metric(timestamp=now, name="n0", alias=100, datatype=spb.DataType.INT32, value=1),
        )).encode(include_dtypes=True)
        db = spb.DBirth(timestamp=now, seq=1, metrics=tuple(
            spb.Metric(timestamp=now, name=nm, alias=j + 1, datatype=spb.DataType.DOUBLE, value=float(j))
            for j, nm in enumerate(names))).encode(include_dtypes=True)
        out += [(f"{base}/NBIRTH/{node}", nb), (f"{base}/DBIRTH/{node}/{dev}", db)]
        seq = 2
        for k in range(per_node):
            ts = now + 1000 * (k + 1)
            dd = spb.DData(timestamp=ts, seq=seq % 256, metrics=tuple(
                spb.Metric(timestamp=ts, name=None, alias=j + 1, datatype=spb.DataType.DOUBLE, value=float(k + j))
                for j in range(len(names)))).encode(include_dtypes=False)
            seq += 1
            nd = spb.NData(timestamp=ts, seq=seq % 256, metrics=(
                spb.Metric(timestamp=ts, name=None, alias=100, datatype=spb.DataType.INT32, value=k),)).encode()
            seq += 1
            out.append((f"{base}/DDATA/{node}/{dev}", dd))
            pick = rng.random()
            victim, topic = ((nb, f"{base}/NBIRTH/{node}") if pick < 0.1 else
                             (nd, f"{base}/NDATA/{node}") if pick < 0.4 else (dd, f"{base}/DDATA/{node}/{dev}"))
            out.append((topic, fuzz(victim, rng)))
        # Random bytes on every message type too.
        for kind in ("NDATA", "DBIRTH", "NDEATH", "BOGUS"):
            out.append((f"{base}/{kind}/{node}" + ("/fdev" if kind == "DBIRTH" else ""),
                        rng.randbytes(rng.randint(0, 64))))
    return out


# -- scenarios ----------------------------------------------------------------------------------------------
FAULTS = ("none", "broker_restart", "broker_crash", "broker_crash_ingest_down", "db_outage", "worker_kill", "hostile")


@dataclass
class Scenario:
    name: str
    fault: str
    workers: int = 2
    share_group: str = ""  # "" = slices (the default); a name = the old shared subscription, for comparison
    points: int = 50_000
    per_message: int = 100
    cells: int = 16
    edge_nodes: int = 4
    seconds: float = 10.0  # publishing spread over this long
    outage_s: float = 5.0
    #: The devices' post-acknowledgement retention (line_agent/outbox.py); None: what the bench's broker
    #: needs (``DurableBroker.ack_retention_s``); 0: none, as a device that forgets a message at its PUBACK.
    ack_retention_s: float | None = None
    #: The broker's persistence: 0 saves on every change (the embedded broker's default); N > 0 saves every
    #: N seconds instead (``autosave_on_changes false``: LINEGUARD_MQTT_AUTOSAVE_CHANGES=0 is N = 5).
    broker_autosave_s: int = 0


def run_scenario(sc: Scenario, pg_admin_url: str, base: Path, pg: Any = None,
                 on_log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one scenario end to end; return its counts (see ``Tally``) and timings."""
    from line_agent.store.migrate import migrate

    say = on_log or (lambda _m: None)
    name = f"chaos_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db_url = pg_admin_url.rsplit("/", 1)[0] + f"/{name}"
    migrate(db_url)
    work = base / sc.name
    broker = (DurableBroker(work / "mqtt", autosave_interval=sc.broker_autosave_s, autosave_on_changes=False)
              if sc.broker_autosave_s > 0 else DurableBroker(work / "mqtt"))
    broker.start()
    prefix = f"x{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "LINEGUARD_DATABASE_URL": db_url, "LINEGUARD_MQTT_URL": broker.url,
           "LINEGUARD_DATA_DIR": str(work / "data"), "LINEGUARD_LOG_LEVEL": "WARNING"}
    workers = Workers(sc.workers, env, prefix, sc.share_group, work / "logs")
    line, group, fz_group = "JL", "SL", "FZ"
    expect = Expect()
    later = Later()
    sent: list[Sent] = []
    t_start = time.monotonic()
    fault_note = ""
    try:
        workers.start()
        wait_subscribed(work / "data", prefix, sc.workers)
        if sc.broker_autosave_s > 0:  # the workers' sessions saved once, as on any broker up for a while
            time.sleep(sc.broker_autosave_s + 1.0)
        jmsgs = json_messages(prefix, line, sc.points, sc.per_message, sc.cells)
        extra: list[tuple[str, bytes]] = []
        if sc.fault == "hostile":
            rng = random.Random(20261201)
            extra = hostile_json(prefix, line) + sparkplug_corpus(fz_group, 4, 60, rng)
        retention = broker.ack_retention_s if sc.ack_retention_s is None else sc.ack_retention_s
        pub = JsonPublisher(broker.url, retention)
        nodes = [EdgeNode(broker.url, group, f"n{i}", retention_s=retention) for i in range(sc.edge_nodes)]
        for n in nodes:  # births go out on connect: before any data, in the oracle's order too
            if not n.pub.wait_connected(30):
                raise RuntimeError(f"edge node {n.node} did not connect to {broker.url}")
        steps = max(1, len(jmsgs))
        fault_at = steps // 3
        step_s = sc.seconds / steps
        extra_every = max(1, steps // max(1, len(extra))) if extra else 0
        ei = 0
        t_pub = time.monotonic()
        for k, (topic, payload) in enumerate(jmsgs):
            pub.send(topic, payload)
            sent.append(expect.of(topic, payload))
            if k % 5 == 0:
                for n in nodes:
                    n.data(T0 + k)
            while extra and ei < len(extra) and k >= ei * extra_every:
                pub.send(*extra[ei])
                sent.append(expect.of(*extra[ei], good=False))
                ei += 1
            if k == fault_at:
                fault_note = _inject(sc, broker, workers, pg, say, later)
            later.tick()
            delay = t_pub + (k + 1) * step_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if extra:
            fuzzed = sum(1 for t, _ in extra if t.startswith(NAMESPACE + "/"))
            fault_note = f"{fuzzed} fuzzed/random Sparkplug + {len(extra) - fuzzed} malformed JSON, mixed in"
        for topic, payload in extra[ei:]:
            pub.send(topic, payload)
            sent.append(expect.of(topic, payload, good=False))
        publish_s = time.monotonic() - t_pub
        pub.close()
        for n in nodes:
            n.close()
        # The edge nodes' messages, in the order each node sent them (births and rebirths included).
        for n in nodes:
            for topic, payload in n.sent:
                sent.append(expect.of(topic, payload))
        t = wait_settled(db_url, sent, [line, group, fz_group], timeout_s=120.0, later=later)
        rebirths = sum(n.rebirths for n in nodes)
        # Acknowledged messages the devices sent again after a disconnect (post-acknowledgement retention).
        resent = pub.pub.outbox.replayed + sum(n.pub.outbox.replayed for n in nodes)
    finally:
        workers.stop()
        broker.stop()
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return {"scenario": sc.name, "fault": sc.fault, "workers": sc.workers, "ack_retention_s": retention,
            "subscription": f"$share/{sc.share_group}" if sc.share_group else "slices", **t.__dict__,
            "rebirths_answered": rebirths, "resent_after_ack": resent, "worker_kills": workers.kills,
            "fault_detail": fault_note,
            "publish_s": round(publish_s, 1), "total_s": round(time.monotonic() - t_start, 1)}


def _inject(sc: Scenario, broker: DurableBroker, workers: Workers, pg: Any, say: Callable[[str], None],
            later: Later) -> str:
    if sc.fault in ("broker_restart", "broker_crash"):
        sig, down = ("SIGTERM", broker.stop) if sc.fault == "broker_restart" else ("SIGKILL", broker.kill)
        say(f"{sc.name}: broker {sig}, {sc.outage_s:.0f} s down")
        down()
        time.sleep(sc.outage_s)
        broker.start()
        return f"{sig}, restarted after {sc.outage_s:.0f} s"
    if sc.fault == "db_outage" and pg is not None:
        say(f"{sc.name}: PostgreSQL stopped for {sc.outage_s:.0f} s")
        pg.stop()
        later.at(sc.outage_s, pg.start)
        return f"PostgreSQL stopped {sc.outage_s:.0f} s (publishing went on)"
    if sc.fault == "broker_crash_ingest_down":
        say(f"{sc.name}: ingest stopped; 3 s later broker SIGKILL, {sc.outage_s:.0f} s down, then ingest back")
        workers.stop()

        def crash() -> None:
            broker.kill()
            time.sleep(sc.outage_s)
            broker.start()
            workers.start()

        later.at(3.0, crash)
        return f"ingest stopped, SIGKILL 3 s later, restarted after {sc.outage_s:.0f} s"
    if sc.fault == "worker_kill":
        say(f"{sc.name}: SIGKILL every worker, restart after 1 s")
        for i in range(workers.n):
            workers.kill(i)
        later.at(1.0, workers.start)
        return f"SIGKILL x{workers.n} mid-stream, restarted after 1 s"
    return ""


def default_matrix(workers: int = 2, points: int = 50_000, seconds: float = 10.0, outage_s: float = 5.0,
                   db_outage_s: float = 10.0, compare_shared: bool = True, ack_retention_s: float | None = None,
                   crash_runs: int = 1, broker_autosave_s: int = 0) -> list[Scenario]:
    """The fault matrix; ``crash_runs`` > 1 repeats each broker crash (``broker_crash_1`` ...), whose loss, if
    any, is a race with the broker's save and so differs from run to run."""
    common: dict[str, Any] = dict(workers=workers, points=points, seconds=seconds, ack_retention_s=ack_retention_s,
                                  broker_autosave_s=broker_autosave_s)
    def runs(name: str) -> list[Scenario]:
        names = [name] if crash_runs <= 1 else [f"{name}_{i + 1}" for i in range(crash_runs)]
        return [Scenario(n, name, outage_s=outage_s, **common) for n in names]

    m = [Scenario("baseline", "none", **common),
         Scenario("broker_restart", "broker_restart", outage_s=outage_s, **common),
         *runs("broker_crash"),
         *runs("broker_crash_ingest_down"),
         Scenario("db_outage", "db_outage", outage_s=db_outage_s, **common),
         Scenario("worker_kill", "worker_kill", **common),
         Scenario("hostile", "hostile", **common)]
    if compare_shared:
        m.append(Scenario("broker_restart_shared", "broker_restart", share_group="lineguard", outage_s=outage_s,
                          **common))
    return m


def markdown(results: list[dict[str, Any]]) -> str:
    cols = ["scenario", "subscription", "workers", "ack_retention_s", "published", "stored", "dead_lettered",
            "ignored", "lost", "duplicated", "resent_after_ack", "points_published", "points_stored", "points_lost",
            "fault_detail"]
    head = "| " + " | ".join(cols) + " |\n| " + " | ".join("---" for _ in cols) + " |\n"
    return head + "".join("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |\n" for r in results)


@contextlib.contextmanager
def _postgres(base: Path) -> Iterator[Any]:
    from line_agent.services import EmbeddedPostgres

    pg = EmbeddedPostgres(base / "pg")
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


def run_chaos(scenarios: list[Scenario], keep_dir: Path | None = None,
              on_log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    base = keep_dir or Path(tempfile.mkdtemp(prefix="lineguard-chaos-"))
    results: list[dict[str, Any]] = []
    with _postgres(base) as pg:
        for sc in scenarios:
            if on_log:
                on_log(f"scenario {sc.name} ({sc.fault}, {sc.workers} workers, {sc.points} points)")
            results.append(run_scenario(sc, pg.url, base, pg=pg, on_log=on_log))
            if on_log:
                on_log(json.dumps(results[-1]))
    return results
