"""``lineguard agent ...`` and ``lineguard bench agent``: summaries on demand, eval, LLM costs.

Cheap to import: the agent, psycopg and llama_cpp are imported inside the commands.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

agent_app = typer.Typer(help="Line agent: verified shift summaries of faults, energy and quality.",
                        no_args_is_help=True)

DbOpt = Annotated[str | None, typer.Option("--db", help="PostgreSQL URL (default: LINEGUARD_DATABASE_URL, "
                                                         "else the embedded server in the data dir).")]
BackendOpt = Annotated[str | None, typer.Option(
    "--backend", help="template | llamacpp[:PATH.gguf] | openai:URL[#MODEL]; comma-separated = fallback chain. "
                      "Default: LINEGUARD_LLM_BACKEND, else template (offline).")]


@contextmanager
def _database(db: str | None, *, throwaway: bool = False) -> Iterator[str]:
    """A server URL: the given one, the configured one, or an embedded server we start and stop."""
    from line_agent.services import EmbeddedPostgres
    from line_agent.settings import Settings

    url = db or Settings().database_url
    if url:
        yield url
        return
    data = Path(tempfile.mkdtemp(prefix="lineguard-eval-")) if throwaway else Settings().data_dir / "postgres"
    server = EmbeddedPostgres(data)
    try:
        server.start()
    except Exception as exc:
        raise typer.BadParameter(f"could not start embedded PostgreSQL in {data} ({exc}); pass --db URL") from exc
    try:
        yield server.url
    finally:
        server.stop()


@agent_app.command("summarize")
def summarize_cmd(
    line: Annotated[str, typer.Option("--line", help="Line id, e.g. L1.")],
    since: Annotated[str | None, typer.Option("--since", help="Window back from now (8h, 30m, 2d) or an ISO start "
                                                                "(then up to --to, else now). Default 8h.")] = None,
    from_: Annotated[str | None, typer.Option("--from", help="Window start, ISO 8601 (naive = UTC).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Window end, ISO 8601 (default now).")] = None,
    shift: Annotated[str | None, typer.Option("--shift", help="A shift of the line's calendar (with --date).")] = None,
    day: Annotated[str | None, typer.Option("--date", help="The day the shift starts, YYYY-MM-DD.")] = None,
    lang: Annotated[str, typer.Option("--lang", help="en | zh")] = "en",
    backend: BackendOpt = None,
    db: DbOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the stored result as JSON.")] = False,
) -> None:
    """Summarise LINE over a window, verify every number, store it (table summaries), print it.

    Windows: --from/--to, --shift NAME --date YYYY-MM-DD (the line YAML's shifts and timezone), or --since."""
    from datetime import date, datetime

    from line_agent.agent.core import resolve_window, summarize, tool_config_for

    if lang not in ("en", "zh"):
        raise typer.BadParameter(f"--lang must be en or zh, got {lang!r}")
    if since is not None and (from_ is not None or shift is not None):
        raise typer.BadParameter("give --since, or --from/--to, or --shift/--date")

    def iso(v: str | None, name: str) -> datetime | None:
        if v is None:
            return None
        try:
            return datetime.fromisoformat(v)
        except ValueError:
            raise typer.BadParameter(f"{name} {v!r}: not an ISO 8601 time") from None

    start, end = iso(from_, "--from"), iso(to, "--to")
    d: date | None = None
    if day is not None:
        try:
            d = date.fromisoformat(day)
        except ValueError:
            raise typer.BadParameter(f"--date {day!r}: use YYYY-MM-DD") from None
    cfg = tool_config_for(line)
    try:
        start, end = resolve_window(since=since, start=start, end=end, shift=shift, day=d, cfg=cfg)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    with _database(db) as url:
        try:
            r = summarize(url, line, start=start, end=end, lang=lang, backend=backend, cfg=cfg)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(r.to_json(), ensure_ascii=False, indent=2, default=str))
        return
    typer.echo(f"# {r.headline}\n")
    typer.echo(r.prose)
    if r.summary.get("checks"):
        typer.echo("\nRecommended checks:")
        for c in r.summary["checks"]:
            typer.echo(f"- {c}")
    typer.echo(f"\n[summary {r.summary_id} | verdict {r.verdict} | {r.backend or '-'} {r.model} | "
               f"{r.latency_ms / 1000:.2f} s | tokens {r.tokens_in}/{r.tokens_out} | ${r.cost_usd:.6f}]")


