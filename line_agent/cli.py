"""The one ``lineguard`` command line.

The line's own commands (demo, run, config) live here; each area adds its commands through
``register(app, bench)`` in its own ``cli`` module, listed in ``_AREAS``. Those modules import
heavy libraries (torch, onnxruntime, llama.cpp) only inside their commands, so ``--help`` is fast.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="lineguard",
    help="Industrial AI quality inspection and production-line runtime for edge boxes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench = typer.Typer(help="Benchmarks: accuracy, latency, throughput. Figures go to docs/BENCHMARKS.md.",
                    no_args_is_help=True)
app.add_typer(bench, name="bench")

# Modules that add commands, by area. Each defines ``register(app, bench)``.
_AREAS = (
    "vision.cli",
    "hardware.cli",
    "line_agent.ingest_cli",
    "line_agent.agent_cli",
    "line_agent.api.cli",
)


def _register_areas() -> None:
    for name in _AREAS:
        module = importlib.import_module(name)
        module.register(app, bench)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


@app.command()
def demo(
    duration: Annotated[
        float, typer.Option(help="Run this many seconds, print the report and exit 0. 0 = until Ctrl-C.")
    ] = 0.0,
    lines: Annotated[int, typer.Option(min=1, max=16, help="Simulated lines sharing one store and broker.")] = 1,
    port: Annotated[int, typer.Option(help="API and console port.")] = 8080,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where the embedded database, broker and frames live.")
    ] = None,
    fps: Annotated[float, typer.Option(help="Parts per second per line.")] = 5.0,
    ingest_workers: Annotated[int, typer.Option(min=1, max=8, help="Ingest worker processes.")] = 1,
    auto_restart: Annotated[
        float, typer.Option(help="Seconds after which the simulated operator restarts a line that stopped "
                                 "(0 = never; it starts the line once at the beginning either way).")
    ] = 10.0,
) -> None:
    """Run a whole simulated line on loopback over real protocols.

    Synthetic boards with injected defects -> detector -> QA decision -> reject gate on a
    simulated PLC over Modbus TCP; vision events and energy/fault telemetry over MQTT -> ingest ->
    PostgreSQL; API and console on http://127.0.0.1:PORT. Embedded PostgreSQL and MQTT broker
    unless LINEGUARD_DATABASE_URL / LINEGUARD_MQTT_URL are set.
    """
    from line_agent.demo import DemoOptions, run_demo
    from line_agent.settings import Settings

    settings = Settings()
    _setup_logging(settings.log_level)
    if data_dir is not None:
        settings.data_dir = data_dir
    report = run_demo(
        settings,
        DemoOptions(duration_s=duration, lines=lines, port=port, fps=fps, ingest_workers=ingest_workers,
                    auto_restart_s=auto_restart),
    )
    typer.echo(report.render())
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def run(
    config: Annotated[list[Path], typer.Option("--config", "-c", help="The line's YAML file (repeat for more lines).",
                                               exists=True)],
    port: Annotated[int | None, typer.Option(help="API port (default: LINEGUARD_API_PORT).")] = None,
    ingest_workers: Annotated[int, typer.Option(min=1, max=8, help="Ingest worker processes.")] = 1,
) -> None:
    """Run real lines from their YAML: cameras, detectors, QA rules, PLC, ingest, API and console.

    Nothing simulated runs here. The line is never started by lineguard: start it from the console
    (a person with the operator role), or at the machine."""
    from line_agent.config import ConfigError, load_line_config
    from line_agent.plant import run_plant
    from line_agent.services import ServiceError
    from line_agent.settings import Settings

    settings = Settings()
    _setup_logging(settings.log_level)
    try:
        lines = [load_line_config(c) for c in config]
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if port is not None:
        settings.api_port = port
    try:
        run_plant(settings, lines, ingest_workers=ingest_workers)
    except (ServiceError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Bind address (default: LINEGUARD_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: LINEGUARD_API_PORT).")] = None,
    lines: Annotated[str, typer.Option(help="Comma-separated line ids this API serves.")] = "line1",
) -> None:
    """Serve the API and console alone (plant tier), against LINEGUARD_DATABASE_URL; no PLC attached."""
    import uvicorn

    from line_agent.api.app import create_app
    from line_agent.api.deps import ApiDeps
    from line_agent.plant import admin_token
    from line_agent.settings import Settings

    settings = Settings()
    _setup_logging(settings.log_level)
    if not settings.database_url:
        typer.echo("error: LINEGUARD_DATABASE_URL is required for `lineguard api`", err=True)
        raise typer.Exit(2)
    deps = ApiDeps(
        database_url=settings.database_url, lines=[x.strip() for x in lines.split(",") if x.strip()],
        model_registry=settings.registry_dir, frames_dir=settings.data_dir.resolve() / "frames",
        training_dir=settings.data_dir.resolve() / "feedback", admin_token=admin_token(settings),
        max_body_bytes=settings.api_max_body_bytes, auth_fail_burst=settings.api_auth_fail_burst,
        auth_fail_window_s=settings.api_auth_fail_window_s,
    )
    uvicorn.run(create_app(deps), host=host or settings.api_host, port=port or settings.api_port,
                log_level=settings.log_level.lower())


@app.command("check-config")
def check_config(
    config: Annotated[Path, typer.Argument(help="The line's YAML file.")],
    probe: Annotated[bool, typer.Option(help="Also open each camera and connect to the PLC and the broker.")] = False,
    quiet: Annotated[bool, typer.Option(help="Do not print the normalised configuration.")] = False,
) -> None:
    """Validate a line YAML and load every model; with --probe also reach each camera, the PLC and the broker.

    Prints the configuration normalised, then one line per check; exits 2 naming the bad field, or 1
    naming each check that failed."""
    from line_agent.checks import check_line
    from line_agent.config import ConfigError, load_line_config
    from line_agent.settings import Settings

    try:
        line = load_line_config(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not quiet:
        typer.echo(line.model_dump_json(indent=2))
    results = check_line(Settings(), line, probe=probe)
    for r in results:
        typer.echo(f"{'ok  ' if r.ok else 'FAIL'} {r.name}: {r.detail}", err=not r.ok)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@bench.command("lines")
def bench_lines(
    lines: Annotated[int, typer.Option(min=1, max=16)] = 4,
    duration: Annotated[float, typer.Option(help="Seconds the lines run.")] = 300.0,
    ingest_workers: Annotated[int, typer.Option(min=1, max=8)] = 2,
    fps: Annotated[float, typer.Option(help="Parts per second per line.")] = 5.0,
    data_dir: Annotated[Path | None, typer.Option(help="Default: a new temporary directory.")] = None,
) -> None:
    """N simulated lines into one store and broker: frames/s per line, ingest lag, CPU/RAM per process."""
    import json
    import tempfile

    from line_agent.bench_lines import run_bench

    _setup_logging("WARNING")
    target = data_dir or Path(tempfile.mkdtemp(prefix="lineguard-bench-"))
    typer.echo(json.dumps(run_bench(lines, duration, ingest_workers, target, fps), indent=2))


@bench.command("footprint")
def bench_footprint(
    fps: Annotated[float, typer.Option(help="Parts per second of the one simulated line.")] = 5.0,
    duration: Annotated[float, typer.Option(help="Seconds the line runs.")] = 60.0,
    data_dir: Annotated[Path | None, typer.Option(help="Default: a new temporary directory.")] = None,
) -> None:
    """One simulated line: start-up to console and first inspection, CPU and RSS per process, venv size."""
    import json
    import tempfile

    from line_agent.bench_footprint import run_footprint

    _setup_logging("WARNING")
    target = data_dir or Path(tempfile.mkdtemp(prefix="lineguard-footprint-"))
    typer.echo(json.dumps(run_footprint(fps, duration, target), indent=2))


def main() -> None:
    from pydantic import ValidationError

    try:
        _register_areas()  # some areas read Settings() on import
        app(prog_name="lineguard")
    except ValidationError as exc:
        # A bad LINEGUARD_* setting: name it and the rule, never echo the value (a URL carries a password).
        for err in exc.errors(include_url=False, include_input=False):
            field = ".".join(str(x) for x in err["loc"]) or exc.title
            typer.echo(f"error: LINEGUARD_{field.upper()}: {err['msg']}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
