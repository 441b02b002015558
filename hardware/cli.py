"""`lineguard plc-sim` and `lineguard bench control`.

Cheap to import: only typer here; the simulator and drivers are imported inside the commands.
Also runnable on its own: `python -m hardware.cli plc-sim --port 5020`, `python -m hardware.cli bench control`.
"""

from __future__ import annotations

import json
from typing import Any

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    @app.command("plc-sim")
    def plc_sim(
        port: int = typer.Option(5020, help="TCP port (0 = pick a free one; printed on stdout)"),
        host: str = typer.Option("127.0.0.1", help="address to bind"),
        watchdog_s: float = typer.Option(1.0, help="heartbeat watchdog: safe state after this long"),
        gate_pulse_s: float = typer.Option(0.05, help="reject gate pulse length"),
        tags: str | None = typer.Option(None, help="tag map YAML (default: hardware/default_tags.yaml)"),
    ) -> None:
        """Run the virtual PLC over Modbus TCP until Ctrl-C."""
        from hardware.sim_plc import run_cli

        run_cli(host, port, watchdog_s, gate_pulse_s, tags)

    @bench.command("control")
    def bench_control_cmd(
        n: int = typer.Option(2000, help="number of reject commands measured"),
        warmup: int = typer.Option(50, help="reject commands before measuring"),
        poll_hz: float = typer.Option(50.0, help="background line_state() polls per second (8 reads each)"),
        heartbeat_s: float = typer.Option(0.1, help="heartbeat period during the run"),
    ) -> None:
        """Latency of decision -> reject register written and read back, on the Modbus TCP simulator."""
        result = bench_control(n=n, warmup=warmup, poll_hz=poll_hz, heartbeat_s=heartbeat_s)
        typer.echo(json.dumps(result, indent=2))


def _percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def bench_control(n: int = 2000, warmup: int = 50, poll_hz: float = 50.0, heartbeat_s: float = 0.1) -> dict[str, Any]:
    """Run the reject-latency benchmark against a simulator subprocess; returns the figures as a dict."""
    import asyncio
    import os
    import platform
    import time

    from hardware.modbus import ModbusDriver
    from hardware.safety import LineController
    from hardware.sim_plc import SimPlcProcess
    from hardware.tags import TagMap

    tags = TagMap.load()
    proc = SimPlcProcess(port=0, watchdog_s=1.0).start()

    async def run() -> dict[str, Any]:
        driver = ModbusDriver(tags, "127.0.0.1", proc.port)
        ctl = LineController(driver, heartbeat_period_s=heartbeat_s)
        await ctl.start_background()
        polls = 0
        stop = asyncio.Event()

        async def poller() -> None:
            # Background bus load on the same connection: what the line runtime's status polling does.
            nonlocal polls
            period = 1.0 / poll_hz
            while not stop.is_set():
                await ctl.line_state()
                polls += 1
                await asyncio.sleep(period)

        poll_task = asyncio.create_task(poller()) if poll_hz > 0 else None
        await ctl.slow(50)
        await ctl.start()
        for i in range(warmup):
            await ctl.reject_part(f"warmup-{i}")
        count0 = int(await driver.read("reject_count"))
        lat: list[float] = []
        t_start = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()  # the decision instant: the caller decides to reject now
            await ctl.reject_part(f"part-{i}")
            lat.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.001)  # let the poller and heartbeat interleave, as on a running line
        wall = time.perf_counter() - t_start
        count1 = int(await driver.read("reject_count"))
        state = await ctl.line_state()
        stop.set()
        if poll_task is not None:
            await poll_task
        beats = ctl.heartbeat.beats
        await ctl.close()
        lat.sort()
        return {
            "bench": "control",
            "transport": "modbus-tcp loopback, simulator in a subprocess",
            "n": n,
            "p50_ms": round(_percentile(lat, 0.50), 3),
            "p90_ms": round(_percentile(lat, 0.90), 3),
            "p99_ms": round(_percentile(lat, 0.99), 3),
            "max_ms": round(lat[-1], 3),
            "mean_ms": round(sum(lat) / len(lat), 3),
            "rejects_counted_by_plc": (count1 - count0) % 65536,
            "background_polls": polls,
            "heartbeats": beats,
            "line_mode_after": state.mode,
            "wall_s": round(wall, 2),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        }

    try:
        return asyncio.run(run())
    finally:
        proc.terminate()


def _standalone() -> typer.Typer:
    app = typer.Typer(help="lineguard hardware commands (standalone)")
    bench = typer.Typer(help="benchmarks")
    app.add_typer(bench, name="bench")
    register(app, bench)
    return app


if __name__ == "__main__":
    _standalone()()
