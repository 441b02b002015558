"""Sparkplug B command driver: writes are DCMD (or NCMD) messages, reads come from DDATA/NDATA and births.

Payloads are encoded and decoded with pysparkplug; the MQTT transport is paho-mqtt. A write is confirmed
only when the edge node reports the written value back in a DDATA/NDATA message (read back), so a command
the PLC ignored is never reported as done.

The driver is CONNECTED only while the broker link is up AND the edge node/device is alive (born and not
dead). A NDEATH/DDEATH, or a broker disconnect, makes it reconnect: values are dropped, never served stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from pysparkplug import (
    DataType,
    DBirth,
    DCmd,
    DData,
    MessageType,
    Metric,
    NBirth,
    NCmd,
    NData,
    Topic,
    get_current_timestamp,
)

from hardware.driver import BaseDriver, Value
from hardware.tags import Tag, TagMap
from line_agent.mqtt import parse_mqtt_url

SPARKPLUG_TYPES: dict[str, DataType] = {
    "bool": DataType.BOOLEAN,
    "int16": DataType.INT16,
    "uint16": DataType.UINT16,
    "int32": DataType.INT32,
    "float32": DataType.FLOAT,
}
REBIRTH_METRIC = "Node Control/Rebirth"
_client_ids = itertools.count(1)


def new_paho_client(client_id: str) -> mqtt.Client:
    """A paho client on the v1 callback API (paho 1.x; and 2.x, where that API must be asked for)."""
    api = getattr(mqtt, "CallbackAPIVersion", None)
    if api is not None:  # paho-mqtt >= 2
        return mqtt.Client(api.VERSION1, client_id=client_id, clean_session=True)  # type: ignore[call-arg,unused-ignore]
    return mqtt.Client(client_id=client_id, clean_session=True)


def to_metric_value(tag: Tag, raw: Value) -> Value:
    if tag.type == "bool":
        return bool(raw)
    return float(raw) if tag.type == "float32" else int(raw)


def make_metric(tag: Tag, raw: Value, ts: int | None = None) -> Metric:
    return Metric(
        timestamp=ts if ts is not None else get_current_timestamp(),
        name=metric_name(tag),
        datatype=SPARKPLUG_TYPES[tag.type],
        value=to_metric_value(tag, raw),
    )


def metric_name(tag: Tag) -> str:
    if tag.mqtt is None:
        raise KeyError(f"tag {tag.name!r} has no mqtt address")
    return tag.mqtt.metric


@dataclass(frozen=True, slots=True)
class SparkplugTarget:
    """Where the PLC lives in the Sparkplug namespace. device_id None = node-level (NCMD/NDATA)."""

    group_id: str
    edge_node_id: str
    device_id: str | None = None

    def topic(self, kind: str) -> str:
        """kind: CMD, DATA, BIRTH or DEATH; node- or device-level from device_id."""
        prefix = "D" if self.device_id is not None else "N"
        return str(
            Topic(
                group_id=self.group_id,
                message_type=MessageType(prefix + kind),
                edge_node_id=self.edge_node_id,
                device_id=self.device_id,
            )
        )

    def node_topic(self, kind: str) -> str:
        return str(Topic(group_id=self.group_id, message_type=MessageType("N" + kind), edge_node_id=self.edge_node_id))


class SparkplugDriver(BaseDriver):
    protocol = "sparkplug"

    def __init__(
        self,
        tags: TagMap,
        url: str,
        target: SparkplugTarget,
        *,
        io_timeout_s: float = 1.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        client_id: str | None = None,
    ) -> None:
        super().__init__(
            tags, io_timeout_s=io_timeout_s, backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s
        )
        self.host, self.port, self.username, self.password, self.tls = parse_mqtt_url(url)
        self.target = target
        self.client_id = client_id or f"lineguard-host-{tags.line}-{next(_client_ids)}-{time.time_ns() % 10**9}"
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._values: dict[str, Value] = {}
        self._versions: dict[str, int] = {}  # bumped on every report of a tag, to spot the read-back
        self._born = asyncio.Event()
        self._changed = asyncio.Event()  # set (in the event loop) on every data message
        self._by_metric = {t.mqtt.metric: t for t in tags if t.mqtt is not None}

    # ----- paho callbacks (paho's network thread): hand everything to the event loop
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: int) -> None:
        pass  # subscriptions are made in _open once the connection future resolves

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, rc: int) -> None:
        if rc != 0 and self._loop is not None and client is self._client:
            self._loop.call_soon_threadsafe(self._device_lost, ConnectionError(f"broker disconnect rc={rc}"))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._loop is None or client is not self._client:
            return
        try:
            mtype = Topic.from_str(msg.topic).message_type
        except Exception:
            return
        if not isinstance(mtype, MessageType):
            return
        dev = self.target.device_id is not None
        if mtype in (MessageType.DDEATH, MessageType.NDEATH):
            # An NDEATH (broker-sent will) takes every device of the node with it.
            if mtype == MessageType.NDEATH or dev:
                self._loop.call_soon_threadsafe(self._device_lost, ConnectionError(f"edge node {mtype.value}"))
            return
        payload_cls: Any = {
            MessageType.DBIRTH: DBirth,
            MessageType.DDATA: DData,
            MessageType.NBIRTH: NBirth,
            MessageType.NDATA: NData,
        }.get(mtype)
        if payload_cls is None:
            return
        if dev != (mtype in (MessageType.DBIRTH, MessageType.DDATA)):
            return  # node-level message while we talk to a device (or the reverse)
        try:
            payload = payload_cls.decode(bytes(msg.payload))
        except Exception:
            return  # a malformed message from someone else must not kill the network thread
        updates: dict[str, Value] = {}
        for m in payload.metrics:
            tag = self._by_metric.get(m.name or "")
            if tag is not None and m.value is not None and not m.is_null:
                updates[tag.name] = to_metric_value(tag, m.value)
        born = mtype in (MessageType.DBIRTH, MessageType.NBIRTH)
        self._loop.call_soon_threadsafe(self._apply, updates, born)

    # ----- event-loop side
    def _apply(self, updates: dict[str, Value], born: bool) -> None:
        with self._lock:
            if born:
                self._values = dict(updates)
            else:
                self._values.update(updates)
            for name in updates:
                self._versions[name] = self._versions.get(name, 0) + 1
        if born:
            self._born.set()
        self._changed.set()

    def _device_lost(self, exc: BaseException) -> None:
        with self._lock:
            self._values = {}
        self._born.clear()
        self._changed.set()
        self._mark_lost(exc)

    async def _open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._born.clear()
        with self._lock:
            self._values = {}
        client = new_paho_client(self.client_id)
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls:  # mqtts://
            client.tls_set()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        connected: asyncio.Future[int] = self._loop.create_future()
        loop = self._loop

        def resolve(rc: int) -> None:
            if not connected.done():
                connected.set_result(rc)

        def on_connect(c: mqtt.Client, u: Any, f: Any, rc: int) -> None:
            loop.call_soon_threadsafe(resolve, rc)

        client.on_connect = on_connect
        await asyncio.to_thread(client.connect, self.host, self.port, 10)
        client.loop_start()
        rc = await asyncio.wait_for(connected, self.io_timeout_s * 3)
        if rc != 0:
            raise ConnectionError(f"broker refused connection rc={rc}")
        t = self.target
        topics = [(t.topic("BIRTH"), 1), (t.topic("DATA"), 1), (t.topic("DEATH"), 1), (t.node_topic("DEATH"), 1)]
        result, _ = client.subscribe(topics)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"subscribe failed rc={result}")
        # Ask the edge node for a rebirth so that we start from a complete, current set of values.
        rebirth = NCmd(
            timestamp=get_current_timestamp(),
            metrics=(
                Metric(
                    timestamp=get_current_timestamp(),
                    name=REBIRTH_METRIC,
                    datatype=DataType.BOOLEAN,
                    value=True,
                ),
            ),
        )
        await asyncio.sleep(0.05)  # let SUBACK land before the birth is published
        client.publish(t.node_topic("CMD"), rebirth.encode(include_dtypes=True), qos=0)
        try:
            await asyncio.wait_for(self._born.wait(), self.io_timeout_s * 2)
        except TimeoutError:
            raise ConnectionError("edge node did not answer the rebirth request (offline?)") from None

    async def _shutdown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)

    async def _read_raw(self, tag: Tag) -> Value:
        metric_name(tag)
        with self._lock:
            if tag.name not in self._values:
                raise LookupError(f"the edge node has not reported {tag.name}")
            return self._values[tag.name]

    async def _write_raw(self, tag: Tag, raw: Value) -> Value | None:
        client = self._client
        if client is None or not client.is_connected():
            raise ConnectionError("mqtt client not connected")
        metric = make_metric(tag, raw)
        payload_cls: Any = DCmd if self.target.device_id is not None else NCmd
        payload = payload_cls(timestamp=get_current_timestamp(), metrics=(metric,))
        want = to_metric_value(tag, raw)
        with self._lock:
            version = self._versions.get(tag.name, 0)  # only reports after this one count as read-back
        self._changed.clear()
        info = client.publish(self.target.topic("CMD"), payload.encode(include_dtypes=True), qos=0)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish failed rc={info.rc}")
        seen: Value | None = None
        # Shorter than BaseDriver's own timeout, which would count as a lost link.
        deadline = time.monotonic() + self.io_timeout_s * 0.8
        while True:
            with self._lock:
                if self._versions.get(tag.name, 0) > version and tag.name in self._values:
                    seen = self._values[tag.name]
                    if seen == want:
                        return seen
            left = deadline - time.monotonic()
            if left <= 0:
                # Nothing, or not our value: let BaseDriver report the mismatch with what we saw.
                return seen if seen is not None else _NO_REPLY
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)


class _NoReply:
    def __repr__(self) -> str:
        return "<no reply from edge node>"


_NO_REPLY: Any = _NoReply()
