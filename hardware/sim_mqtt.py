"""The virtual PLC as a Sparkplug B edge node (device) on an MQTT broker, for the Sparkplug command driver.

Publishes NBIRTH/DBIRTH on connect (and on a "Node Control/Rebirth" NCMD), DDATA on change (and right
after every DCMD, with the commanded metrics as the PLC now holds them), and registers an NDEATH will so
the broker announces a crash. Runs hardware/plc_logic.py, like the Modbus and OPC UA simulators.

A test in another process drives the physical inputs with an NCMD to the node carrying the simulator-only
Boolean metrics `SIM_ESTOP_METRIC` (e-stop, true = pressed) and `SIM_GUARD_METRIC` (guard door, true = open);
`sim_input_payload()` encodes one. They are not PLC tags and the command driver never sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from pysparkplug import (
    DataType,
    DBirth,
    DCmd,
    DData,
    DDeath,
    Metric,
    NBirth,
    NCmd,
    NData,
    NDeath,
    Topic,
    get_current_timestamp,
)

from hardware.drivers import SparkplugUrl
from hardware.mqtt_cmd import (
    REBIRTH_METRIC,
    SparkplugTarget,
    make_metric,
    new_paho_client,
    to_metric_value,
)
from hardware.plc_logic import PlcWriteError, RawValue
from hardware.sim_base import SCAN_PERIOD_S, ThreadedSim
from hardware.tags import Tag, TagMap
from line_agent.mqtt import parse_mqtt_url

REPORT_PERIOD_S = 0.05  # report-by-exception, at most this often for values the PLC changes itself
SIM_ESTOP_METRIC = "Sim Control/E-Stop"
SIM_GUARD_METRIC = "Sim Control/Guard Door"


def sim_input_payload(*, estop: bool | None = None, guard_door: bool | None = None) -> bytes:
    """An encoded NCMD setting the simulator's e-stop and/or guard door; publish it on the node's NCMD topic
    (`SparkplugTarget.node_topic("CMD")`, e.g. ``spBv1.0/GROUP/NCMD/NODE``)."""
    ts = get_current_timestamp()
    metrics = tuple(
        Metric(timestamp=ts, name=name, datatype=DataType.BOOLEAN, value=value)
        for name, value in ((SIM_ESTOP_METRIC, estop), (SIM_GUARD_METRIC, guard_door))
        if value is not None
    )
    return NCmd(timestamp=ts, metrics=metrics).encode(include_dtypes=True)


class SimSparkplugNode(ThreadedSim):
    name = "sim-plc-sparkplug"

    def __init__(
        self,
        url: str,
        target: SparkplugTarget | None = None,
        *,
        watchdog_s: float = 1.0,
        gate_pulse_s: float = 0.05,
        tags: TagMap | None = None,
    ) -> None:
        super().__init__(watchdog_s=watchdog_s, gate_pulse_s=gate_pulse_s)
        self.host, self.port, self.username, self.password, self.tls = parse_mqtt_url(url)
        self.tags = tags or TagMap.load()
        self.target = target or SparkplugTarget("lineguard", f"{self.tags.line}-plc", "plc")
        self._mtags: dict[str, Tag] = {t.mqtt.metric: t for t in self.tags if t.mqtt is not None}
        self._client: mqtt.Client | None = None
        self._seq = 0
        self._bd_seq = 0
        self._pub_lock = threading.Lock()
        self._last_sent: dict[str, RawValue] = {}
        self.commands_received = 0
        self._crashed = False

    @property
    def url(self) -> str:
        """What a line YAML's ``plc.url`` says for this simulator (driver ``sparkplug``).

        Without the broker's user and password, which are not echoed to logs: add them in the YAML.
        """
        t = self.target
        return SparkplugUrl(self.host, self.port, None, None, t.group_id, t.edge_node_id, t.device_id).url

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) % 256
        return seq

    def _bd_metric(self) -> Metric:
        return Metric(timestamp=get_current_timestamp(), name="bdSeq", datatype=DataType.INT64, value=self._bd_seq)

    def _publish(self, topic: str, payload: bytes) -> None:
        if self._client is not None:
            self._client.publish(topic, payload, qos=0)

    def _births(self) -> None:
        with self._pub_lock:
            ts = get_current_timestamp()
            self._seq = 0
            snap = self.logic.snapshot()
            metrics = tuple(make_metric(t, snap[t.name], ts) for t in self._mtags.values() if t.name in snap)
            node_metrics: tuple[Metric, ...] = (
                self._bd_metric(),
                Metric(timestamp=ts, name=REBIRTH_METRIC, datatype=DataType.BOOLEAN, value=False),
            )
            if self.target.device_id is None:
                node_metrics += metrics  # node-level PLC: its values are born with the node (no DBIRTH)
            self._publish(
                self.target.node_topic("BIRTH"),
                NBirth(timestamp=ts, seq=self._next_seq(), metrics=node_metrics).encode(include_dtypes=True),
            )
            if self.target.device_id is not None:
                self._publish(
                    self.target.topic("BIRTH"),
                    DBirth(timestamp=ts, seq=self._next_seq(), metrics=metrics).encode(include_dtypes=True),
                )
            self._last_sent = {t.name: snap[t.name] for t in self._mtags.values() if t.name in snap}

    def _report(self, names: list[str] | None) -> None:
        """DDATA with the given tags (None: every tag that changed since the last report)."""
        with self._pub_lock:
            snap = self.logic.snapshot()
            if names is None:
                names = [t.name for t in self._mtags.values() if snap.get(t.name) != self._last_sent.get(t.name)]
            if not names:
                return
            ts = get_current_timestamp()
            metrics = tuple(make_metric(self.tags.get(n), snap[n], ts) for n in names if n in snap)
            for n in names:
                self._last_sent[n] = snap[n]
            payload_cls: Any = DData if self.target.device_id is not None else NData
            self._publish(
                self.target.topic("DATA"),
                payload_cls(timestamp=ts, seq=self._next_seq(), metrics=metrics).encode(include_dtypes=True),
            )

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = Topic.from_str(msg.topic)
            mtype = str(topic.message_type)
            payload = (DCmd if mtype == "DCMD" else NCmd).decode(bytes(msg.payload))
        except Exception:
            return  # garbage on our command topic: ignore, like a PLC gateway would
        inputs_set = False
        if mtype == "NCMD":
            setters = {SIM_ESTOP_METRIC: self.logic.set_estop, SIM_GUARD_METRIC: self.logic.set_guard_door}
            for m in payload.metrics:
                setter = setters.get(m.name or "")
                if setter is not None and m.value is not None:
                    setter(bool(m.value))
                    inputs_set = True
            if any(m.name == REBIRTH_METRIC and m.value for m in payload.metrics):
                self._births()
                return
        if (mtype == "DCMD") != (self.target.device_id is not None):
            if inputs_set:
                self._report(None)  # the input change reaches the host now, not at the next report tick
            return
        self.commands_received += 1
        written: list[str] = []
        for m in payload.metrics:
            tag = self._mtags.get(m.name or "")
            if tag is None or m.value is None:
                continue
            with contextlib.suppress(PlcWriteError, ValueError, TypeError):
                self.logic.write(tag.name, to_metric_value(tag, m.value))  # type: ignore[arg-type]
            written.append(tag.name)
        # Echo what the PLC now holds for every commanded tag: this is the driver's read-back.
        self._report(written)

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        client = new_paho_client(f"sim-{self.target.edge_node_id}-{time.time_ns() % 10**9}")
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls:  # mqtts://
            client.tls_set()
        self._bd_seq = int(time.time()) % 256
        client.will_set(
            self.target.node_topic("DEATH"),
            NDeath(timestamp=get_current_timestamp(), bd_seq_metric=self._bd_metric()).encode(),
            qos=1,
        )
        connected = threading.Event()

        def on_connect(c: mqtt.Client, u: Any, f: Any, rc: int) -> None:
            if rc == 0:
                c.subscribe([(self.target.topic("CMD"), 1), (self.target.node_topic("CMD"), 1)])
                connected.set()

        client.on_connect = on_connect
        client.on_message = self._on_message
        self._client = client
        await asyncio.to_thread(client.connect, self.host, self.port, 10)
        client.loop_start()
        try:
            if not await asyncio.to_thread(connected.wait, 10):
                raise ConnectionError("sparkplug simulator could not connect to the broker")
            await asyncio.sleep(0.05)
            self._births()
            if ready is not None:
                ready.set()
            self._ready.set()
            stop = self._new_stop_event()
            last_report = 0.0
            while not stop.is_set():
                self.logic.scan()
                now = time.monotonic()
                if now - last_report >= REPORT_PERIOD_S:
                    last_report = now
                    self._report(None)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), SCAN_PERIOD_S)
            # Clean shutdown: announce the device and the node as gone (a crash leaves that to the will).
            if self._crashed:
                pass
            elif self.target.device_id is not None:
                self._publish(
                    self.target.topic("DEATH"),
                    DDeath(timestamp=get_current_timestamp(), seq=self._next_seq()).encode(),
                )
            if not self._crashed:
                self._publish(
                    self.target.node_topic("DEATH"),
                    NDeath(timestamp=get_current_timestamp(), bd_seq_metric=self._bd_metric()).encode(),
                )
                await asyncio.sleep(0.05)
        finally:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
            self._client = None

    def crash(self) -> None:
        """Drop the broker connection without DEATH messages: the broker then publishes the NDEATH will."""
        self._crashed = True
        client = self._client
        if client is not None:
            sock: Any = client.socket()
            if sock is not None:
                # shutdown, not close: paho's network thread sees a lost connection instead of a bad fd.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self.stop()
