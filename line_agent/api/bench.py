"""API throughput under load, measured from a separate process.

``bench_api(url, token)`` runs the load generator (asyncio + httpx, ``concurrency`` connections) in a child
process so the client does not share the server's interpreter or GIL, and returns its JSON result.
``bench_standalone(database_url)`` also starts the server in its own process (uvicorn + the app over that
database, with the Modbus simulator + LineController when hardware/ is importable) and stops it after.

    python -m line_agent.api.bench --database-url postgresql://... --duration 10 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

SCENARIOS: dict[str, str] = {
    "state": "GET /api/line/state (reads the PLC through the controller)",
    "gallery": "GET /api/inspections?limit=24 (PostgreSQL query with class arrays)",
    "decisions": "POST /api/decisions decision=pass (one INSERT per request)",
    "healthz": "GET /healthz (framework floor, no auth, no I/O)",
}


def _percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


async def _load(url: str, token: str, scenario: str, duration_s: float, concurrency: int) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    lat: list[float] = []
    status: dict[str, int] = {}
    errors = 0
    stop_at = time.perf_counter() + duration_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal errors
        seq = 0
        while time.perf_counter() < stop_at:
            seq += 1
            t0 = time.perf_counter()
            try:
                if scenario == "decisions":
                    r = await client.post("/api/decisions", json={"part_id": f"B-{i}-{seq}", "decision": "pass"})
                elif scenario == "gallery":
                    r = await client.get("/api/inspections", params={"limit": 24})
                elif scenario == "healthz":
                    r = await client.get("/healthz")
                else:
                    r = await client.get("/api/line/state")
                status[str(r.status_code)] = status.get(str(r.status_code), 0) + 1
                if r.status_code >= 400:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
                continue
            lat.append(time.perf_counter() - t0)

    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30.0) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "scenario": scenario, "what": SCENARIOS.get(scenario, scenario), "concurrency": concurrency,
        "duration_s": round(wall, 3), "requests": len(lat), "errors": errors, "status": status,
        "rps": round(len(lat) / wall, 1) if wall > 0 else 0.0,
        "latency_ms": {"p50": round(_percentile(lat, 0.50) * 1000, 2), "p95": round(_percentile(lat, 0.95) * 1000, 2),
                       "p99": round(_percentile(lat, 0.99) * 1000, 2), "max": round(max(lat, default=0) * 1000, 2)},
    }


def bench_api(url: str, token: str, *, scenarios: tuple[str, ...] = ("healthz", "state", "gallery", "decisions"),
              duration_s: float = 10.0, concurrency: int = 16) -> dict[str, Any]:
    """Load ``url`` from a child process, one scenario after the other; return a JSON-able result."""
    results = []
    for sc in scenarios:
        if sc not in SCENARIOS:
            raise ValueError(f"unknown scenario {sc!r}; choose from {sorted(SCENARIOS)}")
        env = {**os.environ, "LINEGUARD_BENCH_TOKEN": token}  # not on the command line: ps would show it
        res = subprocess.run(
            [sys.executable, "-m", "line_agent.api.bench", "--worker", "--url", url, "--scenario", sc,
             "--duration", str(duration_s), "--concurrency", str(concurrency)],
            capture_output=True, text=True, env=env, timeout=duration_s + 120)
        if res.returncode != 0:
            raise RuntimeError(f"load generator failed for {sc}: {res.stderr[-2000:]}")
        results.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return {"url": url, "client": "httpx asyncio, separate process", "results": results}


def bench_standalone(database_url: str, *, duration_s: float = 10.0, concurrency: int = 16,
                     scenarios: tuple[str, ...] = ("healthz", "state", "gallery", "decisions")) -> dict[str, Any]:
    """Start the API (own process, uvicorn, one worker) on a free port over ``database_url``, load it, stop it."""
    from line_agent.api.auth import Role, create_token
    from line_agent.services import free_port, wait_for_port
    from line_agent.store.migrate import migrate

    migrate(database_url)
    token = create_token(database_url, Role.admin, f"bench-{uuid.uuid4().hex[:6]}", created_by="bench")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "line_agent.api.bench", "--serve", "--port", str(port),
         "--database-url", database_url], start_new_session=True)
    try:
        wait_for_port("127.0.0.1", port, 60, server)
        time.sleep(0.5)
        out = bench_api(f"http://127.0.0.1:{port}", token, scenarios=scenarios, duration_s=duration_s,
                        concurrency=concurrency)
        out["server"] = "uvicorn, 1 worker, separate process; Modbus simulator + LineController when available"
        return out
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


def _serve(port: int, database_url: str) -> None:
    import uvicorn

    from line_agent.api.app import create_app
    from line_agent.api.deps import ApiDeps

    factory = None
    sim = None
    try:
        from hardware.modbus import ModbusDriver
        from hardware.safety import LineController
        from hardware.sim_plc import SimPlc
        from hardware.tags import TagMap

        tags = TagMap.load()
        sim = SimPlc(port=0, watchdog_s=2.0).start()

        async def factory() -> LineController:
            assert sim is not None
            driver = ModbusDriver(tags, "127.0.0.1", sim.port)
            ctl = LineController(driver, heartbeat_period_s=0.2, actor="api")
            await driver.connect()
            await ctl.start_background()
            return ctl

        lines = [tags.line]
    except ImportError:
        lines = ["line-1"]
    app = create_app(ApiDeps(database_url=database_url, lines=lines, pool_max=10), controller_factory=factory)
    try:
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    finally:
        if sim is not None:
            sim.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help="Load a running API at this base URL (token in LINEGUARD_BENCH_TOKEN).")
    p.add_argument("--database-url", help="Start the API over this database and load it.")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=16)
    a = p.parse_args(argv)
    if a.serve:
        _serve(a.port, a.database_url)
        return
    if a.worker:
        sc = (a.scenario or ["state"])[0]
        out = asyncio.run(_load(a.url, os.environ["LINEGUARD_BENCH_TOKEN"], sc, a.duration, a.concurrency))
        print(json.dumps(out))
        return
    scenarios = tuple(a.scenario or ("healthz", "state", "gallery", "decisions"))
    if a.database_url:
        res = bench_standalone(a.database_url, duration_s=a.duration, concurrency=a.concurrency, scenarios=scenarios)
    elif a.url:
        res = bench_api(a.url, os.environ["LINEGUARD_BENCH_TOKEN"], scenarios=scenarios, duration_s=a.duration,
                        concurrency=a.concurrency)
    else:
        p.error("give --url (with LINEGUARD_BENCH_TOKEN) or --database-url")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
