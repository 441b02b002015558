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
    workers: Annotated[int, typer.Option(min=1, max=32, help="N workers splitting the stream (slices by cell / "
                                         "Sparkplug node; each has its own restart-safe session).")] = 1,
    share_group: Annotated[str, typer.Option(help="Opt-in MQTT 5 shared-subscription group ($share/<group>/...) "
                                             "instead of slices, for brokers that persist shared subscriptions "
                                             "(not Mosquitto).")] = "",
    index: Annotated[int | None, typer.Option(min=0, max=31, envvar="LINEGUARD_INGEST_INDEX",
                                              help="Run only worker INDEX of --workers N here (one per "
                                                   "container or pod).")] = None,
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
        cfg = IngestConfig.from_settings(settings, share_group=share_group if index is not None else "",
                                         worker_index=index or 0, worker_count=workers if index is not None else 1)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    metrics_port = int(os.environ.get("LINEGUARD_INGEST_METRICS_PORT") or 0)
    if (workers == 1 or index is not None) and metrics_port:
        # Prometheus metrics (ingest lag, spool bytes) of this worker; with N workers each child
        # serves PORT+index itself (line_agent.ingest.worker.main).
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=os.environ.get("LINEGUARD_INGEST_METRICS_HOST", "127.0.0.1"))
    if workers == 1 or index is not None:
        stats = IngestWorker(cfg).run(stop)
        typer.echo(json.dumps(stats.__dict__))
    else:
        run_workers(workers, stop, log_dir=cfg.data_dir / "logs", share_group=share_group)


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        typer.echo(f"error: {option} must be {' or '.join(allowed)}, not {value!r}", err=True)
        raise typer.Exit(2)


def _replay_broker() -> tuple[str, float]:
    """The broker a replay publishes to (LINEGUARD_MQTT_URL) and the post-acknowledgement retention of its
    publisher (LINEGUARD_MQTT_ACK_RETENTION_S, line_agent/outbox.py), or exit 2 saying what is wrong."""
    from line_agent.mqtt import parse_mqtt_url
    from line_agent.settings import Settings

    settings = Settings()
    url = settings.mqtt_url
    if not url:
        typer.echo("error: set LINEGUARD_MQTT_URL (mqtt://host:port) to the broker to publish to", err=True)
        raise typer.Exit(2)
    try:
        parse_mqtt_url(url)
    except ValueError:  # the message would echo the URL, password and all
        typer.echo("error: LINEGUARD_MQTT_URL is not an MQTT URL (expected mqtt://[user:pass@]host:port or "
                   "mqtts://...)", err=True)
        raise typer.Exit(2) from None
    return url, settings.ack_retention_s


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

    _choice("--format", fmt, ("json", "sparkplug"))
    url, retention_s = _replay_broker()
    try:
        res = replay_ai4i(path, url, rate=rate, fmt=fmt, line=line, site=site, cycle_s=cycle_s,  # type: ignore[arg-type]
                          start_ts=start, limit=limit, ack_retention_s=retention_s)
    except (Ai4iError, ConnectionError, TimeoutError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(res.__dict__))


@replay_app.command("csv")
def replay_csv_cmd(
    path: Annotated[Path, typer.Argument(help="The CSV export (a header row, one reading time per row).",
                                         exists=True, dir_okay=False)],
    line: Annotated[str, typer.Option(help="Line id (topic level).")],
    metric: Annotated[list[str], typer.Option(
        "--metric", "-m", help="COLUMN[=NAME][:UNIT], repeatable. Units: W, kW, MW (power, averaged over the "
                               "interval); Wh, kWh, MWh (a cumulative register); Wh/interval, kWh/interval, "
                               "MWh/interval (energy of each interval). No unit: published as it is.")],
    ts_col: Annotated[str, typer.Option(help="The column with the time.")] = "timestamp",
    ts_format: Annotated[str, typer.Option(help="iso, epoch, epoch_ms, or a strptime format "
                                                "('%d/%m/%Y %H:%M').")] = "iso",
    tz: Annotated[str, typer.Option(help="Time zone of stamps that carry none (IANA name).")] = "UTC",
    stamp: Annotated[str, typer.Option(help="A row's stamp is its interval's start or end.")] = "end",
    interval_s: Annotated[float, typer.Option(help="The export's interval, seconds.")] = 900.0,
    site: Annotated[str, typer.Option(help="Site (topic level).")] = "site1",
    cell: Annotated[str, typer.Option(help="Cell (topic level).")] = "meter",
    device: Annotated[str, typer.Option(help="Device name of the readings.")] = "meter1",
) -> None:
    """Publish a plant's own history (meter export, historian dump) over MQTT per the contract (docs/MQTT.md)."""
    from line_agent.mqtt import Publisher
    from line_agent.replay_csv import ColumnMap, CsvMapping, CsvReplayError, replay_csv

    _choice("--stamp", stamp, ("start", "end"))
    url, retention_s = _replay_broker()
    try:
        mapping = CsvMapping(ts_column=ts_col, metrics=[ColumnMap.parse(x) for x in metric], ts_format=ts_format,
                             timezone=tz, stamp=stamp, interval_s=interval_s, device=device)  # type: ignore[arg-type]
    except CsvReplayError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    # A memory outbox with post-acknowledgement retention: a broker crash during the replay loses nothing.
    client = Publisher(url, f"lineguard-replay-csv-{os.getpid()}", max_queued=0, max_inflight=200,
                       ack_retention_s=retention_s)
    try:
        if not client.wait_connected(15):
            from line_agent.plant import redact

            typer.echo(f"error: cannot reach the MQTT broker at {redact(url)}", err=True)
            raise typer.Exit(1)
        res = replay_csv(path, mapping, client.publish, site=site, line=line, cell=cell)
        if not client.flush(120):
            typer.echo("error: the broker did not acknowledge every message", err=True)
            raise typer.Exit(1)
    except CsvReplayError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        client.close()
    typer.echo(json.dumps(res.__dict__))


