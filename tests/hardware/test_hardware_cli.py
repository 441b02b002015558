"""The CLI registration and the control benchmark (small n) end to end."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from hardware.cli import register


def _app() -> typer.Typer:
    app = typer.Typer()
    bench = typer.Typer()
    app.add_typer(bench, name="bench")
    register(app, bench)
    return app


def test_register_adds_commands() -> None:
    app = _app()
    result = CliRunner().invoke(app, ["plc-sim", "--help"])
    assert result.exit_code == 0 and "--watchdog-s" in result.output


def test_bench_control_small_run() -> None:
    result = CliRunner().invoke(_app(), ["bench", "control", "--n", "40", "--warmup", "5", "--poll-hz", "20"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["n"] == 40
    assert data["rejects_counted_by_plc"] == 40  # every reject reached the PLC and pulsed the gate
    assert 0 < data["p50_ms"] <= data["p99_ms"] <= data["max_ms"]
    assert data["line_mode_after"] == "running"
