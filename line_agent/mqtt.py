"""MQTT publishing for the line runtime (paho-mqtt, MQTT 5, QoS 1).

The runtime publishes through a disk outbox (line_agent/outbox.py): a broker outage or a restart of
lineguard loses nothing it published. Without an outbox (replays, tools), messages wait in paho's queue
while the broker is away and go out on reconnect; ``max_queued`` bounds the memory that costs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from line_agent.outbox import Outbox

log = logging.getLogger(__name__)


def parse_mqtt_url(url: str) -> tuple[str, int, str | None, str | None, bool]:
    """mqtt[s]://[user:pass@]host[:port] -> (host, port, user, password, tls)."""
    u = urlparse(url)
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise ValueError(f"not an MQTT URL: {url!r} (expected mqtt://host:port)")
    tls = u.scheme == "mqtts"
    return u.hostname, u.port or (8883 if tls else 1883), u.username, u.password, tls


class Publisher:
    """A connected MQTT 5 client that publishes with QoS 1 and counts what the broker acknowledged.

    While the broker is away, paho queues messages (``max_queued``, 0 = unbounded: only for finite
    jobs such as a replay) and resends them on reconnect.
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
    ) -> None:
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
        self.client.reconnect_delay_set(1, 5)
        self.connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        # Acknowledgements are counted through on_publish (one PUBACK per message, resent ones
        # included), so flush() also covers messages queued while the broker was away.
        self._lock = threading.Lock()
        self.sent = 0
        self.acked = 0
        self.dropped = 0
        self.client.on_publish = self._on_publish
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()
        #: With an outbox, publish() is durable: the message is on disk before it returns (see outbox.py).
        self.outbox = outbox
        if outbox is not None:
            outbox.start(self)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if not rc.is_failure:
            self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
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
        """Queue one message; False (and counted in ``dropped``) only when the bounded queue is full.

        With an outbox (QoS 1, not retained) the message goes to disk first and is sent from there: blocking
        for an fsync, so call it off the event loop."""
        if self.outbox is not None and qos == 1 and not retain:
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
        while time.monotonic() < deadline:
            if self.acked >= self.sent:
                return True
            time.sleep(0.02)
        return False

    def close(self, flush_timeout_s: float = 5.0) -> None:
        if self.outbox is not None:
            if not self.outbox.drain(flush_timeout_s):
                log.warning("%d messages stay in the outbox %s; they are sent at the next start",
                            self.outbox.pending, self.outbox.path)
            self.outbox.close()
        self.flush(flush_timeout_s)
        self.client.disconnect()
        self.client.loop_stop()
