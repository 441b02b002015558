"""Fixtures for API tests: the app over a fresh real PostgreSQL database and the real Modbus simulator."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from line_agent.api.app import create_app
from line_agent.api.auth import Role, create_token
from line_agent.api.deps import ApiDeps
from line_agent.frames import FrameKind, frame_path
from line_agent.live import LiveHub
from line_agent.store.migrate import migrate

LINE = "line1"  # the line id of hardware/default_tags.yaml


@dataclass
class Api:
    app: FastAPI
    client: TestClient
    deps: ApiDeps
    db: str
    tokens: dict[str, str]
    sim: Any  # hardware.sim_plc.SimPlc, or None without hardware/

    def h(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def make_tokens(db: str) -> dict[str, str]:
    return {r.value: create_token(db, r, f"test-{r.value}") for r in Role}


def write_frame(frames_dir: Path, line: str, camera: str, inspection_id: str, ts: float,
                kind: FrameKind = "test", image: np.ndarray | None = None) -> Path:
    """A frame where the runtime keeps it (line_agent.frames.frame_path)."""
    path = frame_path(frames_dir, line, camera, inspection_id, ts, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((240, 320, 3), 200, np.uint8) if image is None else image)
    return path


def seed_inspections(db: str, frames_dir: Path, n: int = 12) -> list[str]:
    """Real rows in inspections/defects, with frames on disk: what the runtime would have stored."""
    frames_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ids = []
    classes = ["open", "short", "spur"]
    with psycopg.connect(db, autocommit=True) as conn:
        for i in range(n):
            iid = f"insp-{i:04d}"
            img = np.full((240, 320, 3), 200, np.uint8)
            cv2.rectangle(img, (20 + i, 30), (60 + i, 70), (40, 40, 40), -1)
            decision = "reject" if i % 3 == 0 else "pass"
            ts = now - timedelta(minutes=5 * i)
            # frame_path (the column) is what a message said; the API never reads it.
            write_frame(frames_dir, LINE, "cam-1", iid, ts.timestamp(), image=img)
            conn.execute(
                "INSERT INTO inspections (inspection_id, ts, line, camera, part_id, decision, n_defects, latency_ms,"
                " model, frame_path) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                (iid, ts, LINE, "cam-1", f"P-{i}", decision, 1 if decision == "reject" else 0, 12.5,
                 "pcb:v1", f"{iid}_test.png"))
            if decision == "reject":
                conn.execute(
                    "INSERT INTO defects (inspection_id, idx, ts, line, camera, cls, confidence, x1, y1, x2, y2)"
                    " VALUES (%s,0,%s,%s,'cam-1',%s,0.9,20,30,60,70)", (iid, ts, LINE, classes[(i // 3) % 3]))
            ids.append(iid)
        # Telemetry: a cumulative energy meter and a couple of faults.
        for k in range(24 * 4):
            conn.execute("INSERT INTO telemetry (ts, line, device, metric, value) VALUES (%s,%s,'press-1',"
                         "'energy_kwh',%s)", (now - timedelta(minutes=15 * k), LINE, 1000.0 - k * 0.5))
        conn.execute("INSERT INTO events (event_id, ts, line, device, kind, code, duration_s) VALUES"
                     " ('e1', %s, %s, 'press-1', 'fault', 'HDF', 120), ('e2', %s, %s, 'robot-1', 'fault', 'TWF', 30)",
                     (now - timedelta(hours=1), LINE, now - timedelta(hours=2), LINE))
    return ids


@pytest.fixture
def sim() -> Iterator[Any]:
    try:
        from hardware.sim_plc import SimPlc
    except ImportError:
        yield None
        return
    plc = SimPlc(port=0, watchdog_s=2.0, gate_pulse_s=0.05).start()
    yield plc
    plc.stop()


def controller_factory(sim: Any) -> Any:
    if sim is None:
        return None

    async def make() -> Any:
        from hardware.modbus import ModbusDriver
        from hardware.safety import LineController
        from hardware.tags import TagMap

        driver = ModbusDriver(TagMap.load(), "127.0.0.1", sim.port)
        ctl = LineController(driver, heartbeat_period_s=0.1, actor="api")
        await driver.connect()
        await ctl.start_background()
        return ctl

    return make


@pytest.fixture
def api(fresh_db: str, sim: Any, tmp_path: Path) -> Iterator[Api]:
    migrate(fresh_db)
    tokens = make_tokens(fresh_db)
    frames = tmp_path / "frames"
    seed_inspections(fresh_db, frames)
    deps = ApiDeps(database_url=fresh_db, lines=[LINE], hub=LiveHub(), frames_dir=frames,
                   training_dir=tmp_path / "training", model_registry=tmp_path / "models", pool_max=4)
    app = create_app(deps, controller_factory=controller_factory(sim))
    with TestClient(app) as client:
        yield Api(app, client, deps, fresh_db, tokens, sim)


@pytest.fixture(scope="module")
def shared_api(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app for a whole module (many parametrized requests): its own database, dropped afterwards."""
    import uuid

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = pg_url.rsplit("/", 1)[0] + f"/{name}"
    tmp = tmp_path_factory.mktemp("api")
    migrate(db)
    tokens = make_tokens(db)
    seed_inspections(db, tmp / "frames")
    plc = None
    try:
        from hardware.sim_plc import SimPlc

        plc = SimPlc(port=0, watchdog_s=2.0, gate_pulse_s=0.05).start()
    except ImportError:
        pass
    # Many requests with wrong tokens from one test client: the lockout has its own tests (test_limits.py).
    deps = ApiDeps(database_url=db, lines=[LINE], hub=LiveHub(), frames_dir=tmp / "frames",
                   training_dir=tmp / "training", model_registry=tmp / "models", pool_max=4,
                   auth_fail_burst=100_000)
    app = create_app(deps, controller_factory=controller_factory(plc))
    try:
        with TestClient(app) as client:
            yield Api(app, client, deps, db, tokens, plc)
    finally:
        if plc is not None:
            plc.stop()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class ServerThread:
    """uvicorn serving ``app`` on a free loopback port in a background thread (real HTTP for black-box tools)."""

    def __init__(self, app: FastAPI) -> None:
        import threading

        import uvicorn

        from line_agent.services import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="api-uvicorn", daemon=True)

    def __enter__(self) -> ServerThread:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
