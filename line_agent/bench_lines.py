"""``lineguard bench lines``: N simulated lines into one store and broker, measured from outside.

Runs ``lineguard demo --lines N --duration D`` as a child process, samples CPU and RSS of every
process in its tree once a second (psutil), and reads the results back from PostgreSQL: frames/s
per line, ingest lag (``inspections.ingested_at - ts``) p50/p99, telemetry rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from line_agent.services import free_port


def _role(p: psutil.Process) -> str:
    """A stable name for a process of the demo tree, e.g. ``postgres``, ``ingest``, ``plc-sim``."""
    try:
        name = p.name()
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return "gone"
    if name == "postgres":
        return "postgres"
    if "mosquitto" in name:
        return "mosquitto"
    if "hardware.sim_plc" in cmd:
        return "plc-sim"
    if " ingest" in cmd or "line_agent.ingest" in cmd:
        return "ingest"
    if "amqtt_broker" in cmd:
        return "amqtt"
    return name


@dataclass
class ProcStats:
    cpu_s: float = 0.0  # summed over processes of this role, at the last sample
    rss_peak_mb: float = 0.0
    rss_samples: list[float] = field(default_factory=list)
    count: int = 0


def run_bench(lines: int, duration_s: float, ingest_workers: int, data_dir: Path, fps: float) -> dict[str, Any]:
    env = {**os.environ, "LINEGUARD_DATA_DIR": str(data_dir)}
    cmd = [sys.executable, "-m", "line_agent.cli", "demo", "--lines", str(lines), "--duration", str(duration_s),
           "--ingest-workers", str(ingest_workers), "--port", str(free_port()), "--fps", str(fps)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    root = psutil.Process(proc.pid)
    stats: dict[str, ProcStats] = defaultdict(ProcStats)
    cpu_by_pid: dict[int, tuple[str, float]] = {}
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            break
        rss_now: dict[str, float] = defaultdict(float)
        for p in tree:
            role = "lineguard" if p.pid == root.pid else _role(p)
            try:
                t = p.cpu_times()
                cpu_by_pid[p.pid] = (role, t.user + t.system)
                rss_now[role] += p.memory_info().rss / 2**20
            except psutil.Error:
                continue
        for role, mb in rss_now.items():
            s = stats[role]
            s.rss_samples.append(mb)
            s.rss_peak_mb = max(s.rss_peak_mb, mb)
        time.sleep(1.0)
    out, _ = proc.communicate()
    wall = time.monotonic() - t0
    for role, cpu in cpu_by_pid.values():
        stats[role].cpu_s += cpu
        stats[role].count += 1
    report_line = next((ln for ln in out.splitlines() if ln.startswith("REPORT ")), None)
    if proc.returncode != 0 or report_line is None:
        raise RuntimeError(f"demo failed (rc={proc.returncode}):\n{out[-3000:]}")
    report = json.loads(report_line[len("REPORT "):])
    per_process = {
        role: {
            "processes": s.count,
            "cpu_core_pct": round(100.0 * s.cpu_s / max(duration_s, 1e-9), 1),
            "rss_mean_mb": round(sum(s.rss_samples) / len(s.rss_samples), 1) if s.rss_samples else 0.0,
            "rss_peak_mb": round(s.rss_peak_mb, 1),
        }
        for role, s in sorted(stats.items())
    }
    lag = _lag_from_db(data_dir, duration_s + wall)
    return {
        "lines": lines,
        "duration_s": duration_s,
        "ingest_workers": ingest_workers,
        "fps_target_per_line": fps,
        "frames_per_s_per_line": {
            ln["line"]: round(ln["parts"] / duration_s, 2) for ln in report["lines"]
        },
        "telemetry_rows": sum(ln["telemetry_rows"] for ln in report["lines"]),
        "reject_write_ms": {
            ln["line"]: {"p50": ln["reject_write_p50_ms"], "p99": ln["reject_write_p99_ms"]} for ln in report["lines"]
        },
        "precision_recall": {ln["line"]: [ln["precision"], ln["recall"]] for ln in report["lines"]},
        "ingest_lag_ms": lag,
        "per_process": per_process,
        "note": "cpu_core_pct: CPU seconds / run seconds x 100 (200 = both cores of this box)",
    }


def _lag_from_db(data_dir: Path, window_s: float) -> dict[str, float]:
    import psycopg

    from line_agent.services import EmbeddedPostgres

    url = os.environ.get("LINEGUARD_DATABASE_URL")
    pg = None
    if not url:
        pg = EmbeddedPostgres(data_dir / "postgres")
        url = pg.start()
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                """SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP
                          (ORDER BY extract(epoch FROM ingested_at - ts)::float8 * 1000),
                          max(extract(epoch FROM ingested_at - ts)::float8 * 1000), count(*)
                   FROM inspections WHERE ts > now() - make_interval(secs => %s)""",
                (window_s,),
            ).fetchone()
    finally:
        if pg is not None:
            pg.stop()
    if not row or row[0] is None:
        return {}
    return {"p50": round(float(row[0][0]), 1), "p99": round(float(row[0][1]), 1), "max": round(float(row[1]), 1),
            "rows": int(row[2])}
