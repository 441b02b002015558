#!/usr/bin/env python3
"""What saving on every change costs: QoS 1 publish rate through lineguard's embedded Mosquitto with
the old setting (every 5 s) and the new one (after every change), ingest online and offline.

    .venv/bin/python infra/mosquitto/bench-autosave.py [--messages 10000] [--inflight 100]

Offline: an ingest worker's persistent session exists but it is disconnected, so every message queues
(and the whole queue is in every save: the cost grows with the queue). Online: it is connected and
acknowledges as it receives. Prints one line per case, messages per second as acknowledged to the publisher.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from line_agent.services import EmbeddedBroker, LineScope


def _client(url: str, client_id: str, inflight: int, clean: bool) -> mqtt.Client:
    u = urlsplit(url)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.username_pw_set(u.username, u.password)
    c.max_inflight_messages_set(inflight)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect(u.hostname or "127.0.0.1", u.port or 1883, clean_start=clean, properties=props)
    c.loop_start()
    return c


def run_case(base: Path, autosave_changes: int, n: int, inflight: int, online: bool) -> float:
    d = base / f"b{autosave_changes}-{'on' if online else 'off'}"
    with EmbeddedBroker(d, lines=[LineScope("plantA", "press")], autosave_changes=autosave_changes) as b:
        sub = _client(b.url_for("ingest"), "lineguard-ingest-0", 1000, clean=True)
        sub.subscribe("lineguard/#", qos=1)
        time.sleep(0.3)
        if not online:
            sub.disconnect()
            sub.loop_stop()
            time.sleep(0.2)
        pub = _client(b.url_for("runtime"), "bench-runtime", inflight, clean=True)
        time.sleep(0.2)
        payload = b"x" * 200
        t0 = time.perf_counter()
        infos = [pub.publish("lineguard/plantA/press/top/inspection", payload, qos=1) for _ in range(n)]
        for info in infos:
            info.wait_for_publish(600)
        rate = n / (time.perf_counter() - t0)
        pub.disconnect()
        pub.loop_stop()
        if online:
            sub.disconnect()
            sub.loop_stop()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--messages", type=int, nargs="+", default=[2000, 10000])
    ap.add_argument("--inflight", type=int, default=100, help="publisher's unacknowledged window (runtime: 1000)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="lineguard-bench-autosave-"))
    try:
        for online in (True, False):
            for n in args.messages:
                before = run_case(base, 0, n, args.inflight, online)
                after = run_case(base, 1, n, args.inflight, online)
                print(f"ingest {'online ' if online else 'offline'} {n:>6} msgs, inflight {args.inflight}: "
                      f"every 5 s {before:8.0f} msg/s | every change {after:8.0f} msg/s ({after / before:.2f}x)",
                      flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