def _eval(backends: list[str], langs: list[str], db: str | None, out: Path | None, shared: Path | None) -> None:
    from line_agent.agent.evaluate import aggregate, markdown, run_eval
    from line_agent.settings import Settings

    shared = shared or Settings().shared_dir
    with _database(db, throwaway=True) as url:
        scores = run_eval(url, list(backends), langs=tuple(langs), shared=shared if shared.exists() else None)
    for s in scores:
        typer.echo(f"{s.backend:40s} {s.lang} {s.scenario:14s} {s.verdict:18s} coverage {s.coverage:6.1%} "
                   f"numbers {s.numbers_ok}/{s.numbers} names {s.names_ok}/{s.names} {s.latency_ms / 1000:6.2f} s "
                   f"tok {s.tokens_in}/{s.tokens_out}" + (f" missing={s.missing}" if s.missing else ""))
    rows = aggregate(scores)
    typer.echo("\n" + markdown(rows))
    if out is not None:
        out.write_text(json.dumps({"rows": rows, "scores": [s.__dict__ for s in scores]}, indent=2, default=str))


@agent_app.command("eval")
def eval_cmd(
    backend: Annotated[list[str] | None, typer.Option("--backend", help="Backend spec; repeat to compare.")] = None,
    lang: Annotated[list[str] | None, typer.Option("--lang", help="en and/or zh; repeat.")] = None,
    db: Annotated[str | None, typer.Option("--db", help="PostgreSQL server URL to create the eval database on "
                                                         "(default: a throwaway embedded server).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write scores as JSON here.")] = None,
    shared: Annotated[Path | None, typer.Option("--shared", help="Shared data dir (AI4I scenario).")] = None,
) -> None:
    """Score summaries on scenarios with known ground truth: coverage, number/name accuracy, latency, cost."""
    _eval(backend or ["template"], lang or ["en"], db, out, shared)


@agent_app.command("costs")
def costs_cmd(
    line: Annotated[str | None, typer.Option("--line")] = None,
    db: DbOpt = None,
) -> None:
    """LLM calls, tokens and cost per day, line, backend and model (table llm_calls)."""
    from line_agent.agent.core import ensure_schema
    from llm_ops.accounting import totals

    with _database(db) as url:
        ensure_schema(url)
        for row in totals(url, line=line):
            typer.echo(json.dumps(row, default=str))


def energy_table(rows: list[dict[str, object]]) -> str:
    """The accuracy table of docs/BENCHMARKS.md."""
    out = ["| quirk | what the meter does | truth kWh | line_agent.energy kWh | worst day error | replaced SQL kWh |"
           " replaced SQL worst day |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['quirk']} | {r['description']} | {r['truth_kwh']:,.1f} | {r['kwh']:,.1f} | "
                   f"{float(r['worst_day_error_pct']):.4f} % | {r['legacy_kwh']:,.1f} | "  # type: ignore[arg-type]
                   f"{float(r['legacy_worst_day_error_pct']):.2f} % |")  # type: ignore[arg-type]
    return "\n".join(out)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")

    @bench.command("energy")
    def bench_energy(
        days: Annotated[int, typer.Option("--days", min=1, max=366)] = 7,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        tz: Annotated[str, typer.Option("--tz", help="Days of this IANA zone.")] = "UTC",
        out: Annotated[Path | None, typer.Option("--out", help="Write the rows as JSON here.")] = None,
    ) -> None:
        """Energy accuracy per meter quirk against the generated truth (daily totals); docs/BENCHMARKS.md."""
        from line_agent.energy import bench as run_bench

        rows = run_bench(days, seed, tz)
        typer.echo(energy_table(rows))
        if out is not None:
            out.write_text(json.dumps(rows, indent=2, default=str))

    @bench.command("agent")
    def bench_agent(
        backend: Annotated[list[str] | None, typer.Option("--backend")] = None,
        lang: Annotated[list[str] | None, typer.Option("--lang")] = None,
        db: Annotated[str | None, typer.Option("--db")] = None,
        out: Annotated[Path | None, typer.Option("--out")] = None,
    ) -> None:
        """Agent eval per backend (same as `lineguard agent eval`); paste the table in docs/benchmarks/agent.md."""
        _eval(backend or ["template"], lang or ["en", "zh"], db, out, None)


if __name__ == "__main__":
    # `python -m line_agent.agent_cli eval ...`: the agent commands without the other areas' CLIs.
    agent_app()
