"""MQTT publishing for the line runtime (paho-mqtt, MQTT 5, QoS 1).

Published messages wait in paho's queue while the broker is away and go out on reconnect, so a
broker restart loses nothing the runtime publishes; ``max_queued`` bounds the memory that costs.
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

log = logging.getLogger(__name__)


def parse_mqtt_url(url: str) -> tuple[str, int, str | None, str | None, bool]:
    """mqtt[s]://[user:pass@]host[:port] -> (host, port, user, password, tls)."""
    u = urlparse(url)
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise ValueError(f"not an MQTT URL: {url!r} (expected mqtt://host:port)")
    tls = u.scheme == "mqtts"
    return u.hostname, u.port or (8883 if tls else 1883), u.username, u.password, tls


class Publisher:
    """A connected MQTT 5 client that publishes JSON with QoS 1 and counts what it sent."""

    def __init__(self, url: str, client_id: str, *, max_queued: int = 100_000) -> None:
        host, port, user, password, tls = parse_mqtt_url(url)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if user:
            self.client.username_pw_set(user, password)
        if tls:
            self.client.tls_set()
        self.client.max_queued_messages_set(max_queued)
        self.client.max_inflight_messages_set(1000)
        self.client.reconnect_delay_set(1, 5)
        self._connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()
        self.published = 0
        self.dropped = 0

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if not rc.is_failure:
            self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        return self._connected.wait(timeout_s)

    def publish_json(self, topic: str, payload: dict[str, Any] | list[Any], qos: int = 1) -> bool:
        """Queue ``payload`` as JSON; False (and counted) only if the bounded queue is full."""
        info = self.client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=qos)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
            log.warning("MQTT queue full, message to %s not queued", topic)
            return False
        self.published += 1
        return True

    def publish_bytes(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued QoS 1 message is acknowledged by the broker."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            # paho keeps unacknowledged messages in _out_messages until PUBACK.
            if not self.client._out_messages:  # no public accessor for the outbox
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self.flush(5.0)
        self.client.disconnect()
        self.client.loop_stop()
