"""Triggers (shift/hourly idempotent, alarm), accounting totals, eval scores, and the CLI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import typer
from typer.testing import CliRunner

from line_agent.agent.evaluate import aggregate, run_eval
from line_agent.agent.scenarios import Scenario, counter_meter, energy_spike, steady, stops_day
from line_agent.agent.triggers import Scheduler, last_shift, on_alarm, run_due
from line_agent.agent_cli import register
from llm_ops.accounting import totals


def test_last_shift_and_hour_windows() -> None:
    now = datetime(2026, 11, 20, 15, 5, tzinfo=UTC)
    assert last_shift(now) == (datetime(2026, 11, 20, 6, tzinfo=UTC), datetime(2026, 11, 20, 14, tzinfo=UTC))
    early = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
    assert last_shift(early) == (datetime(2026, 11, 19, 14, tzinfo=UTC), datetime(2026, 11, 19, 22, tzinfo=UTC))


def test_scheduled_runs_are_idempotent(scenario_db: tuple[str, dict[str, Scenario]]) -> None:
    url, scen = scenario_db
    s = scen["fault_burst"]
    now = s.end + timedelta(minutes=5)  # 14:05: the 06-14 shift and the 13-14 hour are due
    first = run_due(url, s.line, "shift", now=now)
    assert first is not None and first.window.start == s.start and first.trigger == "shift"
    assert run_due(url, s.line, "shift", now=now) is None  # already stored for that window
    sched = Scheduler(url, [s.line], kinds=["shift", "hourly"])
    made = sched.tick(now)
    assert [r.trigger for r in made] == ["hourly"] and sched.tick(now) == []


def test_alarm_alert_on_spike_only(scenario_db: tuple[str, dict[str, Scenario]]) -> None:
    url, scen = scenario_db
    spike = scen["energy_spike"]
    a = on_alarm(url, spike.line, at=spike.spikes[0][2], lookback=timedelta(hours=1))
    assert a is not None and a.trigger == "alarm" and "alert" in a.headline
    assert any(f.kind == "anomaly" for f in a.facts)
    quiet = scen["steady"]
    assert on_alarm(url, quiet.line, at=quiet.end, lookback=timedelta(hours=1)) is None


def test_eval_template_meets_targets(pg_url: str, mqtt_url: str) -> None:
    end = datetime(2026, 11, 20, 14, 0, tzinfo=UTC)
    scores = run_eval(pg_url, ["template"], langs=("en", "zh"), mqtt_url=mqtt_url,
                      scenarios=[steady(end), energy_spike(end), counter_meter(end), stops_day(end)])
    assert len(scores) == 8
    for row in aggregate(scores):
        assert row["number_accuracy"] == 1.0 and row["fact_coverage"] >= 0.9 and row["names_accuracy"] == 1.0


def test_cli_summarize_and_costs(scenario_db: tuple[str, dict[str, Scenario]]) -> None:
    url, scen = scenario_db
    app, bench = typer.Typer(), typer.Typer()
    app.add_typer(bench, name="bench")
    register(app, bench)
    runner = CliRunner()
    s = scen["fault_burst"]
    res = runner.invoke(app, ["agent", "summarize", "--line", s.line, "--since", s.start.isoformat(),
                              "--lang", "zh", "--db", url])
    assert res.exit_code == 0, res.output
    assert "M2 发生 2 次 TWF 故障" in res.output and "verdict template" in res.output
    bad = runner.invoke(app, ["agent", "summarize", "--line", "L1", "--since", "soon", "--db", url])
    assert bad.exit_code != 0 and "--since" in bad.output
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO llm_calls (line, backend, model, tokens_in, tokens_out, cost_usd, ok)"
                     " VALUES ('L9', 'openai', 'gpt-4o-mini', 1000, 200, 0.00027, true)")
        conn.commit()
    rows = totals(url, line="L9")
    assert len(rows) == 1 and rows[0]["tokens_in"] == 1000 and abs(rows[0]["cost_usd"] - 0.00027) < 1e-12
    out = runner.invoke(app, ["agent", "costs", "--line", "L9", "--db", url])
    assert out.exit_code == 0 and "gpt-4o-mini" in out.output
