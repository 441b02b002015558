"""``lineguard api-token`` and ``lineguard bench api``: cheap to import (FastAPI loads inside the commands)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    @app.command("api-token")
    def api_token(
        role: Annotated[str, typer.Option(help="viewer | operator | supervisor | admin")] = "viewer",
        name: Annotated[str, typer.Option(help="Who holds it (shown in the audit trail).")] = "console",
        database_url: Annotated[str | None, typer.Option(
            help="Default: LINEGUARD_DATABASE_URL, else the embedded database in LINEGUARD_DATA_DIR (the one "
                 "`lineguard run` / `demo` keep there: used while they run, started for this command otherwise).")]
        = None,
        lines: Annotated[str | None, typer.Option(
            help="Comma-separated lines the token may read and act on, e.g. line-a,line-b (default: every line).")]
        = None,
        config: Annotated[list[Path] | None, typer.Option(
            "--config", help="Line YAML(s) the server runs: --lines must name their lines (repeatable).",
            exists=True, dir_okay=False)] = None,
    ) -> None:
        """Create an API token for the control API and console; printed once, stored hashed."""
        from line_agent.api.auth import Role, create_token
        from line_agent.settings import Settings
        from line_agent.store.migrate import migrate

        scope = parse_lines(lines)
        if config and scope:
            from line_agent.config import ConfigError, load_line_config

            try:
                known = {load_line_config(c).line for c in config}
            except ConfigError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from exc
            unknown = [x for x in scope if x not in known]
            if unknown:
                typer.echo(f"error: unknown line(s) {', '.join(unknown)}; the configs run {', '.join(sorted(known))}",
                           err=True)
                raise typer.Exit(2)

        try:
            r = Role(role)
        except ValueError:
            typer.echo(f"error: --role must be one of {[x.value for x in Role]}, got {role!r}", err=True)
            raise typer.Exit(2) from None
        settings = Settings()
        url = database_url or settings.database_url
        started = None
        if not url:
            url, started = embedded_database(settings.data_dir)
        try:
            migrate(url)
            typer.echo(create_token(url, r, name, created_by="cli", lines=scope))
        finally:
            if started is not None:
                started.stop()

    def embedded_database(data_dir: Path) -> tuple[str, Any]:
        """The URL of the embedded PostgreSQL in ``<data_dir>/postgres``: the running server's (its port from
        ``postmaster.pid``), else a server started for this command, returned to be stopped after it."""
        from line_agent.services import EmbeddedPostgres, ServiceError

        pg = EmbeddedPostgres(data_dir.resolve() / "postgres")
        pgdata = pg.data_dir / "pgdata"
        if not (pgdata / "PG_VERSION").exists():
            typer.echo(f"error: no embedded database in {pg.data_dir} (run `lineguard run` or `lineguard demo` once, "
                       "set LINEGUARD_DATA_DIR to its data directory, or give --database-url)", err=True)
            raise typer.Exit(2)
        try:
            running = pg.running_port()
            if running is not None:
                pg.port = running
                typer.echo(f"using the running embedded database in {pg.data_dir} (port {running})", err=True)
                return pg.url, None
            typer.echo(f"starting the embedded database in {pg.data_dir} for this command", err=True)
            return pg.start(), pg
        except (OSError, ServiceError) as exc:  # e.g. the files belong to the account the server runs as
            typer.echo(f"error: cannot use the embedded database in {pg.data_dir}: {exc}", err=True)
            raise typer.Exit(2) from exc

    def parse_lines(text: str | None) -> list[str] | None:
        if text is None or not text.strip():
            return None
        names = sorted({x.strip() for x in text.split(",") if x.strip()})
        from line_agent.api.schemas import IDENT_MAX, IDENT_PATTERN

        bad = [x for x in names if len(x) > IDENT_MAX or not re.match(IDENT_PATTERN, x)]
        if bad:
            typer.echo(f"error: --lines: not a line name: {', '.join(map(repr, bad))}", err=True)
            raise typer.Exit(2)
        return names or None

    @bench.command("api")
    def bench_api_cmd(
        url: Annotated[str | None, typer.Option(help="Running API base URL (token in LINEGUARD_BENCH_TOKEN).")] = None,
        database_url: Annotated[str | None, typer.Option(help="Start a server over this database instead.")] = None,
        duration: Annotated[float, typer.Option(help="Seconds per scenario.")] = 10.0,
        concurrency: Annotated[int, typer.Option(min=1, max=512)] = 16,
    ) -> None:
        """API throughput under load from a separate process (JSON)."""
        import os

        from line_agent.api.bench import bench_api, bench_standalone

        if database_url:
            res = bench_standalone(database_url, duration_s=duration, concurrency=concurrency)
        elif url and os.environ.get("LINEGUARD_BENCH_TOKEN"):
            res = bench_api(url, os.environ["LINEGUARD_BENCH_TOKEN"], duration_s=duration, concurrency=concurrency)
        else:
            typer.echo("error: give --database-url, or --url with LINEGUARD_BENCH_TOKEN set", err=True)
            raise typer.Exit(2)
        typer.echo(json.dumps(res, indent=2))
