"""``lineguard bench footprint``: what one simulated line costs the edge box.

Runs ``lineguard demo --fps F --duration D`` from this interpreter as a child process and measures it
from outside: seconds from launch to a console that answers (``GET /healthz``) and to the first
inspection (``lineguard_frames_total`` > 0 on ``/metrics``, read with the demo's admin token); CPU and RSS of every
process in its tree (psutil RSS and PSS, every ``interval_s``) over the steady part of the run (from 2 s after the
first inspection to the end of the run); and the size of the environment it ran from (``sys.prefix``)
with the heavy packages an edge install must not carry (torch, ultralytics, llama.cpp, NVIDIA).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil

from line_agent.bench_lines import _role
from line_agent.services import free_port

HEAVY_MODULES = ("torch", "torchvision", "ultralytics", "llama_cpp")
WARMUP_S = 2.0


def tree_size_mb(root: Path) -> float:
    """Bytes on disk below ``root`` (allocated blocks, hard links once, symlinks not followed), in MiB."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return round(total / 2**20, 1)


def environment() -> dict[str, Any]:
    """The interpreter's environment: its size and which heavy packages it holds."""
    names = {d.metadata["Name"] for d in importlib.metadata.distributions()}
    nvidia = sorted(n for n in names if n.lower().startswith("nvidia"))
    return {
        "prefix": sys.prefix,
        "size_mb": tree_size_mb(Path(sys.prefix)),
        "python": sys.version.split()[0],
        "heavy_modules": {m: importlib.util.find_spec(m) is not None for m in HEAVY_MODULES},
        "nvidia_packages": nvidia,
    }


def _get(url: str, token: str | None = None, timeout: float = 1.0) -> str | None:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # loopback: our own child
            body: bytes = r.read()
            return body.decode() if r.status == 200 else None
    except OSError:
        return None


def _token(data_dir: Path) -> str | None:
    """The admin token the demo writes into its data dir (``/metrics`` needs a viewer token)."""
    token = os.environ.get("LINEGUARD_ADMIN_TOKEN")
    if token:
        return token
    try:
        return (data_dir / "admin_token").read_text().strip() or None
    except OSError:
        return None


def frames_total(metrics_text: str) -> float:
    """Sum of ``lineguard_frames_total`` over every line and camera in a Prometheus exposition."""
    total = 0.0
    for ln in metrics_text.splitlines():
        if ln.startswith("lineguard_frames_total"):
            try:
                total += float(ln.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
    return total


def run_footprint(fps: float, duration_s: float, data_dir: Path, interval_s: float = 1.0) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LINEGUARD_DATA_DIR": str(data_dir)}
    cmd = [sys.executable, "-m", "line_agent.cli", "demo", "--duration", str(duration_s), "--port", str(port),
           "--fps", str(fps)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(proc.pid)
    t_console: float | None = None
    t_first: float | None = None
    # Start-up: poll fast until the console answers and the first part is inspected.
    while proc.poll() is None and t_first is None and time.monotonic() - t0 < 180:
        if t_console is None and _get(base + "/healthz") is not None:
            t_console = time.monotonic() - t0
        if t_console is not None:
            text = _get(base + "/metrics", _token(data_dir))
            if text is not None and frames_total(text) > 0:
                t_first = time.monotonic() - t0
                break
        time.sleep(0.1)
    if t_first is None or t_console is None:
        proc.kill()
        out, _ = proc.communicate()
        raise RuntimeError(f"demo gave no first inspection within 180 s (rc={proc.returncode}):\n{out[-3000:]}")
    # Steady state: from WARMUP_S after the first inspection to the end of the run (which began
    # at about the time the console came up).
    start, end = t_first + WARMUP_S, t_console + duration_s
    cpu0: dict[int, float] = {}
    cpu1: dict[int, tuple[str, float]] = {}
    rss: dict[str, list[float]] = defaultdict(list)
    pss: dict[str, list[float]] = defaultdict(list)
    totals: list[float] = []  # PSS summed over the tree: shared pages (postgres) counted once
    frames0: float | None = None
    frames1 = 0.0
    t_frames0 = t_frames1 = 0.0
    while proc.poll() is None and time.monotonic() - t0 < end:
        now = time.monotonic() - t0
        if now >= start:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            rss_now: dict[str, float] = defaultdict(float)
            pss_now: dict[str, float] = defaultdict(float)
            for p in tree:
                role = "lineguard" if p.pid == root.pid else _role(p)
                try:
                    t = p.cpu_times()
                    mem = p.memory_full_info()
                except psutil.Error:
                    continue
                cpu0.setdefault(p.pid, t.user + t.system)
                cpu1[p.pid] = (role, t.user + t.system)
                rss_now[role] += mem.rss / 2**20
                pss_now[role] += getattr(mem, "pss", mem.rss) / 2**20
            for role, mb in rss_now.items():
                rss[role].append(mb)
                pss[role].append(pss_now[role])
            totals.append(sum(pss_now.values()))
            text = _get(base + "/metrics", _token(data_dir))
            if text is not None:
                if frames0 is None:
                    frames0, t_frames0 = frames_total(text), now
                frames1, t_frames1 = frames_total(text), now
        time.sleep(interval_s)
    window = max(time.monotonic() - t0 - start, 1e-9)
    out, _ = proc.communicate(timeout=duration_s + 180)
    if proc.returncode != 0:
        raise RuntimeError(f"demo failed (rc={proc.returncode}):\n{out[-3000:]}")
    cpu: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for pid, (role, c) in cpu1.items():
        cpu[role] += c - cpu0.get(pid, c)
        count[role] += 1
    per_process = {
        role: {
            "processes": count[role],
            "cpu_core_pct": round(100.0 * cpu[role] / window, 1),
            "rss_mean_mb": round(sum(v) / len(v), 1),
            "rss_peak_mb": round(max(v), 1),
            "pss_mean_mb": round(sum(pss[role]) / len(pss[role]), 1),
        }
        for role, v in sorted(rss.items())
    }
    return {
        "fps_target": fps,
        "duration_s": duration_s,
        "startup_s": {"console": round(t_console, 2), "first_inspection": round(t_first, 2)},
        "frames_per_s": round((frames1 - (frames0 or 0.0)) / max(t_frames1 - t_frames0, 1e-9), 2),
        "window_s": round(window, 1),
        "line_process": per_process.get("lineguard", {}),
        "all_processes": {
            "cpu_core_pct": round(sum(cpu.values()) * 100.0 / window, 1),
            "pss_mean_mb": round(sum(totals) / len(totals), 1) if totals else 0.0,
            "pss_peak_mb": round(max(totals), 1) if totals else 0.0,
        },
        "per_process": per_process,
        "environment": environment(),
        "note": "cpu_core_pct: CPU seconds / window seconds x 100 (100 = one core); rss per role sums its "
                "processes (postgres' shared buffers once per process), pss shares them out; lineguard = the line, API "
                "and console in one process; the rest is the demo's embedded database, broker, ingest, PLC sim",
    }
