"""The embedded services: real PostgreSQL and MQTT brokers, started and stopped by PID."""

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.publish as publish
import psutil
import psycopg
import pytest

from line_agent.services import EmbeddedBroker, EmbeddedPostgres, ServiceError, mosquitto_binary
from line_agent.store.migrate import migrate


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    """Outside pytest's basetemp: a concurrent pytest run chmods /tmp/pytest-of-<user> to 0700, which the
    unprivileged server user (when we run as root) could then no longer traverse."""
    d = Path(tempfile.mkdtemp(prefix="lineguard-test-pgsvc-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_postgres_data_persists_across_restarts(pg_dir: Path) -> None:
    with EmbeddedPostgres(pg_dir / "pg") as pg:
        migrate(pg.url)
        with psycopg.connect(pg.url) as conn:
            conn.execute("INSERT INTO telemetry (ts, line, metric, value) VALUES (now(), 'l1', 'power_w', 42)")
        pid = pg.pid
        owner = psutil.Process(pid).username() if pid else ""
    assert pid is not None and not psutil.pid_exists(pid)
    if os.geteuid() == 0:  # PostgreSQL refuses root: it must run as the unprivileged service user
        assert owner != "root" and pwd.getpwnam(owner)
    with EmbeddedPostgres(pg_dir / "pg") as pg:
        assert migrate(pg.url) == []  # already migrated: the same cluster came back
        with psycopg.connect(pg.url) as conn:
            row = conn.execute("SELECT value FROM telemetry WHERE line = 'l1'").fetchone()
    assert row == (42.0,)


def test_postgres_recovers_from_a_stale_pid_file(pg_dir: Path) -> None:
    pg = EmbeddedPostgres(pg_dir / "pg")
    pg.start()
    assert pg._proc is not None
    pg._proc.kill()  # as if the box lost power: postmaster.pid stays behind
    pg._proc.wait()
    pg._proc = None
    # The orphaned backends die with the postmaster; give them a moment.
    time.sleep(1.0)
    pg2 = EmbeddedPostgres(pg_dir / "pg")
    try:
        pg2.start()
        with psycopg.connect(pg2.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pg2.stop()


@pytest.mark.parametrize("prefer", ["mosquitto", "amqtt"])
def test_broker_starts_accepts_and_stops(tmp_path: Path, prefer: str) -> None:
    if prefer == "mosquitto" and mosquitto_binary() is None:
        pytest.skip("mosquitto not installed")
    with EmbeddedBroker(tmp_path / prefer, prefer=prefer) as broker:
        assert broker.kind == prefer
        u = urlsplit(broker.device_url())  # mosquitto: a device account; amqtt (demo only): none
        auth = {"username": u.username, "password": u.password} if u.username else None
        publish.single("lineguard/plant1/line1/meter/telemetry", b"x", hostname="127.0.0.1", port=broker.port, qos=1,
                       auth=auth)  # type: ignore[arg-type]
        pid = broker.pid
    assert pid is not None and not psutil.pid_exists(pid)


def test_broker_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto not installed")
    with EmbeddedBroker(tmp_path / "a") as first:
        second = EmbeddedBroker(tmp_path / "b", port=first.port)
        with pytest.raises(ServiceError, match="did not start"):
            second.start(timeout_s=5)


def test_children_die_with_a_killed_parent(tmp_path: Path) -> None:
    """SIGKILL of lineguard must not leave the database or broker running (PR_SET_PDEATHSIG)."""
    code = (
        "import sys, time, pathlib\n"
        "from line_agent.services import EmbeddedPostgres, EmbeddedBroker\n"
        f"d = pathlib.Path({str(tmp_path)!r})\n"
        "pg = EmbeddedPostgres(d / 'pg'); pg.start()\n"
        "b = EmbeddedBroker(d / 'mq'); b.start()\n"
        "print(pg.pid, b.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(
        psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids
    ):
        time.sleep(0.2)
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
