"""Ingest fixtures: a migrated database, workers in threads, and a unique topic prefix per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_support import IngestHarness, Pub

from line_agent.store.migrate import migrate


@pytest.fixture
def db(fresh_db: str) -> str:
    migrate(fresh_db)
    return fresh_db


@pytest.fixture
def harness(mqtt_url: str, db: str, tmp_path: Path) -> Iterator[IngestHarness]:
    h = IngestHarness(mqtt_url, db, tmp_path / "data")
    yield h
    h.stop_all()


@pytest.fixture
def pub(mqtt_url: str) -> Iterator[Pub]:
    p = Pub(mqtt_url)
    yield p
    p.close()
