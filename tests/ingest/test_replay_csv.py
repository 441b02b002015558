"""``lineguard replay csv``: a 15-minute interval-energy export, laid out as meter exports ship (day-first local
stamps at each interval's end, a power column in kW), published by the CLI as its own process through the real
broker into ingest; the agent's ``energy.total`` for a day equals the sum of that day's rows."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from line_agent.agent.scenarios import ingest_until
from line_agent.agent_cli import agent_app
from line_agent.replay_csv import ColumnMap, CsvMapping, CsvReplayError, read_points
from line_agent.store.migrate import migrate

TZ = ZoneInfo("Europe/Madrid")


def _export(path: Path, days: int = 3) -> list[tuple[datetime, float]]:
    """Like a utility's export: 'date' = dd/mm/YYYY HH:MM local time at each interval's end, Usage_kWh per
    interval, a kW column (the interval's average power) and a column that is not energy."""
    rng = random.Random(7)
    start = datetime(2018, 3, 5, 0, 0, tzinfo=TZ)  # a Monday
    rows = []
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["date", "Usage_kWh", "Demand_kW", "Lagging_Current_Power_Factor"])
        for k in range(1, days * 96 + 1):
            end = start + timedelta(minutes=15 * k)
            kwh = round(rng.uniform(2.0, 60.0), 2)
            rows.append((end, kwh))
            w.writerow([end.strftime("%d/%m/%Y %H:%M"), kwh, round(kwh * 4, 3), round(rng.uniform(60, 100), 2)])
    return rows


def test_mapping_errors_are_clear(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    _export(p, days=1)
    with pytest.raises(CsvReplayError, match="unit 'kwh' unknown"):
        ColumnMap.parse("Usage_kWh:kwh")
    with pytest.raises(CsvReplayError, match="'Nope' not in the header"):
        list(read_points(p, CsvMapping("date", [ColumnMap.parse("Nope:kW")], ts_format="%d/%m/%Y %H:%M")))
    with pytest.raises(CsvReplayError, match=r"row 2 date: .* is not a time"):
        list(read_points(p, CsvMapping("date", [ColumnMap.parse("Usage_kWh:kWh/interval")])))


def test_a_15_minute_export_replayed_gives_the_days_energy(fresh_db: str, mqtt_url: str, tmp_path: Path) -> None:
    migrate(fresh_db)
    export = tmp_path / "steel.csv"
    rows = _export(export)
    line, prefix = f"steel{uuid.uuid4().hex[:6]}", "lineguard"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")}
    env["LINEGUARD_MQTT_URL"] = mqtt_url

    def publish() -> int:
        out = subprocess.run(
            [sys.executable, "-m", "line_agent.cli", "replay", "csv", str(export), "--line", line, "--ts-col", "date",
             "--ts-format", "%d/%m/%Y %H:%M", "--tz", "Europe/Madrid", "--stamp", "end", "--interval-s", "900",
             "-m", "Usage_kWh:kWh/interval", "-m", "Demand_kW:kW", "-m", "Lagging_Current_Power_Factor=pf"],
            env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return int(json.loads(out.stdout.strip().splitlines()[-1])["points"])

    ingest_until(mqtt_url, fresh_db, tmp_path, publish, prefix=prefix)
    runner = CliRunner()
    day = datetime(2018, 3, 6, tzinfo=TZ)  # Tuesday, local day
    end = day + timedelta(days=1)
    res = runner.invoke(agent_app, ["summarize", "--line", line, "--from", day.isoformat(), "--to", end.isoformat(),
                                    "--json", "--db", fresh_db])
    assert res.exit_code == 0, res.output
    facts = {f["id"]: f for f in json.loads(res.output)["facts"]}
    # Independent of lineguard: the rows whose interval ends within the day (00:15 .. 24:00 local).
    want = sum(kwh for t, kwh in rows if day < t <= end)
    assert facts["energy.total"]["value"] == pytest.approx(want, abs=0.006)
