"""`lineguard plc-sim` and `lineguard bench control`.

Cheap to import: only typer here; the simulator and drivers are imported inside the commands.
Also runnable on its own: `python -m hardware.cli plc-sim --port 5020`, `python -m hardware.cli bench control`.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

import typer


class SimProtocol(StrEnum):
    modbus = "modbus"
    opcua = "opcua"
    sparkplug = "sparkplug"


_DEFAULT_PORTS = {SimProtocol.modbus: 5020, SimProtocol.opcua: 4840}


def register(app: typer.Typer, bench: typer.Typer) -> None:
    @app.command("plc-sim")
    def plc_sim(
        protocol: SimProtocol = typer.Option(SimProtocol.modbus, help="which protocol the virtual PLC speaks"),
        port: int | None = typer.Option(
            None, help="TCP port (modbus: 5020, opcua: 4840; 0 = pick a free one; the real one is printed)"
        ),
        host: str = typer.Option("127.0.0.1", help="address to bind (modbus, opcua)"),
        watchdog_s: float = typer.Option(1.0, help="heartbeat watchdog: safe state after this long"),
        gate_pulse_s: float = typer.Option(0.05, help="reject gate pulse length"),
        tags: str | None = typer.Option(None, help="tag map YAML (default: hardware/default_tags.yaml)"),
        broker: str | None = typer.Option(
            None, help="sparkplug: the MQTT broker, mqtt://[USER:PASS@]HOST:PORT (the simulator is its client)"
        ),
        group_id: str = typer.Option("lineguard", help="sparkplug: Sparkplug group id"),
        edge_node_id: str | None = typer.Option(None, help="sparkplug: edge node id (default: <line>-plc)"),
        device_id: str = typer.Option("plc", help="sparkplug: device id ('' = node-level NCMD/NDATA)"),
    ) -> None:
        """Run a virtual PLC in the foreground until Ctrl-C / SIGTERM.

        Once it serves it prints one line on stdout whose last word is the URL for a line YAML's plc.url:
        `plc-sim: modbus listening on modbus://HOST:PORT`, `plc-sim: opcua listening on opc.tcp://HOST:PORT/lineguard/`,
        `plc-sim: sparkplug node GROUP/NODE/DEVICE on mqtt://HOST:PORT/GROUP/NODE/DEVICE` (broker login left out).
        """
        try:
            serve_plc_sim(
                protocol,
                port=port,
                host=host,
                watchdog_s=watchdog_s,
                gate_pulse_s=gate_pulse_s,
                tags_path=tags,
                broker=broker,
                group_id=group_id,
                edge_node_id=edge_node_id,
                device_id=device_id,
            )
        except ValueError as exc:  # bad options: a one-line error, not a traceback
            typer.echo(f"plc-sim: {exc}", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:  # port in use, broker unreachable
            typer.echo(f"plc-sim: {protocol.value}: {exc}", err=True)
            raise typer.Exit(1) from None

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


def serve_plc_sim(
    protocol: str,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    watchdog_s: float = 1.0,
    gate_pulse_s: float = 0.05,
    tags_path: str | None = None,
    broker: str | None = None,
    group_id: str = "lineguard",
    edge_node_id: str | None = None,
    device_id: str | None = "plc",
) -> None:
    """Serve one simulator in this process until SIGINT/SIGTERM (see `lineguard plc-sim --help`)."""
    from urllib.parse import quote, urlsplit

    from hardware.drivers import parse_sparkplug_url, validate_plc_url
    from hardware.sim_base import serve_foreground
    from hardware.tags import TagMap

    proto = SimProtocol(protocol)
    if proto == SimProtocol.sparkplug:
        if port is not None:
            raise ValueError("sparkplug: the simulator connects to --broker; --port does not apply")
        if broker is None:
            raise ValueError("sparkplug needs --broker mqtt://HOST:PORT")
        if urlsplit(broker).path not in ("", "/"):
            raise ValueError(f"--broker {broker!r}: give only mqtt://HOST:PORT; the ids have their own options")
    elif broker is not None:
        raise ValueError(f"--broker is for --protocol sparkplug, not {proto.value}")
    if port is None:
        port = _DEFAULT_PORTS.get(proto, 0)
    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port} is not in 0-65535")
    tags = TagMap.load(tags_path)
    if proto == SimProtocol.modbus:
        from hardware.sim_plc import run_cli

        run_cli(host, port, watchdog_s, gate_pulse_s, tags_path)
    elif proto == SimProtocol.opcua:
        from hardware.sim_opcua import SimOpcUa

        ua_sim = SimOpcUa(host, port, watchdog_s=watchdog_s, gate_pulse_s=gate_pulse_s, tags=tags)
        serve_foreground(ua_sim, lambda: f"opcua listening on {validate_plc_url('opcua', ua_sim.url)}")
    else:
        from hardware.mqtt_cmd import SparkplugTarget
        from hardware.sim_mqtt import SimSparkplugNode

        assert broker is not None
        target = SparkplugTarget(group_id, edge_node_id or f"{tags.line}-plc", device_id or None)
        ids = [i for i in (target.group_id, target.edge_node_id, target.device_id) if i is not None]
        # Broker and ids are checked as the driver will see them, before anything connects.
        parse_sparkplug_url(broker.rstrip("/") + "/" + "/".join(quote(i, safe="") for i in ids))
        sp_sim = SimSparkplugNode(broker, target, watchdog_s=watchdog_s, gate_pulse_s=gate_pulse_s, tags=tags)
        address = validate_plc_url("sparkplug", sp_sim.url)
        serve_foreground(sp_sim, lambda: f"sparkplug node {'/'.join(ids)} on {address}")


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
