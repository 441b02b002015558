"""``lineguard ingest``, ``lineguard replay ai4i`` and ``lineguard bench ingest`` (cheap to import)."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

replay_app = typer.Typer(help="Publish recorded data sets over MQTT as a line's live telemetry.",
                         no_args_is_help=True)


def ingest(
    workers: Annotated[int, typer.Option(min=1, max=32, help="Worker processes sharing the subscription.")] = 1,
    share_group: Annotated[str, typer.Option(help="MQTT 5 shared-subscription group ($share/<group>/...), "
                                             "used when --workers > 1.")] = "lineguard",
) -> None:
    """MQTT -> PostgreSQL: JSON convention and Sparkplug B, batched, exactly once, spooled while the DB is away.

    Reads LINEGUARD_MQTT_URL, LINEGUARD_DATABASE_URL and LINEGUARD_DATA_DIR (spool). Runs until SIGINT/SIGTERM.
    """
    from line_agent.ingest.worker import IngestConfig, IngestWorker, run_workers
    from line_agent.settings import Settings

    settings = Settings()
    logging.basicConfig(level=getattr(logging, settings.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = IngestConfig.from_settings(settings, share_group="")  # one worker: plain, restart-safe subscription
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    metrics_port = int(os.environ.get("LINEGUARD_INGEST_METRICS_PORT") or 0)
    if workers == 1 and metrics_port:
        # Prometheus metrics (ingest lag, spool bytes) of this worker; with N workers each child
        # serves PORT+index itself (line_agent.ingest.worker.main).
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=os.environ.get("LINEGUARD_INGEST_METRICS_HOST", "127.0.0.1"))
    if workers == 1:
        stats = IngestWorker(cfg).run(stop)
        typer.echo(json.dumps(stats.__dict__))
    else:
        run_workers(workers, stop, log_dir=cfg.data_dir / "logs", share_group=share_group)


@replay_app.command("ai4i")
def replay_ai4i_cmd(
    path: Annotated[Path, typer.Argument(help="ai4i2020.tsv (shared/datasets/ai4i2020/).", exists=True,
                                         dir_okay=False)],
    rate: Annotated[float, typer.Option(min=0.001, help="Rows (parts) per second.")] = 100.0,
    fmt: Annotated[str, typer.Option("--format", help="json or sparkplug.")] = "json",
    line: Annotated[str, typer.Option(help="Line id (JSON topic level / Sparkplug group).")] = "L1",
    site: Annotated[str, typer.Option(help="Site (JSON topic level).")] = "site1",
    cycle_s: Annotated[float, typer.Option(min=0.001, help="Assumed cycle time per part, seconds.")] = 10.0,
    start: Annotated[float | None, typer.Option(help="Epoch seconds of the first part (default: the table "
                                                     "ends now).")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N rows.")] = None,
) -> None:
    """Publish the AI4I 2020 table: process values, power, energy per part, failures as fault events."""
    from line_agent.replay import Ai4iError, replay_ai4i
    from line_agent.settings import Settings

    if fmt not in ("json", "sparkplug"):
        typer.echo(f"error: --format must be json or sparkplug, not {fmt!r}", err=True)
        raise typer.Exit(2)
    url = Settings().mqtt_url
    if not url:
        typer.echo("error: set LINEGUARD_MQTT_URL (mqtt://host:port) to the broker to publish to", err=True)
        raise typer.Exit(2)
    try:
        res = replay_ai4i(path, url, rate=rate, fmt=fmt, line=line, site=site, cycle_s=cycle_s,  # type: ignore[arg-type]
                          start_ts=start, limit=limit)
    except (Ai4iError, ConnectionError, TimeoutError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(res.__dict__))


def bench_ingest(
    points: Annotated[int, typer.Option(min=1000, help="Points to push end to end.")] = 2_000_000,
    per_message: Annotated[int, typer.Option(min=1, help="Points per MQTT message.")] = 1000,
    workers: Annotated[int, typer.Option(min=1, max=16, help="Ingest worker processes.")] = 2,
) -> None:
    """Sustained points/s publish -> broker -> ingest -> committed rows, and raw COPY of the same rows."""
    from line_agent.ingest.bench import run_bench

    typer.echo(json.dumps(run_bench(points=points, per_message=per_message, workers=workers), indent=2))


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("ingest")(ingest)
    app.add_typer(replay_app, name="replay")
    bench.command("ingest")(bench_ingest)
