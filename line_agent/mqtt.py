"""MQTT URLs and publishing (paho-mqtt, MQTT 5, QoS 1) for everything lineguard sends.

``parse_mqtt_url`` is the one parser of broker URLs (the runtime, ingest, the PLC drivers and simulators).

Every QoS 1 message a ``Publisher`` sends goes through an outbox (line_agent/outbox.py): the runtime's is a
disk file (a broker outage or a restart of lineguard loses nothing it published); tools (replays, the demo's
simulated devices, the chaos bench's devices) get one in memory. Either way an acknowledged message is kept
for ``ack_retention_s`` and sent again after a reconnect, so a broker crash before its next save loses
nothing (``Settings.ack_retention_s``, tied to the broker's autosave).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, cast
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from line_agent.settings import ack_retention_for

if TYPE_CHECKING:
    from line_agent.outbox import Outbox

log = logging.getLogger(__name__)

#: The retention window for a Mosquitto that saves on every change (the embedded broker's default).
DEFAULT_ACK_RETENTION_S = ack_retention_for(1)


class MqttUrl(NamedTuple):
    """A broker address: ``mqtt[s]://[user:pass@]host[:port][/path]`` (``tcp://`` is ``mqtt://``)."""

    host: str
    port: int
    user: str | None
    password: str | None
    tls: bool


def parse_mqtt_url(url: str) -> MqttUrl:
    """``mqtt[s]://[user:pass@]host[:port]`` -> (host, port, user, password, tls); credentials percent-decoded,
    the port 1883 (8883 for mqtts) when absent, a path (a Sparkplug PLC's group/node) ignored. ValueError
    naming the URL's form for anything else."""
    try:
        u = urlparse(url)
        port = u.port
    except ValueError as exc:  # a port that is not a number or out of range
        raise ValueError(f"not an MQTT URL: {url!r} ({exc}; expected mqtt://host:port)") from None
    if u.scheme not in ("mqtt", "mqtts", "tcp") or not u.hostname:
        raise ValueError(f"not an MQTT URL: {url!r} (expected mqtt://host:port or mqtts://host:port)")
    tls = u.scheme == "mqtts"
    return MqttUrl(u.hostname, port or (8883 if tls else 1883),
                   unquote(u.username) if u.username is not None else None,
                   unquote(u.password) if u.password is not None else None, tls)


class Publisher:
    """A connected MQTT 5 client that publishes QoS 1 through an outbox and counts what the broker acknowledged.

    ``outbox``: the runtime's disk outbox; None: one in memory holding at most ``max_queued`` messages (0 =
    unbounded: only for finite jobs such as a replay), retaining acknowledged ones ``ack_retention_s``.
    ``on_connect(client)`` runs on each connection before anything queued is sent (a Sparkplug node's births).
    QoS 0 and retained messages go straight to paho.
    """

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        max_queued: int = 100_000,
        max_inflight: int = 1000,
        will: tuple[str, bytes] | None = None,
        outbox: Outbox | None = None,
        ack_retention_s: float = DEFAULT_ACK_RETENTION_S,
        keepalive: int = 30,
        reconnect_delay_s: tuple[float, float] = (1.0, 5.0),
        on_connect: Callable[[mqtt.Client], None] | None = None,
    ) -> None:
        from line_agent.outbox import Outbox

        host, port, user, password, tls = parse_mqtt_url(url)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if user:
            self.client.username_pw_set(user, password)
        if tls:
            self.client.tls_set()
        if will:
            self.client.will_set(will[0], will[1], qos=1)
        self.client.max_queued_messages_set(max_queued)
        self.client.max_inflight_messages_set(max_inflight)
        self.client.reconnect_delay_set(cast(int, reconnect_delay_s[0]), cast(int, reconnect_delay_s[1]))
        self.connected = threading.Event()
        self._on_connect_hook = on_connect
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        # Acknowledgements are counted through on_publish (one PUBACK per message, resent ones
        # included), so flush() also covers messages queued while the broker was away.
        self._lock = threading.Lock()
        self.sent = 0
        self.acked = 0
        self.dropped = 0
        #: Link drops so far; the outbox counts them to re-send what was in flight or just acknowledged.
        self.disconnects = 0
        self.client.on_publish = self._on_publish
        self.client.connect_async(host, port, keepalive=keepalive)
        self.client.loop_start()
        #: Every QoS 1 publish() goes to the outbox first (see outbox.py); a disk one makes it durable.
        self.outbox: Outbox = outbox if outbox is not None else Outbox(
            None, max_messages=max_queued, batch=min(500, max_inflight), name="memory", retention_s=ack_retention_s)
        self.outbox.start(self)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if not rc.is_failure:
            if self._on_connect_hook is not None:
                try:
                    self._on_connect_hook(client)
                except Exception:  # a hook's bug must not kill paho's network thread
                    log.exception("on_connect hook of %s failed", client._client_id)
            self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        with self._lock:
            self.disconnects += 1
        self.connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any = None, props: Any = None) -> None:
        with self._lock:
            self.acked += 1

    # ----- the outbox's transport (line_agent/outbox.py)
    def is_connected(self) -> bool:
        return self.connected.is_set()

    def send(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo | None:
        """Queue one QoS 1 message; the returned info says when the broker acknowledged it (None: not queued)."""
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        with self._lock:
            self.sent += 1
        return info

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        return self.connected.wait(timeout_s)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> bool:
        """Queue one message; False (and counted in ``dropped``) only when paho's bounded queue is full.

        QoS 1, not retained: the message goes to the outbox first and is sent from there (a disk outbox blocks
        for an fsync, so call it off the event loop)."""
        if qos == 1 and not retain:
            self.outbox.put(topic, payload)
            return True
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
            log.warning("MQTT queue full, message to %s not queued", topic)
            return False
        if qos > 0:
            with self._lock:
                self.sent += 1
        return True

    def publish_json(self, topic: str, payload: dict[str, Any] | list[Any], qos: int = 1) -> bool:
        return self.publish(topic, json.dumps(payload, separators=(",", ":")), qos=qos)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until the broker acknowledged every QoS 1 message published; False on timeout."""
        deadline = time.monotonic() + timeout_s
        return self.outbox.drain(timeout_s) and self._wait_acked(deadline)

    def _wait_acked(self, deadline: float) -> bool:
        """Until every message handed to paho was acknowledged (the outbox's and the direct ones)."""
        while True:
            if self.acked >= self.sent:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def close(self, flush_timeout_s: float = 5.0) -> None:
        """Send what is pending, stay connected until the newest acknowledgement is past the retention window
        (a broker crash right after it is still covered), then disconnect. What could not be sent stays in a
        disk outbox for the next start; a memory outbox loses it (logged)."""
        if not self.outbox.linger(flush_timeout_s):
            where = (f"the outbox {self.outbox.path}; they are sent at the next start" if self.outbox.path
                     else "memory and are lost")
            if self.outbox.pending:
                log.warning("%d messages were not acknowledged by the broker; they stay in %s",
                            self.outbox.pending, where)
        self.outbox.close()
        self._wait_acked(time.monotonic() + min(flush_timeout_s, 1.0))
        self.client.disconnect()
        self.client.loop_stop()
