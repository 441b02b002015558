"""Agent tests share one database per module holding every eval scenario, put there through the front door:
published per the MQTT contract to the session's broker and stored by an ingest worker."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from line_agent.agent.scenarios import Scenario, all_scenarios, load_front_door
from line_agent.store.migrate import migrate


@pytest.fixture(scope="module")
def scenario_db(pg_url: str, mqtt_url: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Scenario]]]:
    name = f"agent_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = pg_url.rsplit("/", 1)[0] + f"/{name}"
    migrate(url)
    shared = Path(os.environ.get("LINEGUARD_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
    scen = all_scenarios(shared=shared if Path(shared).exists() else None)
    load_front_door(mqtt_url, url, tmp_path_factory.mktemp("agent-ingest"), scen)
    yield url, {s.name: s for s in scen}
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
