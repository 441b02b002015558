"""``lineguard api-token`` and ``lineguard bench api``: cheap to import (FastAPI loads inside the commands)."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    @app.command("api-token")
    def api_token(
        role: Annotated[str, typer.Option(help="viewer | operator | supervisor | admin")] = "viewer",
        name: Annotated[str, typer.Option(help="Who holds it (shown in the audit trail).")] = "console",
        database_url: Annotated[str | None, typer.Option(help="Default: LINEGUARD_DATABASE_URL.")] = None,
    ) -> None:
        """Create an API token for the control API and console; printed once, stored hashed."""
        from line_agent.api.auth import Role, create_token
        from line_agent.settings import Settings
        from line_agent.store.migrate import migrate

        url = database_url or Settings().database_url
        if not url:
            typer.echo("error: give --database-url or set LINEGUARD_DATABASE_URL", err=True)
            raise typer.Exit(2)
        try:
            r = Role(role)
        except ValueError:
            typer.echo(f"error: --role must be one of {[x.value for x in Role]}, got {role!r}", err=True)
            raise typer.Exit(2) from None
        migrate(url)
        typer.echo(create_token(url, r, name, created_by="cli"))

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
