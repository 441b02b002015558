"""Analysis tools against scenarios with known ground truth (real PostgreSQL)."""

from __future__ import annotations

import psycopg

from line_agent.agent.scenarios import Scenario
from line_agent.agent.tools import FIXED_PLAN, run_tools
from llm_ops.facts import Fact, Window


def facts_of(url: str, s: Scenario) -> dict[str, Fact]:
    with psycopg.connect(url) as conn:
        results = run_tools(conn, Window(s.line, s.start, s.end), FIXED_PLAN)
    for r in results:
        assert r.window.start == s.start and r.window.end == s.end  # each result carries its query window
    return {f.id: f for r in results for f in r.facts}


def test_faults_downtime_and_cause(scenario_db: tuple[str, dict[str, Scenario]]) -> None:
    url, scen = scenario_db
    f = facts_of(url, scen["fault_burst"])
    assert f["faults.total"].value == 3
    assert f["faults.count.M2.TWF"].value == 2 and f["faults.downtime.M2.TWF"].value == 2100
    assert f["faults.count.M1.HDF"].value == 1 and f["faults.downtime.M1.HDF"].value == 300
    assert f["faults.downtime"].value == 2400
    # The burr burst follows M2's TWF faults: the top candidate cause, not M1/HDF.
    causes = [x for x in f.values() if x.kind == "cause"]
    assert causes and causes[0].names == ("M2", "TWF", "burr") and causes[0].key
    assert f["defects.count.burr"].value == 30


def test_energy_matches_simulation(scenario_db: tuple[str, dict[str, Scenario]]) -> None:
    url, scen = scenario_db
    for name in ("steady", "energy_waste", "energy_spike", "fault_burst"):
        s = scen[name]
        truth = {k.kind: k for k in s.key_facts}
        f = facts_of(url, s)
        assert abs(f["energy.total"].value - truth["energy_total"].value) < 0.011, name  # type: ignore[operator]
        assert f["quality.inspected"].value == truth["inspected"].value
        assert f["quality.reject_rate"].value == truth["reject_rate"].value


def test_idle_waste_and_baseline(scenario_db: tuple[str, dict[str, Scenario]]) -> None:
    url, scen = scenario_db
    f = facts_of(url, scen["energy_waste"])
    # M1 left on at 80 % of 5 kW for one hour while stopped.
    assert f["waste.idle"].value == 4.0 and f["waste.idle"].names == ("M1",)
    assert f["energy.per_part.delta"].value > 5  # fewer parts for the same energy: above baseline
    assert f["waste.vs_best"].value > 0
    steady = facts_of(url, scen["steady"])
    assert steady["waste.idle"].value == 0
    assert abs(steady["energy.per_part.delta"].value) < 1


def test_anomaly_found_at_the_spike_hour(scenario_db: tuple[str, dict[str, Scenario]]) -> None:
    url, scen = scenario_db
    s = scen["energy_spike"]
    f = facts_of(url, s)
    anomalies = [x for x in f.values() if x.kind == "anomaly" and x.extra["metric"] == "energy"]
    spike_start = s.spikes[0][1]
    assert [a.at for a in anomalies] == [spike_start.isoformat()]
    assert anomalies[0].value > 3.5
    assert not [x for x in facts_of(url, scen["steady"]).values() if x.kind == "anomaly"]


def test_ai4i_fault_codes(scenario_db: tuple[str, dict[str, Scenario]]) -> None:
    url, scen = scenario_db
    if "ai4i" not in scen:
        import pytest

        pytest.skip("AI4I data set not in shared/")
    s = scen["ai4i"]
    f = facts_of(url, s)
    for k in s.key_facts:
        if k.kind == "fault_count":
            assert f[f"faults.count.{k.names[0]}.{k.names[1]}"].value == k.value
    assert f["faults.total"].value == next(k.value for k in s.key_facts if k.kind == "fault_total")
