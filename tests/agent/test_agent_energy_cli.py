"""``lineguard agent summarize --from --to --json`` over a 15-minute counter meter that came in through the
front door (MQTT -> ingest -> store): ``energy.total`` equals the generated truth for a weekday and a weekend day,
and a plant's peak quarter-hour names its date and time."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from line_agent import energy
from line_agent.agent.scenarios import ingest_until, publish_telemetry
from line_agent.agent_cli import agent_app
from line_agent.store.migrate import migrate

pytestmark = pytest.mark.timeout(240)


def test_weekday_and_weekend_day_of_a_15_minute_meter(fresh_db: str, mqtt_url: str, tmp_path: Path) -> None:
    migrate(fresh_db)
    q = next(x for x in energy.quirks() if x.name == "counter_15min_kwh")
    line, prefix = f"steel{uuid.uuid4().hex[:6]}", f"t{uuid.uuid4().hex[:8]}"
    # the meter sends its counter and a power reading: the counter is read, the power never added to it
    points = [(t, {"energy_kwh": round(v, 6), "power_w": 100_000.0}) for t, v in zip(q.ts, q.values, strict=True)]
    stored = ingest_until(mqtt_url, fresh_db, tmp_path,
                          lambda: 2 * publish_telemetry(mqtt_url, line, "meter", "meter", points, prefix=prefix),
                          prefix=prefix)
    assert stored == 2 * len(points)
    runner = CliRunner()
    for day in (energy.WEEK_START + timedelta(days=2), energy.WEEK_START + timedelta(days=5)):  # Wed, Sat
        end = day + timedelta(days=1)
        res = runner.invoke(agent_app, ["summarize", "--line", line, "--from", day.isoformat(), "--to",
                                        end.isoformat(), "--json", "--db", fresh_db])
        assert res.exit_code == 0, res.output
        out = json.loads(res.output)
        facts = {f["id"]: f for f in out["facts"]}
        want = energy.truth_per_bucket(q, [day.timestamp(), end.timestamp()])[0]
        assert facts["energy.total"]["unit"] == "kWh"
        assert facts["energy.total"]["value"] == pytest.approx(want, abs=0.006)  # rounded to 0.01 kWh
        peak = facts["energy.peak_15min"]
        assert peak["unit"] == "kW" and peak["at"].startswith(day.date().isoformat())
        assert out["verdict"] == "template"
    bad = runner.invoke(agent_app, ["summarize", "--line", "nope", "--from", day.isoformat(), "--db", fresh_db])
    assert bad.exit_code != 0 and "unknown line 'nope'" in bad.output and line in bad.output
