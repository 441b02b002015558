"""Store fixtures: a migrated database on each engine (plain PostgreSQL and TimescaleDB on PGlite)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from timescale_server import missing_reason, timescale_server

from line_agent.store.migrate import migrate


@pytest.fixture(scope="module")
def timescale_url() -> Iterator[str]:
    """A migrated TimescaleDB (PGlite) for this module: one server, one connection at a time."""
    reason = missing_reason()
    if reason:
        pytest.skip(f"TimescaleDB test server unavailable: {reason}")
    with timescale_server() as url:
        migrate(url)
        yield url


@pytest.fixture
def plain_url(fresh_db: str) -> str:
    """A migrated plain PostgreSQL database, new for each test."""
    migrate(fresh_db)
    return fresh_db


@pytest.fixture(params=["postgres", "timescale"])
def engine_url(request: pytest.FixtureRequest) -> str:
    """The same test once on plain PostgreSQL and once on TimescaleDB."""
    if request.param == "postgres":
        return str(request.getfixturevalue("plain_url"))
    return str(request.getfixturevalue("timescale_url"))
