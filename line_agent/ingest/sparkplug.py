"""Sparkplug B (``spBv1.0/<group>/<TYPE>/<node>[/<device>]``) through the ``pysparkplug`` payload classes.

State kept per edge node, as a Sparkplug host application must: the birth certificate (metric names
for aliases, data types), bdSeq of the current session, and the next expected ``seq`` (0-255, wraps).
A seq gap or an alias that no birth defined triggers a rebirth request (NCMD ``Node Control/Rebirth``).
NDEATH/DDEATH mark the node's/device's metrics stale (a ``state`` event; see ``is_stale``). Data (NDATA,
DBIRTH, DDATA) from a node that is dead or unknown, or for a device that is, is a dead letter (raw bytes
kept, reason "... rebirth requested") and triggers a rebirth request: it is not interpreted against a
session that ended (Sparkplug host rules).

The state survives restarts: ``changes()`` gives the rows to persist (``sparkplug_nodes``,
line_agent/store/nodes.py), the worker writes them before it acknowledges the messages that changed them,
and ``restore()`` loads them at start (births re-decoded from their stored payloads).

Mapping to rows (docs/MQTT.md): group -> line, edge node -> cell, device -> device (the node itself
is device ``""``). Numeric and boolean metrics -> telemetry; DateTime metrics -> telemetry with the time as
epoch seconds. Every timestamp (milliseconds) goes through ``contracts.epoch_millis``: outside 2000..2100 the
message is a dead letter, as in the JSON convention. String metrics named ``Faults/<CODE>`` ->
a fault event whose id is the string value (stable ids for de-duplication); other string metrics ->
``state`` events. ``bdSeq`` and ``Node Control/*`` are protocol bookkeeping and are not stored.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pysparkplug as spb

from line_agent.contracts import MAX_NAME, ContractError, epoch_millis
from line_agent.ingest.decode_json import MAX_PAYLOAD, stable_id
from line_agent.ingest.rows import Batch, EventRow, TelemetryRow, dead_letter
from line_agent.store.nodes import HostStateRow

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
REBIRTH_METRIC = "Node Control/Rebirth"
_NUMERIC = {
    spb.DataType.INT8, spb.DataType.INT16, spb.DataType.INT32, spb.DataType.INT64,
    spb.DataType.UINT8, spb.DataType.UINT16, spb.DataType.UINT32, spb.DataType.UINT64,
    spb.DataType.FLOAT, spb.DataType.DOUBLE, spb.DataType.BOOLEAN,
}
_STRING = {spb.DataType.STRING, spb.DataType.TEXT, spb.DataType.UUID}
_TYPES = {"NBIRTH", "DBIRTH", "NDATA", "DDATA", "NDEATH", "DDEATH"}


class SparkplugError(ValueError):
    """Reason for a dead letter."""


@dataclass
class _Node:
    bd_seq: int | None = None
    next_seq: int | None = None
    birth: spb.NBirth | None = None
    device_births: dict[str, spb.DBirth] = field(default_factory=dict)
    stale: bool = True
    stale_devices: set[str] = field(default_factory=set)
    # Persisted host state (sparkplug_nodes): raw births, times, and what changed since the last save.
    dead: bool = False  # an NDEATH of the current session arrived (else, without a birth: unknown)
    birth_raw: bytes | None = None
    device_raw: dict[str, bytes] = field(default_factory=dict)
    birth_at: float | None = None
    death_at: float | None = None
    last_seen: float | None = None
    device_seen: dict[str, float] = field(default_factory=dict)
    device_birth_at: dict[str, float] = field(default_factory=dict)
    device_death_at: dict[str, float] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)  # devices ('' = node) whose birth/state changed
    touched: set[str] = field(default_factory=set)  # devices whose seq/last_seen changed only

    @property
    def alive(self) -> bool:
        return self.birth is not None and not self.stale

    @property
    def state(self) -> str:
        return "alive" if self.alive else "dead" if self.dead else "unknown"

    def device_state(self, device: str) -> str:
        if device in self.stale_devices:
            return "dead"
        return "alive" if device in self.device_births else "unknown"


def rebirth_command(now_ms: int | None = None) -> bytes:
    """The NCMD payload that asks an edge node to publish its births again."""
    ts = now_ms if now_ms is not None else int(time.time() * 1000)
    metric = spb.Metric(timestamp=ts, name=REBIRTH_METRIC, datatype=spb.DataType.BOOLEAN, value=True)
    return spb.NCmd(timestamp=ts, metrics=(metric,)).encode(include_dtypes=True)


class SparkplugDecoder:
    """Host-application state for every edge node seen; decodes one message at a time, in order."""

    def __init__(self, site: str = "", request_rebirth: Callable[[str, str], None] | None = None,
                 rebirth_holdoff_s: float = 5.0) -> None:
        self.site = site
        self.nodes: dict[tuple[str, str], _Node] = {}
        self._request = request_rebirth
        self._holdoff = rebirth_holdoff_s
        self._last_rebirth: dict[tuple[str, str], float] = {}
        self.rebirths_requested = 0
        self.seq_gaps = 0

    def is_stale(self, group: str, node: str, device: str = "") -> bool:
        n = self.nodes.get((group, node))
        if n is None or n.stale:
            return True
        return bool(device) and (device in n.stale_devices or device not in n.device_births)

    def _rebirth(self, key: tuple[str, str], why: str) -> None:
        now = time.monotonic()
        if now - self._last_rebirth.get(key, -1e9) < self._holdoff:
            return  # one request per hold-off: the node needs a moment to answer
        self._last_rebirth[key] = now
        self.rebirths_requested += 1
        log.info("requesting rebirth of %s/%s: %s", key[0], key[1], why)
        if self._request is not None:
            self._request(*key)

    def _check_seq(self, key: tuple[str, str], node: _Node, seq: int | None) -> None:
        if seq is None:
            return
        if node.next_seq is not None and seq != node.next_seq:
            self.seq_gaps += 1
            self._rebirth(key, f"seq {seq}, expected {node.next_seq}")
        node.next_seq = (seq + 1) % 256

    def decode(self, topic: str, raw: bytes, out: Batch) -> None:
        """Decode one message into ``out``; malformed ones become a dead letter, never an exception."""
        try:
            self._decode(topic, raw, out)
        except (SparkplugError, ContractError) as exc:
            out.dead.append(dead_letter("sparkplug", topic, str(exc), raw))
        except Exception as exc:  # truncated protobuf, bad enum values, ...: the payload is at fault
            out.dead.append(dead_letter("sparkplug", topic, f"undecodable: {type(exc).__name__}: {exc}"[:500], raw))

    def _decode(self, topic: str, raw: bytes, out: Batch) -> None:
        if len(raw) > MAX_PAYLOAD:
            raise SparkplugError(f"payload of {len(raw)} bytes exceeds {MAX_PAYLOAD}")
        parts = topic.split("/")
        if len(parts) >= 2 and parts[1] == "STATE":
            return  # host application state: not line data
        if len(parts) not in (4, 5) or parts[0] != NAMESPACE:
            raise SparkplugError(f"topic {topic[:200]!r}: expected spBv1.0/<group>/<type>/<node>[/<device>]")
        group, mtype, node_id = parts[1], parts[2], parts[3]
        device = parts[4] if len(parts) == 5 else ""
        for v in (group, node_id, device):
            if len(v) > MAX_NAME:
                raise SparkplugError("topic level longer than 200 characters")
        if mtype in ("NCMD", "DCMD"):
            return  # commands to nodes (ours included): not data
        if mtype not in _TYPES:
            raise SparkplugError(f"unknown Sparkplug message type {mtype[:30]!r}")
        key = (group, node_id)
        node = self.nodes.setdefault(key, _Node())
        now = time.time()
        node.last_seen = now
        node.touched.add("")
        if device:
            node.device_seen[device] = now
            node.touched.add(device)
        if mtype in ("DBIRTH", "NDATA", "DDATA") and not node.alive:
            self._rebirth(key, f"{mtype} from a node that is {node.state}")
            raise SparkplugError(f"{mtype} from edge node {group[:50]}/{node_id[:50]} that is {node.state} "
                                 f"({'NDEATH received' if node.dead else 'no NBIRTH seen'}); rebirth requested")
        if mtype == "DDATA" and node.device_state(device) != "alive":
            self._rebirth(key, f"DDATA for a device that is {node.device_state(device)}")
            raise SparkplugError(f"DDATA for device {device[:50]!r} that is {node.device_state(device)} "
                                 f"({'DDEATH received' if device in node.stale_devices else 'no DBIRTH seen'});"
                                 " rebirth requested")
        if mtype == "NBIRTH":
            nbirth = spb.NBirth.decode(raw)
            bd_metrics = [m for m in nbirth.metrics if m.name == "bdSeq"]
            bd_value = bd_metrics[0].value if bd_metrics else None
            node.bd_seq = int(bd_value) if isinstance(bd_value, int | float) else None
            node.birth, node.stale, node.next_seq, node.dead = nbirth, False, None, False
            node.birth_raw, node.birth_at = raw, now
            node.dirty.update({"", *node.device_births, *node.stale_devices})  # old devices: unknown now
            node.device_births.clear()
            node.device_raw.clear()
            node.stale_devices.clear()
            self._check_seq(key, node, nbirth.seq)
            self._rows(group, node_id, "", nbirth.timestamp, nbirth.metrics, out)
        elif mtype == "DBIRTH":
            dbirth = spb.DBirth.decode(raw)
            node.device_births[device] = dbirth
            node.device_raw[device] = raw
            node.device_birth_at[device] = now
            node.stale_devices.discard(device)
            node.dirty.add(device)
            self._check_seq(key, node, dbirth.seq)
            self._rows(group, node_id, device, dbirth.timestamp, dbirth.metrics, out)
        elif mtype in ("NDATA", "DDATA"):
            birth: spb.NBirth | spb.DBirth | None = node.birth if mtype == "NDATA" else node.device_births.get(device)
            try:
                data = (spb.NData if mtype == "NDATA" else spb.DData).decode(raw, birth=birth)
            except (KeyError, IndexError, NotImplementedError) as exc:
                self._rebirth(key, f"unknown alias or data type in {mtype}")
                raise SparkplugError(f"{mtype} uses an alias or omits a data type that no birth defined ({exc});"
                                     " rebirth requested") from None
            if birth is None and any(not m.name for m in data.metrics):
                self._rebirth(key, f"{mtype} before any birth")
                raise SparkplugError(f"{mtype} with aliases before any birth; rebirth requested")
            self._check_seq(key, node, data.seq)
            self._rows(group, node_id, device, data.timestamp, data.metrics, out)
        elif mtype == "NDEATH":
            death = spb.NDeath.decode(raw)
            bd = death.bd_seq_metric.value
            if node.bd_seq is not None and isinstance(bd, int | float) and int(bd) != node.bd_seq:
                return  # the death of an older session, after a newer birth: ignore (Sparkplug rule)
            node.stale = True
            node.next_seq = None
            node.dead, node.death_at = True, now
            node.dirty.add("")
            self._death(group, node_id, "", "NDEATH", death.timestamp, raw, out)
        elif mtype == "DDEATH":
            ddeath = spb.DDeath.decode(raw)
            if not node.alive:
                return  # its node is already dead (or unknown): nothing more dies
            node.stale_devices.add(device)
            node.device_death_at[device] = now
            node.dirty.add(device)
            self._check_seq(key, node, ddeath.seq)
            self._death(group, node_id, device, "DDEATH", ddeath.timestamp, raw, out)
        else:
            raise SparkplugError(f"unknown Sparkplug message type {mtype[:30]!r}")

    # -- persistence (sparkplug_nodes) ----------------------------------------------------------------
    def changes(self) -> list[HostStateRow]:
        """Rows for what changed since the last call (and forget it): ``full`` where a birth or the state
        changed, seq / last seen only elsewhere. Give them back with ``unsave`` if they could not be stored."""
        out: list[HostStateRow] = []
        for (group, node_id), n in self.nodes.items():
            for dev in sorted(n.dirty | n.touched):
                out.append(self._row(group, node_id, n, dev, full=dev in n.dirty))
            n.dirty.clear()
            n.touched.clear()
        return out

    def unsave(self, rows: list[HostStateRow]) -> None:
        """Mark ``rows`` changed again (their save failed; the next ``changes`` returns them)."""
        for r in rows:
            n = self.nodes.get((r.group_id, r.edge_node))
            if n is not None:
                (n.dirty if r.full else n.touched).add(r.device)

    def _row(self, group: str, node_id: str, n: _Node, dev: str, *, full: bool) -> HostStateRow:
        if dev == "":
            birth: spb.NBirth | spb.DBirth | None = n.birth
            return HostStateRow(group, node_id, "", self.site, n.state, n.bd_seq, n.next_seq,
                                n.birth_raw if n.alive else None, _metrics(birth) if n.alive else [],
                                n.birth_at, n.death_at, n.last_seen, full)
        state = n.device_state(dev)
        raw = n.device_raw.get(dev) if state == "alive" else None
        return HostStateRow(group, node_id, dev, self.site, state, None, None, raw,
                            _metrics(n.device_births.get(dev)) if state == "alive" else [],
                            n.device_birth_at.get(dev), n.device_death_at.get(dev), n.device_seen.get(dev), full)

    def restore(self, rows: list[HostStateRow], owns: Callable[[str, str], bool] | None = None) -> int:
        """Take the persisted state (node rows before their devices); ``owns(group, node)`` filters to this
        worker's slice. A birth that no longer decodes leaves its node unknown (the next data asks for a
        rebirth). Returns the nodes restored."""
        restored = 0
        for r in sorted(rows, key=lambda r: (r.group_id, r.edge_node, r.device)):
            if owns is not None and not owns(r.group_id, r.edge_node):
                continue
            n = self.nodes.setdefault((r.group_id, r.edge_node), _Node())
            try:
                if r.device == "":
                    restored += 1
                    n.bd_seq, n.next_seq, n.birth_at, n.death_at, n.last_seen = (
                        r.bd_seq, r.next_seq, r.birth_at, r.death_at, r.last_seen)
                    n.dead = r.state == "dead"
                    if r.state == "alive" and r.birth is not None:
                        n.birth, n.birth_raw, n.stale = spb.NBirth.decode(r.birth), r.birth, False
                elif n.alive:
                    if r.last_seen is not None:
                        n.device_seen[r.device] = r.last_seen
                    if r.death_at is not None:
                        n.device_death_at[r.device] = r.death_at
                    if r.state == "dead":
                        n.stale_devices.add(r.device)
                    elif r.state == "alive" and r.birth is not None:
                        n.device_births[r.device] = spb.DBirth.decode(r.birth)
                        n.device_raw[r.device] = r.birth
                        if r.birth_at is not None:
                            n.device_birth_at[r.device] = r.birth_at
            except Exception as exc:  # a stored birth pysparkplug no longer reads: treat the node as unknown
                log.warning("sparkplug state of %s/%s/%s not restored: %s", r.group_id, r.edge_node, r.device, exc)
                if r.device == "":
                    n.birth, n.stale = None, True
        return restored

    def _death(self, group: str, node_id: str, device: str, code: str, ts_ms: int | None, raw: bytes,
               out: Batch) -> None:
        # A Will is composed when the node connects: it may carry no timestamp; then "now" is when it died.
        ts = epoch_millis(ts_ms, f"{code} timestamp") if ts_ms else time.time()
        out.events.append(EventRow(
            stable_id(group, node_id, device, code, raw), ts, self.site, group, node_id, device, "state", code,
            0, None, {"stale": True},
        ))

    def _rows(self, group: str, node_id: str, device: str, ts_ms: int | None, metrics: tuple[spb.Metric, ...],
              out: Batch) -> None:
        rows: list[TelemetryRow] = []
        events: list[EventRow] = []
        payload_ts: float | None = None
        for m in metrics:
            name = m.name or ""
            if not name or name == "bdSeq" or name.startswith("Node Control/"):
                continue
            if len(name) > MAX_NAME or "\x00" in name:
                raise SparkplugError(f"metric name too long or with NUL: {name[:50]!r}")
            # Milliseconds, range-checked like every other timestamp (a uint64 past year 9999 included).
            if m.timestamp is not None:
                ts = epoch_millis(m.timestamp, f"metric {name[:50]!r} timestamp")
            else:
                if payload_ts is None:
                    payload_ts = epoch_millis(ts_ms, "payload timestamp")
                ts = payload_ts
            if m.is_null or m.value is None:
                continue  # a null value says "unknown": nothing to store
            if m.datatype in _NUMERIC or m.datatype == spb.DataType.DATETIME:
                v = _number(m.value, name)
                if not math.isfinite(v):
                    raise SparkplugError(f"metric {name[:50]!r}: non-finite value")
                rows.append(TelemetryRow(ts, self.site, group, node_id, device, name, v))
            elif m.datatype in _STRING:
                text = str(m.value)
                if len(text) > MAX_NAME or "\x00" in text:
                    raise SparkplugError(f"metric {name[:50]!r}: string value too long or with NUL")
                if name.startswith("Faults/"):
                    if not text:
                        continue  # "no fault" (the value a birth certificate carries)
                    events.append(EventRow(text, ts, self.site, group, node_id, device, "fault", name[7:], 0, None,
                                           {"source": "sparkplug"}))
                else:
                    events.append(EventRow(stable_id(group, node_id, device, name, str(ts), text), ts, self.site,
                                           group, node_id, device, "state", name, 0, None, {"value": text}))
            # bytes, datasets, templates: not time-series values; skipped (documented in docs/MQTT.md)
        out.telemetry.extend(rows)
        out.events.extend(events)


def _metrics(birth: spb.NBirth | spb.DBirth | None) -> list[dict[str, Any]]:
    """A birth's metric table for people (the API): name, alias, data type."""
    if birth is None:
        return []
    return [{"name": m.name, "alias": m.alias, "datatype": m.datatype.name if m.datatype is not None else None}
            for m in birth.metrics]


def _number(value: object, name: str) -> float:
    """A numeric, Boolean or DateTime metric's value as a double (a DateTime as epoch seconds, UTC)."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.timestamp()
    if isinstance(value, bool | int | float):
        try:
            return float(value)
        except OverflowError:
            raise SparkplugError(f"metric {name[:50]!r}: value too large for a double") from None
    raise SparkplugError(f"metric {name[:50]!r}: expected a number, got {type(value).__name__}")
