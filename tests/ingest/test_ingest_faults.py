"""Zero loss, zero duplicates, counted row by row, when during a replay (a) the broker restarts,
(b) the database is stopped and restarted, (c) an ingest worker is SIGKILLed and restarted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_support import (
    IngestHarness,
    assert_replay_stored,
    count,
    probe_until_stored,
    wait_for,
    write_ai4i,
)
from prometheus_client import REGISTRY

from line_agent.replay import METRICS, ReplayResult, replay_ai4i
from line_agent.services import EmbeddedBroker, EmbeddedPostgres, mosquitto_binary
from line_agent.store.migrate import migrate

START = 1_790_000_000.0
CYCLE = 10.0
ROWS = 2400


class Replay(threading.Thread):
    """The AI4I replay in a thread, so a test can break things while it runs."""

    def __init__(self, path: Path, url: str, line: str, rate: float, prefix: str) -> None:
        super().__init__(daemon=True)
        self.args = (path, url, line, rate, prefix)
        self.result: ReplayResult | None = None
        self.error: BaseException | None = None
        self.progress = 0

    def run(self) -> None:
        path, url, line, rate, prefix = self.args
        try:
            # The topic prefix is the test's: the JSON topics are <prefix>/<site>/<line>/... via site="".
            self.result = replay_ai4i(path, url, rate=rate, line=line, site=prefix, cycle_s=CYCLE, start_ts=START,
                                      rows_per_message=20, progress=False, topic_prefix=prefix,
                                      on_row=lambda n: setattr(self, "progress", n))
        except BaseException as exc:  # reported by the test
            self.error = exc


def wait_progress(r: Replay, rows: int, timeout_s: float = 30.0) -> None:
    assert wait_for(lambda: r.progress >= rows or not r.is_alive(), timeout_s, 0.05)


def finish(r: Replay) -> None:
    r.join(120)
    assert r.error is None, r.error
    assert r.result is not None and r.result.rows == ROWS


def stored_points(url: str, line: str) -> int:
    return count(url, "SELECT count(*) FROM telemetry WHERE line = %s", (line,))


@pytest.fixture
def table(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    path = tmp_path / "ai4i.tsv"
    return path, write_ai4i(path, ROWS)


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    d = Path(tempfile.mkdtemp(prefix="lineguard-test-mqtt-"))
    b = EmbeddedBroker(d)
    b.start()
    yield b
    b.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def own_pg() -> Iterator[EmbeddedPostgres]:
    # Outside pytest's basetemp: a concurrent pytest run chmods /tmp/pytest-of-<user> to 0700, which the
    # unprivileged server user (when we run as root) could then no longer traverse.
    d = Path(tempfile.mkdtemp(prefix="lineguard-test-pg-"))
    pg = EmbeddedPostgres(d)
    pg.start()
    migrate(pg.url)
    yield pg
    pg.stop()
    shutil.rmtree(d, ignore_errors=True)


def test_broker_restart_during_replay(own_broker: EmbeddedBroker, db: str, tmp_path: Path,
                                      table: tuple[Path, dict[str, int]]) -> None:
    h = IngestHarness(own_broker.url, db, tmp_path / "data")
    try:
        # One worker, plain subscription: Mosquitto 2.0 does not restore *shared* subscriptions after a
        # restart (docs/MQTT.md, "Broker restarts").
        w = h.start(share_group="")
        r = Replay(table[0], own_broker.url, "LA", 800.0, h.prefix)
        r.start()
        wait_progress(r, ROWS // 3)
        own_broker.stop()  # SIGTERM: Mosquitto saves its sessions and queued messages
        time.sleep(1.5)
        own_broker.start()  # same port, same persistence file
        finish(r)
        wait_for(lambda: stored_points(db, "LA") >= ROWS * len(METRICS), 60)  # then counted row by row
        time.sleep(0.5)
        assert_replay_stored(db, "LA", ROWS, table[1], START, CYCLE)
        assert w.stats.messages > 0
    finally:
        h.stop_all()


def _db_outage(own_pg: EmbeddedPostgres, mqtt_url: str, tmp_path: Path, table: tuple[Path, dict[str, int]],
               outage_s: float, rate: float) -> None:
    h = IngestHarness(mqtt_url, own_pg.url, tmp_path / "data")
    try:
        w = h.start()
        r = Replay(table[0], mqtt_url, "LB", rate, h.prefix)
        r.start()
        wait_progress(r, ROWS // 5)
        own_pg.stop()
        stopped = time.monotonic()
        assert wait_for(lambda: w.stats.spooled_batches > 0, 30)  # the worker kept acking into the spool
        # ... and says so on its Prometheus endpoint.
        assert wait_for(lambda: (REGISTRY.get_sample_value("lineguard_spool_bytes", {"line": w.cfg.client_id})
                                 or 0) > 0, 10)
        time.sleep(max(0.0, outage_s - (time.monotonic() - stopped)))
        own_pg.start()
        finish(r)
        wait_for(lambda: stored_points(own_pg.url, "LB") >= ROWS * len(METRICS) and not w.spool.bytes, 90)
        time.sleep(0.5)
        assert_replay_stored(own_pg.url, "LB", ROWS, table[1], START, CYCLE)
        assert w.stats.replayed_batches == w.stats.spooled_batches > 0
        assert len(w.spool) == 0
        assert wait_for(lambda: REGISTRY.get_sample_value("lineguard_spool_bytes", {"line": w.cfg.client_id}) == 0, 10)
        lag = REGISTRY.get_sample_value("lineguard_ingest_lag_seconds", {"source": w.cfg.client_id})
        assert lag is not None and lag >= 0
    finally:
        h.stop_all()


def test_database_stopped_during_replay(own_pg: EmbeddedPostgres, mqtt_url: str, tmp_path: Path,
                                        table: tuple[Path, dict[str, int]]) -> None:
    _db_outage(own_pg, mqtt_url, tmp_path, table, outage_s=4.0, rate=400.0)


@pytest.mark.slow
def test_database_stopped_30s_during_replay(own_pg: EmbeddedPostgres, mqtt_url: str, tmp_path: Path,
                                            table: tuple[Path, dict[str, int]]) -> None:
    _db_outage(own_pg, mqtt_url, tmp_path, table, outage_s=30.0, rate=60.0)


def test_worker_sigkilled_during_replay(mqtt_url: str, db: str, tmp_path: Path,
                                        table: tuple[Path, dict[str, int]]) -> None:
    prefix = f"k{os.getpid()}{time.monotonic_ns() % 10**8}"
    env = {**os.environ, "LINEGUARD_DATABASE_URL": db, "LINEGUARD_MQTT_URL": mqtt_url,
           "LINEGUARD_DATA_DIR": str(tmp_path / "data"), "LINEGUARD_LOG_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "line_agent.ingest", "--index", "0",
           "--json-filter", f"{prefix}/#", "--client-prefix", prefix, "--sparkplug-filter", ""]

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(cmd, env=env)

    proc = spawn()
    try:
        probe_until_stored(mqtt_url, db, prefix)  # subscribed: its session exists from here on
        r = Replay(table[0], mqtt_url, "LC", 600.0, prefix)
        r.start()
        assert wait_for(lambda: stored_points(db, "LC") > 0, 30)
        proc.send_signal(signal.SIGKILL)  # mid-batch: whatever it had not acked, the broker re-delivers
        proc.wait(10)
        killed_at = stored_points(db, "LC")
        time.sleep(1.0)
        proc = spawn()  # same client id: resumes the session the broker kept
        finish(r)
        wait_for(lambda: stored_points(db, "LC") >= ROWS * len(METRICS), 60)
        time.sleep(0.5)
        assert 0 < killed_at < ROWS * len(METRICS)  # the kill really happened mid-replay
        assert_replay_stored(db, "LC", ROWS, table[1], START, CYCLE)
    finally:
        proc.terminate()
        proc.wait(30)
