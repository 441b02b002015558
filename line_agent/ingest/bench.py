"""``lineguard bench ingest``: sustained end-to-end points/s against the raw COPY ceiling, in one run.

End to end = publish (QoS 1, many points per message) -> Mosquitto -> ingest worker process(es) ->
COPY + INSERT ON CONFLICT -> committed rows counted in the database. The ceiling = the same rows
COPYed straight into the same table by one client, with no broker, no JSON and no de-duplication
staging. Both run on embedded PostgreSQL and Mosquitto started for the run in a temporary directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from line_agent.services import EmbeddedBroker, EmbeddedPostgres


def _payloads(points: int, per_message: int, metrics_per_point: int, t0: float
              ) -> tuple[list[tuple[str, bytes]], list[tuple]]:
    """(cell, JSON telemetry message) and the same points as rows; device d, metric m, one sample per second."""
    msgs: list[tuple[str, bytes]] = []
    rows: list[tuple] = []
    per_msg_pts = max(1, per_message // metrics_per_point)
    cells = [f"cell{j}" for j in range(8)]  # several cells: N sliced workers each get a share
    n_pts = points // metrics_per_point
    names = [f"m{j}" for j in range(metrics_per_point)]
    for start in range(0, n_pts, per_msg_pts):
        cell = cells[len(msgs) % len(cells)]
        batch = []
        for k in range(start, min(n_pts, start + per_msg_pts)):
            device = f"dev{k % 50}"
            ts = t0 + k // 50
            metrics = {n: float((k * 7 + j) % 1000) / 10.0 for j, n in enumerate(names)}
            batch.append({"ts": ts, "device": device, "metrics": metrics})
            for n, v in metrics.items():
                rows.append((ts, "bench", "B1", cell, device, n, v))
        msgs.append((cell, json.dumps(batch, separators=(",", ":")).encode()))
    return msgs, rows


def _count(url: str, line: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM telemetry WHERE line = %s", (line,)).fetchone()
        return int(row[0]) if row else 0


def _raw_copy(url: str, rows: list[tuple]) -> float:
    """Seconds to binary-COPY ``rows`` (as line B2) into telemetry in one transaction: the ceiling."""
    from datetime import UTC, datetime

    stamps: dict[float, datetime] = {}
    prepared = [(stamps.setdefault(r[0], datetime.fromtimestamp(r[0], UTC)), r[1], "B2", *r[3:]) for r in rows]
    with psycopg.connect(url) as conn:
        t = time.perf_counter()
        with conn.cursor() as cur, cur.copy(
            "COPY telemetry (ts, site, line, cell, device, metric, value) FROM STDIN (FORMAT BINARY)"
        ) as cp:
            cp.set_types(["timestamptz", "text", "text", "text", "text", "text", "float8"])
            for r in prepared:
                cp.write_row(r)
        conn.commit()
        return time.perf_counter() - t


def _wait_subscribed(pub: Any, url: str, workers: int, timeout_s: float = 60.0) -> None:
    """Publish probe events until they are stored: the workers are subscribed before the clock starts."""
    deadline = time.monotonic() + timeout_s
    k = 0
    while time.monotonic() < deadline:
        for _ in range(4 * workers):  # probes on many cells: each worker's slice gets some
            k += 1
            pub.publish(f"lineguard/bench/probe/cell{k}/event",
                        json.dumps({"event_id": f"probe-{k}", "ts": time.time(), "kind": "probe"}), qos=1)
        time.sleep(0.5)
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM events WHERE kind = 'probe'").fetchone()
        if row and row[0] >= 4 * workers:
            time.sleep(0.5)
            return
    raise RuntimeError("ingest workers did not start storing within 60 s")


def run_bench(points: int = 2_000_000, per_message: int = 1000, workers: int = 2, metrics_per_point: int = 10,
              timeout_s: float = 300.0, keep_dir: Path | None = None) -> dict[str, Any]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from line_agent.store.migrate import migrate

    base = keep_dir or Path(tempfile.mkdtemp(prefix="lineguard-bench-"))
    t_data = float(int(time.time()) - 86400 // 2)
    msgs, rows = _payloads(points, per_message, metrics_per_point, t_data)
    points = len(rows)
    with EmbeddedPostgres(base / "pg") as pg, EmbeddedBroker(base / "mqtt") as broker:
        migrate(pg.url)
        # The embedded broker takes no anonymous client: ingest's own account when it has accounts.
        url_for = getattr(broker, "url_for", None)
        ingest_url = url_for("ingest") if callable(url_for) else broker.url
        env = {**os.environ, "LINEGUARD_DATABASE_URL": pg.url, "LINEGUARD_MQTT_URL": ingest_url,
               "LINEGUARD_DATA_DIR": str(base / "data"), "LINEGUARD_LOG_LEVEL": "WARNING"}
        # N workers: each one's own session sees every message and stores its slice (by cell).
        procs = [subprocess.Popen([sys.executable, "-m", "line_agent.ingest", "--index", str(i),
                                   "--workers", str(workers), "--json-filter", "lineguard/#"], env=env)
                 for i in range(workers)]
        try:
            pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lineguard-bench-pub", protocol=mqtt.MQTTv5)
            pub.max_inflight_messages_set(100)
            pub.max_queued_messages_set(0)
            from line_agent.mqtt import parse_mqtt_url

            host, port, user, password, _ = parse_mqtt_url(broker.url)
            if user:
                pub.username_pw_set(user, password)
            pub.connect(host, port)
            pub.loop_start()
            _wait_subscribed(pub, pg.url, workers)
            t0 = time.perf_counter()
            infos = [pub.publish(f"lineguard/bench/B1/{cell}/telemetry", m, qos=1) for cell, m in msgs]
            for info in infos:
                info.wait_for_publish(timeout_s)
            t_pub = time.perf_counter() - t0
            stored = 0
            while time.perf_counter() - t0 < timeout_s:
                stored = _count(pg.url, "B1")
                if stored >= points:
                    break
                # count(*) is a scan: poll rarely until close to the end, then often (timing error < 0.1 s).
                time.sleep(1.0 if stored < 0.8 * points else 0.1)
            t_e2e = time.perf_counter() - t0
            pub.disconnect()
            pub.loop_stop()
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
        t_copy = _raw_copy(pg.url, rows)
        copied = _count(pg.url, "B2")
    e2e = stored / t_e2e
    ceiling = copied / t_copy
    return {
        "points": points, "messages": len(msgs), "points_per_message": per_message, "workers": workers,
        "stored": stored, "lost": points - stored, "publish_s": round(t_pub, 3), "end_to_end_s": round(t_e2e, 3),
        "end_to_end_points_per_s": round(e2e), "raw_copy_s": round(t_copy, 3),
        "raw_copy_points_per_s": round(ceiling), "ratio_to_copy": round(e2e / ceiling, 3),
        "cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2),
    }
