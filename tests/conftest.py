"""Session-wide real services for tests: a throwaway PostgreSQL and a throwaway Mosquitto.

Both run on free loopback ports in a temporary directory and are stopped by PID at the end.
Set LINEGUARD_TEST_DATABASE_URL / LINEGUARD_TEST_MQTT_URL to point tests at existing ones instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from line_agent.services import EmbeddedBroker, EmbeddedPostgres, mosquitto_binary

REPO = Path(__file__).resolve().parents[1]

try:  # CI runs the property tests on a fixed seed: a red build then always means the same falsifying case
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("ci", derandomize=True, print_blob=True)
    if os.environ.get("CI"):
        _hyp_settings.load_profile("ci")
except ImportError:  # the runtime-only environment has no hypothesis
    pass


def shared_dir() -> Path:
    return Path(os.environ.get("LINEGUARD_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared data folder; tests that need it skip cleanly when it is absent."""
    path = shared_dir()
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set LINEGUARD_SHARED)")
    return path


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres | None]:
    if os.environ.get("LINEGUARD_TEST_DATABASE_URL"):
        yield None
        return
    # Outside pytest's basetemp: a concurrent pytest run chmods /tmp/pytest-of-<user> to 0700, which the
    # unprivileged server user (when we run as root) could then no longer traverse (PANIC, server gone).
    d = Path(tempfile.mkdtemp(prefix="lineguard-test-pg-session-"))
    server = EmbeddedPostgres(d)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url(pg_server: EmbeddedPostgres | None) -> str:
    """URL of a real PostgreSQL server for this test session."""
    return os.environ.get("LINEGUARD_TEST_DATABASE_URL") or (pg_server.url if pg_server else "")


@pytest.fixture
def fresh_db(pg_url: str) -> Iterator[str]:
    """A new empty database on the session server, dropped afterwards: tests stay independent."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = pg_url.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker | None]:
    if os.environ.get("LINEGUARD_TEST_MQTT_URL"):
        yield None
        return
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (make test installs it)")
    # The embedded broker as lineguard runs it (accounts, ACL, save on every change), plus anonymous
    # clients with full access on its internal listener: many tests' own clients connect by host:port.
    # The security tests (tests/line/test_services_security.py) start brokers of their own without it.
    # Saved every 5 s, not on every change: no test crashes this broker (the durability tests start their
    # own), and saving on every change makes it take a few hundred messages a second, not thousands.
    broker = EmbeddedBroker(tmp_path_factory.mktemp("mqtt"), allow_anonymous=True, autosave_changes=0)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def mqtt_url(mqtt_broker: EmbeddedBroker | None) -> str:
    """URL (mqtt://127.0.0.1:PORT, anonymous, every topic) of a real Mosquitto broker for this test session."""
    if os.environ.get("LINEGUARD_TEST_MQTT_URL"):
        return os.environ["LINEGUARD_TEST_MQTT_URL"]
    return f"mqtt://127.0.0.1:{mqtt_broker.internal_port}" if mqtt_broker else ""
