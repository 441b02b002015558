"""Agent tests share one database per module holding every eval scenario (generation takes ~2 s)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from line_agent.agent.scenarios import Scenario, all_scenarios, load
from line_agent.store.migrate import migrate


@pytest.fixture(scope="module")
def scenario_db(pg_url: str) -> Iterator[tuple[str, dict[str, Scenario]]]:
    name = f"agent_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = pg_url.rsplit("/", 1)[0] + f"/{name}"
    migrate(url)
    shared = Path(os.environ.get("LINEGUARD_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
    scen = all_scenarios(shared=shared if Path(shared).exists() else None)
    with psycopg.connect(url) as conn:
        for s in scen:
            load(conn, s)
    yield url, {s.name: s for s in scen}
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