def bench_ingest(
    points: Annotated[int, typer.Option(min=1000, help="Points to push end to end.")] = 2_000_000,
    per_message: Annotated[int, typer.Option(min=1, help="Points per MQTT message.")] = 1000,
    workers: Annotated[int, typer.Option(min=1, max=16, help="Ingest worker processes.")] = 2,
) -> None:
    """Sustained points/s publish -> broker -> ingest -> committed rows, and raw COPY of the same rows."""
    from line_agent.ingest.bench import run_bench

    typer.echo(json.dumps(run_bench(points=points, per_message=per_message, workers=workers), indent=2))


def bench_chaos(
    workers: Annotated[int, typer.Option(min=1, max=8, help="Ingest worker processes (slices).")] = 2,
    points: Annotated[int, typer.Option(min=1000, help="JSON points per scenario (plus Sparkplug).")] = 50_000,
    seconds: Annotated[float, typer.Option(min=1.0, help="Publishing spread over this long per scenario.")] = 10.0,
    outage_s: Annotated[float, typer.Option(min=0.5, help="Broker down this long (restart / crash).")] = 5.0,
    db_outage_s: Annotated[float, typer.Option(min=1.0, help="PostgreSQL stopped this long.")] = 10.0,
    only: Annotated[str, typer.Option(help="Comma-separated scenario names (default: all); broker_crash and "
                                           "broker_crash_ingest_down select every run of theirs.")] = "",
    crash_runs: Annotated[int, typer.Option(min=1, max=50, help="Runs of each broker crash (broker_crash_1 ...).")] = 1,
    broker_autosave_s: Annotated[int, typer.Option(min=0, help="The broker saves every N s (0: on every change, "
                                                              "the embedded broker's default).")] = 0,
    ack_retention_s: Annotated[float | None, typer.Option(
        min=0.0, help="The devices' post-acknowledgement retention, s (default: what the bench's broker needs; "
                      "0: none, as a device that forgets a message at its PUBACK).")] = None,
    compare_shared: Annotated[bool, typer.Option(help="Also run the broker restart with the old shared "
                                                      "subscription ($share/...), for comparison.")] = True,
    markdown_out: Annotated[Path | None, typer.Option(help="Also write the markdown table here.")] = None,
) -> None:
    """Fault matrix: broker restart / crash, database outage, worker kills, hostile corpus; counts per scenario."""
    from line_agent.ingest.chaos import default_matrix, markdown, run_chaos

    matrix = default_matrix(workers=workers, points=points, seconds=seconds, outage_s=outage_s,
                            db_outage_s=db_outage_s, compare_shared=compare_shared, ack_retention_s=ack_retention_s,
                            crash_runs=crash_runs, broker_autosave_s=broker_autosave_s)
    if only:
        names = {n.strip() for n in only.split(",") if n.strip()}
        known = {s.name for s in matrix} | {s.fault for s in matrix}
        if names - known:
            typer.echo(f"error: --only: no scenario {', '.join(sorted(names - known))} (one of "
                       f"{', '.join(sorted(known))})", err=True)
            raise typer.Exit(2)
        matrix = [s for s in matrix if s.name in names or (s.fault.startswith("broker_crash") and s.fault in names)]
    results = run_chaos(matrix, on_log=lambda m: typer.echo(m, err=True))
    typer.echo(json.dumps(results, indent=2))
    table = markdown(results)
    typer.echo(table)
    if markdown_out is not None:
        markdown_out.write_text(table)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("ingest")(ingest)
    app.add_typer(replay_app, name="replay")
    bench.command("ingest")(bench_ingest)
    bench.command("chaos")(bench_chaos)
